// Package secp verifies secp256k1 ECDSA signatures returned by the HSM and
// recovers the information the HSM does not return: the recovery parity that
// Ethereum (and other chains using public-key recovery) put in a signature.
package secp

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// Lengths of the inputs VerifyAndParity accepts.
const (
	PublicKeyLen = 65 // uncompressed SEC1: 0x04 || X || Y
	DigestLen    = 32
	SignatureLen = 64 // r || s, big-endian, 32 bytes each
)

var (
	// ErrInvalidSignature means the signature is well formed but does not
	// verify against the public key it was checked with.
	ErrInvalidSignature = errors.New("signature does not verify against the pinned public key")
	// ErrMalformed means an input has the wrong length or encoding, or a
	// signature scalar is out of range; nothing was verified.
	ErrMalformed = errors.New("malformed signature input")
	// ErrHighS means s > n/2. The HSM wrapper must normalise s before
	// verification; a high-S signature is refused rather than silently
	// flipped because flipping also flips the parity this package reports.
	ErrHighS = errors.New("signature s is not low-S normalised")
	// ErrUnrecoverable means the signature verifies but its nonce point has
	// an x coordinate >= n (recovery ids 2/3), which Ethereum cannot encode.
	// The probability is about 2^-127 per signature; re-signing fixes it.
	ErrUnrecoverable = errors.New("signature verifies but its nonce point x-coordinate exceeds the group order")
)

// VerifyAndParity verifies sig (64 bytes r||s) over digest (32 bytes) against
// pub (65-byte uncompressed SEC1) and returns the y-parity (0 or 1) of the
// nonce point R, so that ecrecover(digest, r, s, parity) yields pub.
//
// Verification and recovery share one computation: X = u1*G + u2*Q with
// u1 = e/s and u2 = r/s. If X.x mod n == r the signature verifies, and X is
// then exactly the signer's nonce point R, so the parity of X.y is the
// recovery id. Only low-S signatures with r, s in [1, n-1] are accepted.
//
// To check several signatures against the same key, build a Verifier once:
// it keeps the parsed key and precomputed multiples of it and is faster.
func VerifyAndParity(pub, digest, sig []byte) (parity byte, err error) {
	if err := checkLengths(pub, digest, sig); err != nil {
		return 0, err
	}
	var q affinePoint
	if err := parsePubKey(pub, &q); err != nil {
		return 0, err
	}
	var in sigInput
	if err := in.parse(digest, sig); err != nil {
		return 0, err
	}

	// X = u1·G + u2·Q as one interleaved (Straus) multi-scalar product over
	// a ~128-step doubling chain:
	//  - u2·Q = k1·Q + k2·λQ by the GLV endomorphism (k1, k2 ~128 bits),
	//    with per-call tables of odd multiples of Q and λQ;
	//  - u1·G = lo·G + hi·(2^128·G) from the static tables.
	const m = 1 << (qWindow - 2)
	var jac [m]jacobianPoint
	var tabs [2][m]affinePoint
	var scratch [m]fe
	var qj jacobianPoint
	qj.setAffine(&q)
	oddMultiples(jac[:], &qj)
	batchToAffine(tabs[0][:], jac[:], scratch[:])
	mulBeta(tabs[1][:], tabs[0][:])

	k1, k2 := splitK(&in.u2)
	k1abs, k1neg := splitSigned(&k1)
	k2abs, k2neg := splitSigned(&k2)
	g := baseTables()
	u1 := scalarLimbs(&in.u1)
	lo, hi := bitRange(&u1, 0, 128), bitRange(&u1, 128, 256)

	var terms [4]nafTerm
	terms[0].table, terms[0].neg = tabs[0][:], k1neg
	terms[0].setNAF(&k1abs, qWindow)
	terms[1].table, terms[1].neg = tabs[1][:], k2neg
	terms[1].setNAF(&k2abs, qWindow)
	terms[2].table = g[0]
	terms[2].setNAF(&lo, gWindow)
	terms[3].table = g[128/pieceBits]
	terms[3].setNAF(&hi, gWindow)
	x := strauss(terms[:])
	return in.finish(&x)
}

// Verifier checks signatures against one pinned public key. It holds the
// parsed key and precomputed tables of its multiples (32 KiB), which makes
// each check cheaper than VerifyAndParity. A Verifier is immutable and safe
// for concurrent use.
type Verifier struct {
	pub [PublicKeyLen]byte
	// tables[j] holds the odd multiples of 2^(pieceBits·j)·Q for
	// j < qPieces, and of λ·2^(pieceBits·(j-qPieces))·Q after that.
	tables [2 * qPieces][]affinePoint
}

