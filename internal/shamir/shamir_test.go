package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"math/bits"
	mrand "math/rand/v2"
	"testing"
)

func TestSplitInvalid(t *testing.T) {
	tests := []struct {
		name   string
		secret []byte
		n, k   int
		want   error
	}{
		{"k zero", []byte("s"), 3, 0, ErrInvalidParameters},
		{"k one", []byte("s"), 3, 1, ErrInvalidParameters},
		{"k above n", []byte("s"), 2, 3, ErrInvalidParameters},
		{"n above 255", []byte("s"), 256, 3, ErrInvalidParameters},
		{"empty secret", nil, 3, 2, ErrEmptySecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Split(tt.secret, tt.n, tt.k); !errors.Is(err, tt.want) {
				t.Fatalf("Split error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSplitLayout(t *testing.T) {
	secret := []byte("custody")
	shares, err := Split(secret, 255, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range shares {
		if len(s) != len(secret)+1 {
			t.Fatalf("share %d is %d bytes, want %d", i, len(s), len(secret)+1)
		}
		if s[len(secret)] != byte(i+1) {
			t.Fatalf("share %d has x=%d, want %d", i, s[len(secret)], i+1)
		}
	}
}

func TestCombineInvalid(t *testing.T) {
	tests := []struct {
		name   string
		shares [][]byte
		want   error
	}{
		{"none", nil, ErrTooFewShares},
		{"one", [][]byte{{1, 1}}, ErrTooFewShares},
		{"length mismatch", [][]byte{{1, 2, 1}, {1, 2}}, ErrInvalidShare},
		{"too short", [][]byte{{1}, {2}}, ErrInvalidShare},
		{"empty", [][]byte{{}, {}}, ErrInvalidShare},
		{"x zero", [][]byte{{7, 0}, {7, 1}}, ErrInvalidShare},
		{"same x", [][]byte{{7, 1}, {8, 1}}, ErrDuplicateShare},
		{"identical", [][]byte{[]byte("foo"), []byte("foo")}, ErrDuplicateShare},
		{"256 shares", make256(), ErrDuplicateShare},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Combine(tt.shares); !errors.Is(err, tt.want) {
				t.Fatalf("Combine error = %v, want %v", err, tt.want)
			}
		})
	}
}

func make256() [][]byte {
	s := make([][]byte, 256)
	for i := range s {
		s[i] = []byte{0, byte(i)}
	}
	return s
}

// TestEveryKSubsetRecovers splits random secrets of 1..64 bytes and checks
// that every k-subset of the n shares, in either order, gives the secret back.
func TestEveryKSubsetRecovers(t *testing.T) {
	for n := 2; n <= 7; n++ {
		for k := 2; k <= n; k++ {
			secret := randomSecret(t, 1+mrand.IntN(64))
			shares, err := Split(secret, n, k)
			if err != nil {
				t.Fatal(err)
			}
			for mask := uint(0); mask < 1<<n; mask++ {
				if bits.OnesCount(mask) != k {
					continue
				}
				subset := pick(shares, mask)
				for _, order := range [][][]byte{subset, reversed(subset)} {
					got, err := Combine(order)
					if err != nil {
						t.Fatalf("n=%d k=%d mask=%b: %v", n, k, mask, err)
					}
					if !bytes.Equal(got, secret) {
						t.Fatalf("n=%d k=%d mask=%b: recovered a different secret", n, k, mask)
					}
				}
			}
			// More than k shares interpolate the same degree-(k−1) polynomial.
			if got, err := Combine(shares); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("n=%d k=%d: all n shares did not recover the secret (err %v)", n, k, err)
			}
		}
	}
}

// TestBelowThresholdDoesNotRecover checks that k−1 shares do not give the
// secret. For secrets of 16+ bytes a false match has probability 2^-128, so
// every trial must miss; 1-byte secrets match by chance 1 time in 256, so
// only the rate is bounded.
func TestBelowThresholdDoesNotRecover(t *testing.T) {
	for trial := range 500 {
		n := 3 + mrand.IntN(6)
		k := 3 + mrand.IntN(n-2) // 3..n, so k−1 ≥ 2 shares can be combined
		secret := randomSecret(t, 16+mrand.IntN(49))
		shares, err := Split(secret, n, k)
		if err != nil {
			t.Fatal(err)
		}
		perm := mrand.Perm(n)[:k-1]
		subset := make([][]byte, 0, k-1)
		for _, i := range perm {
			subset = append(subset, shares[i])
		}
		got, err := Combine(subset)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, secret) {
			t.Fatalf("trial %d: %d of %d-of-%d shares recovered the secret", trial, k-1, k, n)
		}
	}

	const trials = 4000
	matches := 0
	for range trials {
		secret := randomSecret(t, 1)
		shares, err := Split(secret, 3, 3)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Combine(shares[:2])
		if err != nil {
			t.Fatal(err)
		}
		if got[0] == secret[0] {
			matches++
		}
	}
	// Expected 4000/256 ≈ 15.6 (σ ≈ 3.9); 60 is over 11σ away.
	if matches > 60 {
		t.Fatalf("2 of 3-of-3 shares recovered a 1-byte secret %d times in %d", matches, trials)
	}
}

// TestShareByteUniform checks that a share byte of a fixed secret is uniform
// over many splits: Pearson's χ² with 255 degrees of freedom has mean 255
// and σ ≈ 22.6; the bounds sit 6.4σ either side, so the test does not
// flake yet catches a biased or constant coefficient source.
func TestShareByteUniform(t *testing.T) {
	const splits = 256 * 64
	secret := []byte{0x42, 0x00, 0xff}
	var counts [3][256]int
	for range splits {
		shares, err := Split(secret, 5, 3)
		if err != nil {
			t.Fatal(err)
		}
		// Share at x=2, every byte position (including the zero secret byte).
		for b := range secret {
			counts[b][shares[1][b]]++
		}
	}
	for b := range secret {
		const expected = float64(splits) / 256
		var chi2 float64
		for _, c := range counts[b] {
			d := float64(c) - expected
			chi2 += d * d / expected
		}
		if chi2 < 110 || chi2 > 400 {
			t.Fatalf("byte %d: χ² = %.1f, outside [110, 400]", b, chi2)
		}
		t.Logf("byte %d: χ² = %.1f (255 dof)", b, chi2)
	}
}

func FuzzCombine(f *testing.F) {
	shares, err := Split([]byte("seed secret"), 3, 2)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shares[0], shares[1], shares[2], uint8(2))
	f.Add([]byte{}, []byte{1}, []byte{0, 0}, uint8(3))
	f.Add([]byte{1, 1}, []byte{1, 1}, []byte{1, 1}, uint8(3))
	f.Fuzz(func(t *testing.T, a, b, c []byte, n uint8) {
		in := [][]byte{a, b, c}[:int(n)%4]
		got, err := Combine(in)
		if err == nil && len(got) != len(a)-1 {
			t.Fatalf("secret is %d bytes from %d-byte shares", len(got), len(a))
		}
	})
}

