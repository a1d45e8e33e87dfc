package secp

import (
	"bytes"
	"crypto/rand"
	"errors"
	"math/big"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// signed is one reference signature from decred's SignCompact, which also
// reports the recovery code that VerifyAndParity must reproduce.
type signed struct {
	pub, digest, sig []byte
	parity           byte
}

func newSigned(t testing.TB) signed {
	t.Helper()
	key, err := secp256k1.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	digest := make([]byte, 32)
	if _, err := rand.Read(digest); err != nil {
		t.Fatal(err)
	}
	compact := ecdsa.SignCompact(key, digest, false)
	code := compact[0] - 27
	if code > 1 {
		// Recovery ids 2/3 occur with probability ~2^-127; a test hitting
		// one has found something far more interesting than a bug here.
		t.Fatalf("reference produced recovery code %d", code)
	}
	return signed{
		pub:    key.PubKey().SerializeUncompressed(),
		digest: digest,
		sig:    compact[1:],
		parity: code,
	}
}

func TestParityMatchesReference(t *testing.T) {
	const cases = 1500
	seen := [2]int{}
	for i := 0; i < cases; i++ {
		c := newSigned(t)
		got, err := VerifyAndParity(c.pub, c.digest, c.sig)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got != c.parity {
			t.Fatalf("case %d: parity %d, reference %d", i, got, c.parity)
		}
		// Cross-check with decred's recovery: the parity must recover pub.
		compact := append([]byte{27 + got}, c.sig...)
		rec, _, err := ecdsa.RecoverCompact(compact, c.digest)
		if err != nil || !bytes.Equal(rec.SerializeUncompressed(), c.pub) {
			t.Fatalf("case %d: recovery with parity %d does not give pub (err %v)", i, got, err)
		}
		seen[got]++
	}
	// Both parities must actually have been exercised.
	if seen[0] == 0 || seen[1] == 0 {
		t.Fatalf("parities not both exercised: %v", seen)
	}
}

func TestTamperedRefused(t *testing.T) {
	c := newSigned(t)
	other := newSigned(t)
	flip := func(b []byte, i int) []byte {
		out := bytes.Clone(b)
		out[i] ^= 0x01
		return out
	}
	tests := []struct {
		name             string
		pub, digest, sig []byte
	}{
		{"digest first byte", c.pub, flip(c.digest, 0), c.sig},
		{"digest last byte", c.pub, flip(c.digest, 31), c.sig},
		{"r", c.pub, c.digest, flip(c.sig, 31)},
		{"other key", other.pub, c.digest, c.sig},
		{"other signature", c.pub, c.digest, other.sig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifyAndParity(tt.pub, tt.digest, tt.sig)
			if !errors.Is(err, ErrInvalidSignature) {
				t.Fatalf("got %v, want ErrInvalidSignature", err)
			}
		})
	}
	// Tampering s may push it over n/2, so accept either refusal but
	// never success.
	for i := 32; i < 64; i += 7 {
		if _, err := VerifyAndParity(c.pub, c.digest, flip(c.sig, i)); err == nil {
			t.Fatalf("tampered s byte %d verified", i)
		}
	}
	// A point on the curve that is not the signer: flip Y to -Y (negated key).
	neg := bytes.Clone(c.pub)
	var y secp256k1.FieldVal
	y.SetByteSlice(neg[33:])
	y.Negate(1).Normalize()
	yb := y.Bytes()
	copy(neg[33:], yb[:])
	if _, err := VerifyAndParity(neg, c.digest, c.sig); !errors.Is(err, ErrInvalidSignature) {
		t.Fatalf("negated key: got %v, want ErrInvalidSignature", err)
	}
}

func TestHighSRefused(t *testing.T) {
	c := newSigned(t)
	var s secp256k1.ModNScalar
	s.SetByteSlice(c.sig[32:])
	s.Negate() // n - s is the high-S twin, also a valid ECDSA signature.
	high := bytes.Clone(c.sig)
	sb := s.Bytes()
	copy(high[32:], sb[:])
	if _, err := VerifyAndParity(c.pub, c.digest, high); !errors.Is(err, ErrHighS) {
		t.Fatalf("got %v, want ErrHighS", err)
	}
}