// NewVerifier parses pub (65-byte uncompressed SEC1) and precomputes the
// tables used by Verifier.VerifyAndParity. It refuses exactly the keys that
// VerifyAndParity refuses, with the same error.
func NewVerifier(pub []byte) (*Verifier, error) {
	if len(pub) != PublicKeyLen || pub[0] != 0x04 {
		return nil, fmt.Errorf("%w: public key must be %d-byte uncompressed SEC1 (0x04 prefix), got %d bytes",
			ErrMalformed, PublicKeyLen, len(pub))
	}
	var q affinePoint
	if err := parsePubKey(pub, &q); err != nil {
		return nil, err
	}
	const m = 1 << (verifierWindow - 2)
	v := &Verifier{}
	copy(v.pub[:], pub)
	jac := make([]jacobianPoint, qPieces*m)
	var p jacobianPoint
	p.setAffine(&q)
	for j := 0; j < qPieces; j++ {
		if j > 0 {
			for i := 0; i < pieceBits; i++ {
				p.double(&p)
			}
		}
		oddMultiples(jac[j*m:(j+1)*m], &p)
	}
	all := make([]affinePoint, 2*qPieces*m)
	batchToAffine(all[:qPieces*m], jac, make([]fe, qPieces*m))
	mulBeta(all[qPieces*m:], all[:qPieces*m])
	for j := range v.tables {
		v.tables[j] = all[j*m : (j+1)*m : (j+1)*m]
	}
	return v, nil
}

// PublicKey returns a copy of the pinned public key.
func (v *Verifier) PublicKey() []byte {
	return append([]byte(nil), v.pub[:]...)
}

// VerifyAndParity is VerifyAndParity(pub, digest, sig) for the Verifier's
// key, with the same results and errors.
func (v *Verifier) VerifyAndParity(digest, sig []byte) (parity byte, err error) {
	if err := checkLengths(v.pub[:], digest, sig); err != nil {
		return 0, err
	}
	var in sigInput
	if err := in.parse(digest, sig); err != nil {
		return 0, err
	}

	// As in VerifyAndParity, but every scalar is also cut into pieceBits-bit
	// pieces, each against its own table (2^(pieceBits·j) times the base),
	// so the shared doubling chain is only ~pieceBits steps long:
	//  - u2 = k1 + k2·λ (GLV), k1 and k2 cut into qPieces pieces each (the
	//    last piece takes any bits above 128, should a half exceed them);
	//  - u1 cut into 256/pieceBits pieces against the static G tables.
	k1, k2 := splitK(&in.u2)
	k1abs, k1neg := splitSigned(&k1)
	k2abs, k2neg := splitSigned(&k2)
	g := baseTables()
	u1 := scalarLimbs(&in.u1)

	var terms [2*qPieces + gPieces]nafTerm
	for j := 0; j < qPieces; j++ {
		lo, hi := uint(j*pieceBits), uint((j+1)*pieceBits)
		if j == qPieces-1 {
			hi = 256
		}
		a, b := bitRange(&k1abs, lo, hi), bitRange(&k2abs, lo, hi)
		terms[j].set(&a, verifierWindow, v.tables[j], k1neg)
		terms[qPieces+j].set(&b, verifierWindow, v.tables[qPieces+j], k2neg)
	}
	for j := 0; j < gPieces; j++ {
		a := bitRange(&u1, uint(j*pieceBits), uint((j+1)*pieceBits))
		terms[2*qPieces+j].set(&a, gWindow, g[j], false)
	}
	x := strauss(terms[:])
	return in.finish(&x)
}

// Window widths of the NAF recodings (a width-w table holds 2^(w-2) odd
// multiples): the per-call tables for Q in VerifyAndParity, the Verifier's
// tables and the static tables for G. And the piece size: the Verifier cuts
// scalars into pieceBits-bit pieces; the static G tables are for
// 2^(pieceBits·j)·G.
const (
	qWindow        = 5
	verifierWindow = 8
	gWindow        = 8
	pieceBits      = 32
	qPieces        = 128 / pieceBits // per GLV half
	gPieces        = 256 / pieceBits
)

var (
	baseOnce sync.Once
	// baseTabs[j] holds the odd multiples of 2^(pieceBits·j)·G.
	baseTabs [gPieces][]affinePoint
)

