package secp

import (
	"math/bits"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// Scalars mod n are handled with decred's ModNScalar (parsing, range checks,
// the few multiplications needed per signature, inversion); this file adds
// what decred does not export: the GLV decomposition and width-w NAF
// recoding.

// Constants of the secp256k1 endomorphism φ(x, y) = (β·x, y) = λ·(x, y),
// with the lattice basis used to split k into k1 + k2·λ (the standard
// published values for secp256k1, also used by decred). See splitK.
var (
	endoNegLambda = scalarFromHex("-5363ad4cc05c30e0a5261c028812645a122e22ea20816678df02967c1b23bd72")
	endoNegB1     = scalarFromHex("e4437ed6010e88286f547fa90abfe4c3")
	endoNegB2     = scalarFromHex("-3086d221a7d46bcde86c90e49284eb15")
	endoZ1        = limbsFromHex("3086d221a7d46bcde86c90e49284eb153daa8a1471e8ca7f")
	endoZ2        = limbsFromHex("e4437ed6010e88286f547fa90abfe4c4221208ac9df506c6")
)

// limbsFromHex parses a hex constant of up to 64 digits.
func limbsFromHex(s string) [4]uint64 {
	if len(s) > 64 || len(s)%2 != 0 {
		panic("secp: bad constant")
	}
	var b [32]byte
	off := 32 - len(s)/2
	for i := 0; i < len(s)/2; i++ {
		b[off+i] = hexNibble(s[2*i])<<4 | hexNibble(s[2*i+1])
	}
	return limbsFromBytes(&b)
}

// scalarFromHex parses a hex constant, optionally negative, as a scalar.
func scalarFromHex(s string) secp256k1.ModNScalar {
	neg := false
	if len(s) > 0 && s[0] == '-' {
		neg, s = true, s[1:]
	}
	l := limbsFromHex(s)
	b := limbsToBytes(&l)
	var k secp256k1.ModNScalar
	if k.SetBytes(&b) != 0 {
		panic("secp: scalar constant out of range")
	}
	if neg {
		k.Negate()
	}
	return k
}

func scalarLimbs(k *secp256k1.ModNScalar) [4]uint64 {
	b := k.Bytes()
	return limbsFromBytes(&b)
}

// scalarFromLimbs reduces l mod n.
func scalarFromLimbs(l *[4]uint64) secp256k1.ModNScalar {
	b := limbsToBytes(l)
	var k secp256k1.ModNScalar
	k.SetBytes(&b)
	return k
}

// mulShift320Round returns round(k*z / 2^320).
func mulShift320Round(k, z *[4]uint64) [4]uint64 {
	t := mul512(k, z)
	round := t[4] >> 63
	r0, c := bits.Add64(t[5], round, 0)
	r1, c := bits.Add64(t[6], 0, c)
	r2, c := bits.Add64(t[7], 0, c)
	return [4]uint64{r0, r1, r2, c}
}

// splitK returns k1, k2 with k ≡ k1 + k2·λ (mod n), both about 128 bits
// (algorithm 3.74 of Guide to Elliptic Curve Cryptography with the rounding
// trick of decred's splitK, whose constants are reused). The results are
// scalars mod n; splitSigned turns them into small signed integers.
func splitK(k *secp256k1.ModNScalar) (k1, k2 secp256k1.ModNScalar) {
	kl := scalarLimbs(k)
	c1l := mulShift320Round(&kl, &endoZ1)
	c2l := mulShift320Round(&kl, &endoZ2)
	c1 := scalarFromLimbs(&c1l)
	c2 := scalarFromLimbs(&c2l)
	k2.Add2(c1.Mul(&endoNegB1), c2.Mul(&endoNegB2))
	k1.Mul2(&k2, &endoNegLambda).Add(k)
	return k1, k2
}

// splitSigned returns |k| and whether k is "negative" (over n/2, i.e. k is
// the mod-n representation of -|k|).
func splitSigned(k *secp256k1.ModNScalar) (abs [4]uint64, neg bool) {
	if k.IsOverHalfOrder() {
		var m secp256k1.ModNScalar
		m.NegateVal(k)
		return scalarLimbs(&m), true
	}
	return scalarLimbs(k), false
}

// maxWindow is the largest NAF width supported (digits must fit an int8).
const maxWindow = 8

// nafLen bounds the length of a width-w NAF of a value below 2^256 for
// w <= maxWindow: digits sit at positions below 256 + w.
const nafLen = 256 + maxWindow

// nafTerm is one scalar·point product of a multi-scalar multiplication: the
// width-w NAF digits of the scalar (odd digits d with |d| < 2^(w-1), least
// significant first) and the odd multiples P, 3P, 5P, ... of the point.
// neg negates the point.
type nafTerm struct {
	digits [nafLen]int8
	n      int // digits[n:] are all zero
	table  []affinePoint
	neg    bool
}

// set recodes k into width-w NAF and attaches the table and sign. (The
// table must not be on the caller's stack: it escapes through t.)
func (t *nafTerm) set(k *[4]uint64, w uint, table []affinePoint, neg bool) {
	t.table, t.neg = table, neg
	t.setNAF(k, w)
}

// bitRange returns bits [lo, hi) of k as a number (0 <= lo < hi <= 256).
func bitRange(k *[4]uint64, lo, hi uint) [4]uint64 {
	var r [4]uint64
	ls, bs := lo/64, lo%64
	for i := uint(0); i+ls < 4; i++ {
		r[i] = k[i+ls] >> bs
		if bs != 0 && i+ls+1 < 4 {
			r[i] |= k[i+ls+1] << (64 - bs)
		}
	}
	width := hi - lo
	for i := uint(0); i < 4; i++ {
		switch {
		case width <= 64*i:
			r[i] = 0
		case width < 64*(i+1):
			r[i] &= 1<<(width-64*i) - 1
		}
	}
	return r
}

// bitsAt returns the w <= 64 bits of k starting at bit pos (bits beyond 256
// read as 0).
func bitsAt(k *[4]uint64, pos, w uint) uint64 {
	limb := pos >> 6
	if limb >= 4 {
		return 0
	}
	off := pos & 63
	v := k[limb] >> off
	if off != 0 && off+w > 64 && limb+1 < 4 {
		v |= k[limb+1] << (64 - off)
	}
	if w < 64 {
		v &= 1<<w - 1
	}
	return v
}

// setNAF recodes k (< 2^256) into width-w NAF (2 <= w <= maxWindow). The
// digits array must be zero on entry.
func (t *nafTerm) setNAF(k *[4]uint64, w uint) {
	if w < 2 || w > maxWindow {
		panic("secp: NAF width out of range")
	}
	nbits := uint(256)
	for nbits > 0 && k[(nbits-1)/64] == 0 {
		nbits -= 64
	}
	if nbits > 0 {
		nbits -= uint(bits.LeadingZeros64(k[(nbits-1)/64]))
	}
	var carry uint64
	last := -1
	for pos := uint(0); pos < nbits || carry != 0; {
		// Skip the run of bits equal to the carry: each gives digit 0.
		if run := bitsAt(k, pos, 64) ^ -carry; run&1 == 0 {
			if run == 0 {
				pos += 64
			} else {
				pos += uint(bits.TrailingZeros64(run))
			}
			continue
		}
		// The window value plus carry is odd, below 2^w.
		word := bitsAt(k, pos, w) + carry
		carry = (word >> (w - 1)) & 1
		t.digits[pos] = int8(int64(word) - int64(carry<<w))
		last = int(pos)
		pos += w
	}
	t.n = last + 1
}

// strauss returns sum(terms) by interleaved (Straus–Shamir) double-and-add
// over the NAF digits: one shared doubling chain, an affine addition for
// every non-zero digit.
func strauss(terms []nafTerm) jacobianPoint {
	n := 0
	for i := range terms {
		n = max(n, terms[i].n)
	}
	var acc jacobianPoint
	acc.inf = true
	for i := n - 1; i >= 0; i-- {
		acc.double(&acc)
		for j := range terms {
			t := &terms[j]
			switch d := t.digits[i]; {
			case d > 0:
				acc.addAffine(&acc, &t.table[d>>1], t.neg)
			case d < 0:
				acc.addAffine(&acc, &t.table[(-d)>>1], !t.neg)
			}
		}
	}
	return acc
}