func TestMalformedRefused(t *testing.T) {
	c := newSigned(t)
	n := secp256k1.S256().N
	nBytes := n.FillBytes(make([]byte, 32))
	withR := func(r []byte) []byte { return append(bytes.Clone(r), c.sig[32:]...) }
	withS := func(s []byte) []byte { return append(bytes.Clone(c.sig[:32]), s...) }
	compressed := make([]byte, 33)
	compressed[0] = 0x02 | (c.pub[64] & 1)
	copy(compressed[1:], c.pub[1:33])
	offCurve := bytes.Clone(c.pub)
	offCurve[64] ^= 0x01
	nMinus1 := new(big.Int).Sub(n, big.NewInt(1)).FillBytes(make([]byte, 32))

	tests := []struct {
		name             string
		pub, digest, sig []byte
		want             error
	}{
		{"empty everything", nil, nil, nil, ErrMalformed},
		{"pub 64 bytes", c.pub[1:], c.digest, c.sig, ErrMalformed},
		{"pub compressed", compressed, c.digest, c.sig, ErrMalformed},
		{"pub wrong prefix", append([]byte{0x06}, c.pub[1:]...), c.digest, c.sig, ErrMalformed},
		{"pub off curve", offCurve, c.digest, c.sig, ErrMalformed},
		{"digest 31", c.pub, c.digest[:31], c.sig, ErrMalformed},
		{"digest 33", c.pub, append(bytes.Clone(c.digest), 0), c.sig, ErrMalformed},
		{"sig 63", c.pub, c.digest, c.sig[:63], ErrMalformed},
		{"sig 65 (with v)", c.pub, c.digest, append(bytes.Clone(c.sig), 27), ErrMalformed},
		{"r zero", c.pub, c.digest, withR(make([]byte, 32)), ErrMalformed},
		{"r = n", c.pub, c.digest, withR(nBytes), ErrMalformed},
		{"s zero", c.pub, c.digest, withS(make([]byte, 32)), ErrMalformed},
		{"s = n", c.pub, c.digest, withS(nBytes), ErrMalformed},
		{"s = n-1 (high)", c.pub, c.digest, withS(nMinus1), ErrHighS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifyAndParity(tt.pub, tt.digest, tt.sig)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func BenchmarkVerifyAndParity(b *testing.B) {
	c := newSigned(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := VerifyAndParity(c.pub, c.digest, c.sig); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReferenceVerifyAndParity measures the original implementation
// (kept in reference_test.go) for comparison.
func BenchmarkReferenceVerifyAndParity(b *testing.B) {
	c := newSigned(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := referenceVerifyAndParity(c.pub, c.digest, c.sig); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifier(b *testing.B) {
	c := newSigned(b)
	v, err := NewVerifier(c.pub)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.VerifyAndParity(c.digest, c.sig); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNewVerifier(b *testing.B) {
	c := newSigned(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewVerifier(c.pub); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzVerifyAndParity checks that arbitrary inputs never panic, that
// whatever is accepted really recovers to the given key, and that the
// package function, a Verifier and the original (reference) implementation
// give identical answers.
func FuzzVerifyAndParity(f *testing.F) {
	c := newSigned(f)
	f.Add(c.pub, c.digest, c.sig)
	f.Add(c.pub, c.digest, make([]byte, 64))
	f.Add([]byte{4}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, pub, digest, sig []byte) {
		parity, err := checkAgainstReference(t, pub, digest, sig)
		if err != nil {
			return
		}
		compact := append([]byte{27 + parity}, sig...)
		rec, _, err := ecdsa.RecoverCompact(compact, digest)
		if err != nil || !bytes.Equal(rec.SerializeUncompressed(), pub) {
			t.Fatalf("accepted signature does not recover to pub (err %v)", err)
		}
	})
}