// baseTables returns the static tables for G, computing them on first use
// (about 700 point operations, well under a millisecond).
func baseTables() *[gPieces][]affinePoint {
	baseOnce.Do(func() {
		const m = 1 << (gWindow - 2)
		jac := make([]jacobianPoint, gPieces*m)
		var p jacobianPoint
		p.setAffine(&affinePoint{curveGx, curveGy})
		for j := 0; j < gPieces; j++ {
			if j > 0 {
				for i := 0; i < pieceBits; i++ {
					p.double(&p)
				}
			}
			oddMultiples(jac[j*m:(j+1)*m], &p)
		}
		all := make([]affinePoint, gPieces*m)
		batchToAffine(all, jac, make([]fe, gPieces*m))
		for j := range baseTabs {
			baseTabs[j] = all[j*m : (j+1)*m : (j+1)*m]
		}
	})
	return &baseTabs
}

func checkLengths(pub, digest, sig []byte) error {
	if len(pub) != PublicKeyLen || pub[0] != 0x04 {
		return fmt.Errorf("%w: public key must be %d-byte uncompressed SEC1 (0x04 prefix), got %d bytes",
			ErrMalformed, PublicKeyLen, len(pub))
	}
	if len(digest) != DigestLen {
		return fmt.Errorf("%w: digest must be %d bytes, got %d", ErrMalformed, DigestLen, len(digest))
	}
	if len(sig) != SignatureLen {
		return fmt.Errorf("%w: signature must be %d bytes r||s, got %d", ErrMalformed, SignatureLen, len(sig))
	}
	return nil
}

// parsePubKey decodes a 65-byte 0x04-prefixed key into q, accepting exactly
// what secp256k1.ParsePubKey accepts for such input (x, y < p, on the
// curve). On failure it returns decred's error, wrapped in ErrMalformed as
// before.
func parsePubKey(pub []byte, q *affinePoint) error {
	xb, yb := (*[32]byte)(pub[1:33]), (*[32]byte)(pub[33:65])
	if q.x.setBytes(xb) && q.y.setBytes(yb) && isOnCurve(&q.x, &q.y) {
		return nil
	}
	if _, err := secp256k1.ParsePubKey(pub); err != nil {
		return fmt.Errorf("%w: public key: %w", ErrMalformed, err)
	}
	// Unreachable unless the two parsers disagree; refuse regardless.
	return fmt.Errorf("%w: public key: not a point on secp256k1", ErrMalformed)
}

// sigInput is a parsed signature: r, and u1 = e/s, u2 = r/s.
type sigInput struct {
	r      [4]uint64
	u1, u2 secp256k1.ModNScalar
}

// parse checks the ranges of r and s and computes u1 and u2.
func (in *sigInput) parse(digest, sig []byte) error {
	var r, s secp256k1.ModNScalar
	if overflow := r.SetByteSlice(sig[:32]); overflow || r.IsZero() {
		return fmt.Errorf("%w: r is not in [1, n-1]", ErrMalformed)
	}
	if overflow := s.SetByteSlice(sig[32:]); overflow || s.IsZero() {
		return fmt.Errorf("%w: s is not in [1, n-1]", ErrMalformed)
	}
	if s.IsOverHalfOrder() {
		return ErrHighS
	}
	// e is the digest reduced mod n, as in SEC1 4.1.4 for a 256-bit curve;
	// the overflow flag is irrelevant because reduction is what is wanted.
	var e secp256k1.ModNScalar
	e.SetByteSlice(digest)

	w := scalarInverse(&s)
	in.u1.Mul2(&e, &w)
	in.u2.Mul2(&r, &w)
	in.r = limbsFromBytes((*[32]byte)(sig[:32]))
	return nil
}

// curveN is the group order as limbs.
var curveN = limbsFromHex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")

// finish compares X.x with r and returns X.y's parity.
func (in *sigInput) finish(x *jacobianPoint) (byte, error) {
	a, ok := x.toAffine()
	if !ok {
		return 0, ErrInvalidSignature
	}
	// Compare X.x with r over the integers first: only then is X the nonce
	// point with recovery id 0/1. If X.x >= n but X.x mod n == r (X.x < p <
	// 2n, so X.x mod n = X.x - n), the signature is valid yet needs recovery
	// id 2/3.
	xl := [4]uint64(a.x)
	if xl != in.r {
		var d [4]uint64
		var b uint64
		d[0], b = bits.Sub64(xl[0], curveN[0], 0)
		d[1], b = bits.Sub64(xl[1], curveN[1], b)
		d[2], b = bits.Sub64(xl[2], curveN[2], b)
		d[3], b = bits.Sub64(xl[3], curveN[3], b)
		if b == 0 && d == in.r {
			return 0, ErrUnrecoverable
		}
		return 0, ErrInvalidSignature
	}
	return byte(a.y[0] & 1), nil
}
