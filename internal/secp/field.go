package secp

import "math/bits"

// fe is an element of the secp256k1 base field GF(p), p = 2^256 - 2^32 - 977,
// as four little-endian 64-bit limbs.
//
// The representation is only weakly reduced: any value in [0, 2^256) that is
// congruent to the element mod p is valid (so an element has at most two
// representations, v and v+p). Every operation accepts and returns such
// values; normalize brings a value into [0, p) and must be applied before
// comparing, testing for zero, reading parity or serialising.
//
// Nothing here is constant time. Everything this package computes on is public
// (public keys, digests, signatures), so variable-time arithmetic is fine.
type fe [4]uint64

// feC is 2^256 mod p = 2^32 + 977; reduction folds the high half of a product
// back in multiplied by this constant.
const feC = 0x1000003D1

var (
	feP    = fe{0xFFFFFFFEFFFFFC2F, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF}
	feOne  = fe{1, 0, 0, 0}
	feBeta = feFromHex("7ae96a2b657c07106e64479eac3434e99cf0497512f58995c1396c28719501ee")
)

// feFromHex parses a 64-digit big-endian hex constant; for package constants
// only (panics on bad input).
func feFromHex(s string) fe {
	var b [32]byte
	if len(s) != 64 {
		panic("secp: bad field constant")
	}
	for i := 0; i < 32; i++ {
		b[i] = hexNibble(s[2*i])<<4 | hexNibble(s[2*i+1])
	}
	var z fe
	if !z.setBytes(&b) {
		panic("secp: field constant out of range")
	}
	return z
}

func hexNibble(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10
	}
	panic("secp: bad hex digit")
}

// limbsFromBytes reads 32 big-endian bytes as four little-endian limbs.
func limbsFromBytes(b *[32]byte) [4]uint64 {
	var z [4]uint64
	for i := 0; i < 4; i++ {
		o := 24 - 8*i
		z[i] = uint64(b[o])<<56 | uint64(b[o+1])<<48 | uint64(b[o+2])<<40 | uint64(b[o+3])<<32 |
			uint64(b[o+4])<<24 | uint64(b[o+5])<<16 | uint64(b[o+6])<<8 | uint64(b[o+7])
	}
	return z
}

// limbsToBytes is the inverse of limbsFromBytes.
func limbsToBytes(z *[4]uint64) [32]byte {
	var b [32]byte
	for i := 0; i < 4; i++ {
		o := 24 - 8*i
		v := z[i]
		b[o], b[o+1], b[o+2], b[o+3] = byte(v>>56), byte(v>>48), byte(v>>40), byte(v>>32)
		b[o+4], b[o+5], b[o+6], b[o+7] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	}
	return b
}

// setBytes sets z to the big-endian value b and reports whether b < p (if
// not, z holds b, which is still a valid weakly reduced representation).
func (z *fe) setBytes(b *[32]byte) bool {
	*z = limbsFromBytes(b)
	// b < p  <=>  b + feC does not overflow 2^256.
	_, c := bits.Add64(z[0], feC, 0)
	_, c = bits.Add64(z[1], 0, c)
	_, c = bits.Add64(z[2], 0, c)
	_, c = bits.Add64(z[3], 0, c)
	return c == 0
}

// bytes returns the canonical big-endian encoding of z.
func (z *fe) bytes() [32]byte {
	n := *z
	n.normalize()
	return limbsToBytes((*[4]uint64)(&n))
}

// normalize reduces z into [0, p).
func (z *fe) normalize() {
	// z >= p  <=>  z + feC overflows 2^256, and then z - p is the wrapped sum.
	r0, c := bits.Add64(z[0], feC, 0)
	r1, c := bits.Add64(z[1], 0, c)
	r2, c := bits.Add64(z[2], 0, c)
	r3, c := bits.Add64(z[3], 0, c)
	if c != 0 {
		z[0], z[1], z[2], z[3] = r0, r1, r2, r3
	}
}

// isZero reports whether z ≡ 0 (mod p).
func (z *fe) isZero() bool {
	n := *z
	n.normalize()
	return n[0]|n[1]|n[2]|n[3] == 0
}