func randomSecret(t *testing.T, n int) []byte {
	t.Helper()
	s := make([]byte, n)
	if _, err := rand.Read(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func pick(shares [][]byte, mask uint) [][]byte {
	var out [][]byte
	for i, s := range shares {
		if mask&(1<<i) != 0 {
			out = append(out, s)
		}
	}
	return out
}

func reversed(s [][]byte) [][]byte {
	out := make([][]byte, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

// TestCombineInto: the secret is written into the caller's memory, equal
// to Combine's; a destination of the wrong size or a bad share set is
// refused and leaves the destination zeroed.
func TestCombineInto(t *testing.T) {
	secret := randomSecret(t, 32)
	shares, err := Split(secret, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 32)
	if err := CombineInto(dst, shares[1:4]); err != nil || !bytes.Equal(dst, secret) {
		t.Fatalf("CombineInto = %x, %v", dst, err)
	}
	// Whatever dst held before is not mixed in.
	for i := range dst {
		dst[i] = 0xff
	}
	if err := CombineInto(dst, shares[:3]); err != nil || !bytes.Equal(dst, secret) {
		t.Fatalf("CombineInto over stale bytes = %x, %v", dst, err)
	}
	for _, tt := range []struct {
		name   string
		dst    []byte
		shares [][]byte
		want   error
	}{
		{"short destination", make([]byte, 31), shares[:3], ErrInvalidShare},
		{"long destination", make([]byte, 33), shares[:3], ErrInvalidShare},
		{"one share", make([]byte, 32), shares[:1], ErrTooFewShares},
		{"same x", make([]byte, 32), [][]byte{shares[0], shares[0]}, ErrDuplicateShare},
	} {
		for i := range tt.dst {
			tt.dst[i] = 0xa5
		}
		if err := CombineInto(tt.dst, tt.shares); !errors.Is(err, tt.want) {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.want)
		}
		if !bytes.Equal(tt.dst, make([]byte, len(tt.dst))) {
			t.Errorf("%s: destination not zeroed on error", tt.name)
		}
	}
}
