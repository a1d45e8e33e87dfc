// Package shamir implements Shamir's secret sharing over GF(2^8), byte by
// byte, with constant-time field arithmetic.
//
// A share is the polynomial values for every secret byte followed by the
// share's x-coordinate, the layout HashiCorp Vault uses, so a share of an
// n-byte secret is n+1 bytes long.
package shamir

import (
	"crypto/rand"
	"errors"
	"fmt"
)

// Limits of the scheme: x-coordinates are nonzero bytes, so at most 255 shares.
const (
	MinThreshold = 2
	MaxShares    = 255
)

// Errors returned by Split and Combine; compare with errors.Is.
var (
	// ErrInvalidParameters reports a k or n outside 2 ≤ k ≤ n ≤ 255.
	ErrInvalidParameters = errors.New("shamir: invalid threshold or share count")
	// ErrEmptySecret reports an attempt to split an empty secret.
	ErrEmptySecret = errors.New("shamir: empty secret")
	// ErrTooFewShares reports fewer than two shares given to Combine.
	ErrTooFewShares = errors.New("shamir: at least two shares are required")
	// ErrInvalidShare reports a share that is too short, of a different
	// length than the others, or with x-coordinate zero (which would be the
	// secret itself).
	ErrInvalidShare = errors.New("shamir: invalid share")
	// ErrDuplicateShare reports two shares with the same x-coordinate.
	ErrDuplicateShare = errors.New("shamir: duplicate share")
)

// Split splits secret into n shares, any k of which recover it
// (2 ≤ k ≤ n ≤ 255). Each share is len(secret)+1 bytes: the y-values
// followed by the share's x-coordinate, 1..n. Coefficients come from
// crypto/rand and are zeroed before Split returns.
func Split(secret []byte, n, k int) ([][]byte, error) {
	if k < MinThreshold || n < k || n > MaxShares {
		return nil, fmt.Errorf("%w: k=%d n=%d", ErrInvalidParameters, k, n)
	}
	if len(secret) == 0 {
		return nil, ErrEmptySecret
	}

	// coeffs[b*(k-1)+j] is the coefficient of x^(j+1) for secret byte b;
	// the constant term is the secret byte itself.
	deg := k - 1
	coeffs := make([]byte, len(secret)*deg)
	defer clear(coeffs)
	if _, err := rand.Read(coeffs); err != nil {
		return nil, fmt.Errorf("shamir: reading randomness: %w", err)
	}

	shares := make([][]byte, n)
	for i := range shares {
		x := byte(i + 1)
		share := make([]byte, len(secret)+1)
		for b, s := range secret {
			share[b] = evaluate(s, coeffs[b*deg:(b+1)*deg], x)
		}
		share[len(secret)] = x
		shares[i] = share
	}
	return shares, nil
}

// evaluate returns f(x) for f = intercept + Σ coeffs[j]·x^(j+1), by Horner's rule.
func evaluate(intercept byte, coeffs []byte, x byte) byte {
	var acc byte
	for j := len(coeffs) - 1; j >= 0; j-- {
		acc = gfAdd(gfMul(acc, x), coeffs[j])
	}
	return gfAdd(gfMul(acc, x), intercept)
}

// Combine recovers the secret from at least k distinct shares. With fewer
// than k shares it returns a wrong secret: Shamir's scheme cannot tell, so
// the caller must check the result against a verifier. The caller zeroes
// the result; CombineInto writes it where the caller chooses instead.
func Combine(shares [][]byte) ([]byte, error) {
	if len(shares) < MinThreshold {
		return nil, ErrTooFewShares
	}
	if len(shares[0]) < 2 {
		return nil, fmt.Errorf("%w: share 0 is %d bytes, need at least 2", ErrInvalidShare, len(shares[0]))
	}
	secret := make([]byte, len(shares[0])-1)
	if err := CombineInto(secret, shares); err != nil {
		clear(secret)
		return nil, err
	}
	return secret, nil
}

// CombineInto is Combine writing the secret into dst, which must be one
// byte shorter than each share: secret memory the caller owns (outside the
// Go heap, say), so no other copy of the secret is made. On error dst is
// zeroed.
func CombineInto(dst []byte, shares [][]byte) error {
	clear(dst)
	if len(shares) < MinThreshold {
		return ErrTooFewShares
	}
	if len(shares) > MaxShares {
		// 255 nonzero x-coordinates exist; more shares must repeat one.
		return fmt.Errorf("%w: %d shares", ErrDuplicateShare, len(shares))
	}
	size := len(shares[0])
	if size < 2 {
		return fmt.Errorf("%w: share 0 is %d bytes, need at least 2", ErrInvalidShare, size)
	}
	if len(dst) != size-1 {
		return fmt.Errorf("%w: shares carry %d bytes, the destination holds %d", ErrInvalidShare, size-1, len(dst))
	}

	// x-coordinates are public (they travel in the clear as share indexes),
	// so checking them with ordinary branches leaks nothing.
	xs := make([]byte, len(shares))
	var seen [256]bool
	for i, s := range shares {
		if len(s) != size {
			return fmt.Errorf("%w: share %d is %d bytes, share 0 is %d", ErrInvalidShare, i, len(s), size)
		}
		x := s[size-1]
		if x == 0 {
			return fmt.Errorf("%w: share %d has x-coordinate 0", ErrInvalidShare, i)
		}
		if seen[x] {
			return fmt.Errorf("%w: x-coordinate %d given twice", ErrDuplicateShare, x)
		}
		seen[x] = true
		xs[i] = x
	}

	// Lagrange interpolation at 0: secret = Σ y_i · Π_{j≠i} x_j / (x_j − x_i).
	// The basis weights depend only on the public x-coordinates.
	weights := make([]byte, len(xs))
	for i, xi := range xs {
		w := byte(1)
		for j, xj := range xs {
			if j == i {
				continue
			}
			w = gfMul(w, gfDiv(xj, gfAdd(xj, xi)))
		}
		weights[i] = w
	}

	// Accumulated in place: dst is the only memory that ever holds the
	// secret (and partial sums of it).
	for i, s := range shares {
		w := weights[i]
		for b := range dst {
			dst[b] ^= gfMul(w, s[b])
		}
	}
	return nil
}