// equal reports whether z ≡ x (mod p).
func (z *fe) equal(x *fe) bool {
	a, b := *z, *x
	a.normalize()
	b.normalize()
	return a == b
}

// isOdd reports whether the canonical value of z is odd.
func (z *fe) isOdd() bool {
	n := *z
	n.normalize()
	return n[0]&1 == 1
}

// feAdd sets z = x + y.
func feAdd(z, x, y *fe) {
	r0, c := bits.Add64(x[0], y[0], 0)
	r1, c := bits.Add64(x[1], y[1], c)
	r2, c := bits.Add64(x[2], y[2], c)
	r3, c := bits.Add64(x[3], y[3], c)
	// A carry is 2^256 ≡ feC. Folding it in can carry again only if the
	// wrapped sum was within feC of 2^256; the second fold then lands on a
	// value below feC and cannot carry.
	r0, c = bits.Add64(r0, feC&-c, 0)
	r1, c = bits.Add64(r1, 0, c)
	r2, c = bits.Add64(r2, 0, c)
	r3, c = bits.Add64(r3, 0, c)
	z[0], z[1], z[2], z[3] = r0+feC&-c, r1, r2, r3
}

// feSub sets z = x - y.
func feSub(z, x, y *fe) {
	r0, b := bits.Sub64(x[0], y[0], 0)
	r1, b := bits.Sub64(x[1], y[1], b)
	r2, b := bits.Sub64(x[2], y[2], b)
	r3, b := bits.Sub64(x[3], y[3], b)
	// A borrow means the wrapped result is 2^256 too big, i.e. feC too big
	// mod p. Taking feC off can borrow again only if the wrapped result was
	// below feC; the second correction then starts from >= 2^256 - feC and
	// cannot borrow.
	r0, b = bits.Sub64(r0, feC&-b, 0)
	r1, b = bits.Sub64(r1, 0, b)
	r2, b = bits.Sub64(r2, 0, b)
	r3, b = bits.Sub64(r3, 0, b)
	z[0], z[1], z[2], z[3] = r0-feC&-b, r1, r2, r3
}

// feNeg sets z = -x.
func feNeg(z, x *fe) {
	var zero fe
	feSub(z, &zero, x)
}

// feHalf sets z = x/2.
func feHalf(z, x *fe) {
	// Add p when x is odd (x + p < 2^257), then shift right by one.
	m := -(x[0] & 1)
	r0, c := bits.Add64(x[0], feP[0]&m, 0)
	r1, c := bits.Add64(x[1], m, c)
	r2, c := bits.Add64(x[2], m, c)
	r3, c := bits.Add64(x[3], m, c)
	z[0] = r0>>1 | r1<<63
	z[1] = r1>>1 | r2<<63
	z[2] = r2>>1 | r3<<63
	z[3] = r3>>1 | c<<63
}

// madd1 returns a*b + c as (hi, lo).
func madd1(a, b, c uint64) (hi, lo uint64) {
	hi, lo = bits.Mul64(a, b)
	var carry uint64
	lo, carry = bits.Add64(lo, c, 0)
	hi += carry
	return hi, lo
}

// madd2 returns a*b + c + d as (hi, lo); it cannot overflow 128 bits.
func madd2(a, b, c, d uint64) (hi, lo uint64) {
	hi, lo = bits.Mul64(a, b)
	var carry uint64
	lo, carry = bits.Add64(lo, c, 0)
	hi += carry
	lo, carry = bits.Add64(lo, d, 0)
	hi += carry
	return hi, lo
}

