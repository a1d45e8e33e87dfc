// Package secp verifies secp256k1 ECDSA signatures returned by the HSM and
// recovers the information the HSM does not return: the recovery parity that
// Ethereum (and other chains using public-key recovery) put in a signature.
package secp

import (
	"errors"
	"fmt"

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
func VerifyAndParity(pub, digest, sig []byte) (parity byte, err error) {
	if len(pub) != PublicKeyLen || pub[0] != 0x04 {
		return 0, fmt.Errorf("%w: public key must be %d-byte uncompressed SEC1 (0x04 prefix), got %d bytes",
			ErrMalformed, PublicKeyLen, len(pub))
	}
	if len(digest) != DigestLen {
		return 0, fmt.Errorf("%w: digest must be %d bytes, got %d", ErrMalformed, DigestLen, len(digest))
	}
	if len(sig) != SignatureLen {
		return 0, fmt.Errorf("%w: signature must be %d bytes r||s, got %d", ErrMalformed, SignatureLen, len(sig))
	}
	key, err := secp256k1.ParsePubKey(pub)
	if err != nil {
		return 0, fmt.Errorf("%w: public key: %w", ErrMalformed, err)
	}

	var r, s secp256k1.ModNScalar
	if overflow := r.SetByteSlice(sig[:32]); overflow || r.IsZero() {
		return 0, fmt.Errorf("%w: r is not in [1, n-1]", ErrMalformed)
	}
	if overflow := s.SetByteSlice(sig[32:]); overflow || s.IsZero() {
		return 0, fmt.Errorf("%w: s is not in [1, n-1]", ErrMalformed)
	}
	if s.IsOverHalfOrder() {
		return 0, ErrHighS
	}

	// e is the digest reduced mod n, as in SEC1 4.1.4 for a 256-bit curve;
	// the overflow flag is irrelevant because reduction is what is wanted.
	var e secp256k1.ModNScalar
	e.SetByteSlice(digest)

	w := new(secp256k1.ModNScalar).Set(&s).InverseNonConst()
	u1 := new(secp256k1.ModNScalar).Mul2(&e, w)
	u2 := new(secp256k1.ModNScalar).Mul2(&r, w)

	var q, u1G, u2Q, x secp256k1.JacobianPoint
	key.AsJacobian(&q)
	secp256k1.ScalarBaseMultNonConst(u1, &u1G)
	secp256k1.ScalarMultNonConst(u2, &q, &u2Q)
	secp256k1.AddNonConst(&u1G, &u2Q, &x)
	if (x.X.IsZero() && x.Y.IsZero()) || x.Z.IsZero() {
		return 0, ErrInvalidSignature
	}
	x.ToAffine()

	// Compare X.x with r over the integers first: only then is X the nonce
	// point with recovery id 0/1. If X.x >= n but X.x mod n == r, the
	// signature is valid yet needs recovery id 2/3.
	xBytes := x.X.Bytes()
	var xModN secp256k1.ModNScalar
	xOverflow := xModN.SetBytes(xBytes) != 0
	if !xModN.Equals(&r) {
		return 0, ErrInvalidSignature
	}
	if xOverflow {
		return 0, ErrUnrecoverable
	}
	if x.Y.IsOdd() {
		return 1, nil
	}
	return 0, nil
}