// feMul sets z = x * y.
//
// feMul and feSqr are written out row by row with explicit carry chains and
// the reduction inlined: with Go's code generation that keeps most values in
// registers and is markedly faster than calling helpers.
func feMul(z, x, y *fe) {
	x0, x1, x2, x3 := x[0], x[1], x[2], x[3]
	y0, y1, y2, y3 := y[0], y[1], y[2], y[3]
	var c uint64

	// Row 0: x0*y, at limb 0.
	h0, l0 := bits.Mul64(x0, y0)
	h1, l1 := bits.Mul64(x0, y1)
	h2, l2 := bits.Mul64(x0, y2)
	h3, l3 := bits.Mul64(x0, y3)
	t0 := l0
	t1, c := bits.Add64(h0, l1, 0)
	t2, c := bits.Add64(h1, l2, c)
	t3, c := bits.Add64(h2, l3, c)
	t4 := h3 + c

	// Row 1: x1*y, at limb 1.
	h0, l0 = bits.Mul64(x1, y0)
	h1, l1 = bits.Mul64(x1, y1)
	h2, l2 = bits.Mul64(x1, y2)
	h3, l3 = bits.Mul64(x1, y3)
	l1, c = bits.Add64(l1, h0, 0)
	l2, c = bits.Add64(l2, h1, c)
	l3, c = bits.Add64(l3, h2, c)
	h3 += c
	t1, c = bits.Add64(t1, l0, 0)
	t2, c = bits.Add64(t2, l1, c)
	t3, c = bits.Add64(t3, l2, c)
	t4, c = bits.Add64(t4, l3, c)
	t5 := h3 + c

	// Row 2: x2*y, at limb 2.
	h0, l0 = bits.Mul64(x2, y0)
	h1, l1 = bits.Mul64(x2, y1)
	h2, l2 = bits.Mul64(x2, y2)
	h3, l3 = bits.Mul64(x2, y3)
	l1, c = bits.Add64(l1, h0, 0)
	l2, c = bits.Add64(l2, h1, c)
	l3, c = bits.Add64(l3, h2, c)
	h3 += c
	t2, c = bits.Add64(t2, l0, 0)
	t3, c = bits.Add64(t3, l1, c)
	t4, c = bits.Add64(t4, l2, c)
	t5, c = bits.Add64(t5, l3, c)
	t6 := h3 + c

	// Row 3: x3*y, at limb 3.
	h0, l0 = bits.Mul64(x3, y0)
	h1, l1 = bits.Mul64(x3, y1)
	h2, l2 = bits.Mul64(x3, y2)
	h3, l3 = bits.Mul64(x3, y3)
	l1, c = bits.Add64(l1, h0, 0)
	l2, c = bits.Add64(l2, h1, c)
	l3, c = bits.Add64(l3, h2, c)
	h3 += c
	t3, c = bits.Add64(t3, l0, 0)
	t4, c = bits.Add64(t4, l1, c)
	t5, c = bits.Add64(t5, l2, c)
	t6, c = bits.Add64(t6, l3, c)
	t7 := h3 + c

	// Reduce: t = lo + hi*2^256 ≡ lo + hi*feC. hi*feC < 2^290, so the sum
	// has a fifth limb below 2^35.
	h0, l0 = bits.Mul64(t4, feC)
	h1, l1 = bits.Mul64(t5, feC)
	h2, l2 = bits.Mul64(t6, feC)
	h3, l3 = bits.Mul64(t7, feC)
	l1, c = bits.Add64(l1, h0, 0)
	l2, c = bits.Add64(l2, h1, c)
	l3, c = bits.Add64(l3, h2, c)
	h3 += c
	t0, c = bits.Add64(t0, l0, 0)
	t1, c = bits.Add64(t1, l1, c)
	t2, c = bits.Add64(t2, l2, c)
	t3, c = bits.Add64(t3, l3, c)
	h3 += c
	// Fold the fifth limb: h3*feC < 2^70.
	h0, l0 = bits.Mul64(h3, feC)
	t0, c = bits.Add64(t0, l0, 0)
	t1, c = bits.Add64(t1, h0, c)
	t2, c = bits.Add64(t2, 0, c)
	t3, c = bits.Add64(t3, 0, c)
	// A final carry leaves a wrapped value below 2^70, so adding feC for it
	// cannot carry beyond the second limb.
	t0, c = bits.Add64(t0, feC&-c, 0)
	z[0], z[1], z[2], z[3] = t0, t1+c, t2, t3
}

// feSqr sets z = x^2.
func feSqr(z, x *fe) {
	x0, x1, x2, x3 := x[0], x[1], x[2], x[3]
	var c uint64

	// Off-diagonal products x_i*x_j (i < j), starting at limb 1.
	h1, l1 := bits.Mul64(x0, x1)
	h2, l2 := bits.Mul64(x0, x2)
	h3, l3 := bits.Mul64(x0, x3)
	t1 := l1
	t2, c := bits.Add64(l2, h1, 0)
	t3, c := bits.Add64(l3, h2, c)
	t4 := h3 + c
	h2, l2 = bits.Mul64(x1, x2)
	h3, l3 = bits.Mul64(x1, x3)
	l3, c = bits.Add64(l3, h2, 0)
	h3 += c
	t3, c = bits.Add64(t3, l2, 0)
	t4, c = bits.Add64(t4, l3, c)
	t5 := h3 + c
	h3, l3 = bits.Mul64(x2, x3)
	t5, c = bits.Add64(t5, l3, 0)
	t6 := h3 + c

	// Double them.
	t7 := t6 >> 63
	t6 = t6<<1 | t5>>63
	t5 = t5<<1 | t4>>63
	t4 = t4<<1 | t3>>63
	t3 = t3<<1 | t2>>63
	t2 = t2<<1 | t1>>63
	t1 <<= 1

	// Add the squares on the diagonal.
	h0, t0 := bits.Mul64(x0, x0)
	h1, l1 = bits.Mul64(x1, x1)
	h2, l2 = bits.Mul64(x2, x2)
	h3, l3 = bits.Mul64(x3, x3)
	t1, c = bits.Add64(t1, h0, 0)
	t2, c = bits.Add64(t2, l1, c)
	t3, c = bits.Add64(t3, h1, c)
	t4, c = bits.Add64(t4, l2, c)
	t5, c = bits.Add64(t5, h2, c)
	t6, c = bits.Add64(t6, l3, c)
	t7 += h3 + c

	// Reduce exactly as in feMul.
	h0, l0 := bits.Mul64(t4, feC)
	h1, l1 = bits.Mul64(t5, feC)
	h2, l2 = bits.Mul64(t6, feC)
	h3, l3 = bits.Mul64(t7, feC)
	l1, c = bits.Add64(l1, h0, 0)
	l2, c = bits.Add64(l2, h1, c)
	l3, c = bits.Add64(l3, h2, c)
	h3 += c
	t0, c = bits.Add64(t0, l0, 0)
	t1, c = bits.Add64(t1, l1, c)
	t2, c = bits.Add64(t2, l2, c)
	t3, c = bits.Add64(t3, l3, c)
	h3 += c
	h0, l0 = bits.Mul64(h3, feC)
	t0, c = bits.Add64(t0, l0, 0)
	t1, c = bits.Add64(t1, h0, c)
	t2, c = bits.Add64(t2, 0, c)
	t3, c = bits.Add64(t3, 0, c)
	t0, c = bits.Add64(t0, feC&-c, 0)
	z[0], z[1], z[2], z[3] = t0, t1+c, t2, t3
}

// mul512 returns the full 512-bit product x*y as eight little-endian limbs
// (used for the scalar decomposition, not in the field).
func mul512(x, y *[4]uint64) [8]uint64 {
	var t [8]uint64
	var c uint64
	x0, x1, x2, x3 := x[0], x[1], x[2], x[3]
	y0, y1, y2, y3 := y[0], y[1], y[2], y[3]

	c, t[0] = bits.Mul64(x0, y0)
	c, t[1] = madd1(x0, y1, c)
	c, t[2] = madd1(x0, y2, c)
	t[4], t[3] = madd1(x0, y3, c)

	c, t[1] = madd1(x1, y0, t[1])
	c, t[2] = madd2(x1, y1, t[2], c)
	c, t[3] = madd2(x1, y2, t[3], c)
	t[5], t[4] = madd2(x1, y3, t[4], c)

	c, t[2] = madd1(x2, y0, t[2])
	c, t[3] = madd2(x2, y1, t[3], c)
	c, t[4] = madd2(x2, y2, t[4], c)
	t[6], t[5] = madd2(x2, y3, t[5], c)

	c, t[3] = madd1(x3, y0, t[3])
	c, t[4] = madd2(x3, y1, t[4], c)
	c, t[5] = madd2(x3, y2, t[5], c)
	t[7], t[6] = madd2(x3, y3, t[6], c)
	return t
}
