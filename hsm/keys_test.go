package hsm_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"testing"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	decredecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"github.com/miekg/pkcs11"
)

var allAlgs = []hsm.Algorithm{hsm.Secp256k1, hsm.P256, hsm.Ed25519}

// TestGenerateKeyAttributes reads the generated private key's attributes back
// through PKCS#11 directly, not through the package under test.
func TestGenerateKeyAttributes(t *testing.T) {
	m, uri := openModule(t, nil)
	p, sh := rawSession(t, uri, m.Slot())
	for _, alg := range allAlgs {
		t.Run(string(alg), func(t *testing.T) {
			k, err := m.GenerateKey(ctxT(t), alg, "attr-"+string(alg))
			if err != nil {
				t.Fatalf("GenerateKey: %v", err)
			}
			if len(k.ID) != 16 || k.Algorithm != alg || k.Label != "attr-"+string(alg) {
				t.Fatalf("GeneratedKey = %+v", k)
			}
			wantLen := map[hsm.Algorithm]int{hsm.Secp256k1: 65, hsm.P256: 65, hsm.Ed25519: 32}[alg]
			if len(k.PublicKey) != wantLen {
				t.Fatalf("public key has %d bytes, want %d", len(k.PublicKey), wantLen)
			}
			if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_ID, k.ID),
			}); err != nil {
				t.Fatal(err)
			}
			objs, _, err := p.FindObjects(sh, 2)
			_ = p.FindObjectsFinal(sh)
			if err != nil || len(objs) != 1 {
				t.Fatalf("found %d private objects (%v), want 1", len(objs), err)
			}
			want := []struct {
				attr uint
				name string
				val  bool
			}{
				{pkcs11.CKA_SENSITIVE, "SENSITIVE", true},
				{pkcs11.CKA_EXTRACTABLE, "EXTRACTABLE", false},
				{pkcs11.CKA_ALWAYS_SENSITIVE, "ALWAYS_SENSITIVE", true},
				{pkcs11.CKA_NEVER_EXTRACTABLE, "NEVER_EXTRACTABLE", true},
				{pkcs11.CKA_TOKEN, "TOKEN", true},
				{pkcs11.CKA_PRIVATE, "PRIVATE", true},
				{pkcs11.CKA_SIGN, "SIGN", true},
				{pkcs11.CKA_DECRYPT, "DECRYPT", false},
				{pkcs11.CKA_UNWRAP, "UNWRAP", false},
				{pkcs11.CKA_DERIVE, "DERIVE", false},
			}
			for _, w := range want {
				got, err := p.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(w.attr, nil)})
				if err != nil {
					t.Fatalf("CKA_%s: %v", w.name, err)
				}
				if v := got[0].Value; len(v) != 1 || (v[0] != 0) != w.val {
					t.Errorf("CKA_%s = %v, want %t", w.name, v, w.val)
				}
			}
			_, err = p.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			var rv pkcs11.Error
			if !errors.As(err, &rv) || rv != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
				t.Fatalf("reading CKA_VALUE of the private key: err = %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}
			pub, err := m.PublicKey(ctxT(t), hsm.KeyRef{ID: k.ID, Algorithm: alg})
			if err != nil || !bytes.Equal(pub, k.PublicKey) {
				t.Fatalf("PublicKey = %x, %v; want %x", pub, err, k.PublicKey)
			}
		})
	}
}

func verifySecp256k1(t *testing.T, pub, digest, sig []byte) {
	t.Helper()
	if err := checkSecp256k1(pub, digest, sig); err != nil {
		t.Fatal(err)
	}
}

// checkSecp256k1 verifies with decred's implementation and insists on low-S.
// It returns an error rather than failing so goroutines can use it.
func checkSecp256k1(pub, digest, sig []byte) error {
	pk, err := secp256k1.ParsePubKey(pub)
	if err != nil {
		return err
	}
	if len(sig) != 64 {
		return fmt.Errorf("signature has %d bytes", len(sig))
	}
	var r, s secp256k1.ModNScalar
	if r.SetByteSlice(sig[:32]) || s.SetByteSlice(sig[32:]) {
		return fmt.Errorf("r or s overflows the group order")
	}
	if s.IsOverHalfOrder() {
		return fmt.Errorf("signature %x is high-S", sig)
	}
	if !decredecdsa.NewSignature(&r, &s).Verify(digest, pk) {
		return fmt.Errorf("secp256k1 signature %x does not verify", sig)
	}
	return nil
}

func TestSignVerifiesIndependently(t *testing.T) {
	m, _ := openModule(t, nil)
	digest := sha256.Sum256([]byte("withdraw 1 BTC"))

	t.Run("secp256k1 x1000 low-S", func(t *testing.T) {
		k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "k1")
		if err != nil {
			t.Fatal(err)
		}
		ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
		for i := range 1000 {
			d := sha256.Sum256(fmt.Appendf(nil, "msg %d", i))
			sig, err := m.Sign(ctxT(t), ref, d[:])
			if err != nil {
				t.Fatalf("Sign %d: %v", i, err)
			}
			verifySecp256k1(t, k.PublicKey, d[:], sig)
		}
	})

	t.Run("p256", func(t *testing.T) {
		k, err := m.GenerateKey(ctxT(t), hsm.P256, "p1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ecdh.P256().NewPublicKey(k.PublicKey); err != nil {
			t.Fatal(err)
		}
		x, y := elliptic.Unmarshal(elliptic.P256(), k.PublicKey) //nolint:staticcheck // test-only decoding
		pk := &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}
		halfN := new(big.Int).Rsh(elliptic.P256().Params().N, 1)
		for i := range 50 {
			d := sha256.Sum256(fmt.Appendf(nil, "p256 %d", i))
			sig, err := m.Sign(ctxT(t), hsm.KeyRef{ID: k.ID, Algorithm: hsm.P256}, d[:])
			if err != nil {
				t.Fatal(err)
			}
			r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
			if s.Cmp(halfN) > 0 {
				t.Fatalf("P-256 signature is high-S")
			}
			if !ecdsa.Verify(pk, d[:], r, s) {
				t.Fatalf("P-256 signature does not verify")
			}
		}
	})

	t.Run("ed25519", func(t *testing.T) {
		k, err := m.GenerateKey(ctxT(t), hsm.Ed25519, "e1")
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("an Ed25519 message of arbitrary length, not a digest")
		sig, err := m.Sign(ctxT(t), hsm.KeyRef{ID: k.ID, Algorithm: hsm.Ed25519}, msg)
		if err != nil {
			t.Fatal(err)
		}
		if !ed25519.Verify(ed25519.PublicKey(k.PublicKey), msg, sig) {
			t.Fatal("Ed25519 signature does not verify")
		}
	})

	t.Run("input checks", func(t *testing.T) {
		if _, err := m.Sign(ctxT(t), hsm.KeyRef{ID: []byte{1}, Algorithm: hsm.Secp256k1}, digest[:31]); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Errorf("31-byte digest: %v, want ErrInvalidInput", err)
		}
		if _, err := m.Sign(ctxT(t), hsm.KeyRef{ID: []byte{1}, Algorithm: "rsa"}, digest[:]); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Errorf("unknown algorithm: %v, want ErrInvalidInput", err)
		}
		if _, err := m.Sign(ctxT(t), hsm.KeyRef{ID: []byte("nope"), Algorithm: hsm.Secp256k1}, digest[:]); !errors.Is(err, hsm.ErrKeyNotFound) {
			t.Errorf("unknown key: %v, want ErrKeyNotFound", err)
		}
	})
}

func TestCheckKey(t *testing.T) {
	m, _ := openModule(t, nil)
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "pinned")
	if err != nil {
		t.Fatal(err)
	}
	other, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "other")
	if err != nil {
		t.Fatal(err)
	}
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
	tests := []struct {
		name   string
		ref    hsm.KeyRef
		pinned []byte
		want   error
	}{
		{"matches", ref, k.PublicKey, nil},
		{"wrong pinned key", ref, other.PublicKey, hsm.ErrKeyMismatch},
		{"unknown id", hsm.KeyRef{ID: []byte("no such key"), Algorithm: hsm.Secp256k1}, k.PublicKey, hsm.ErrKeyNotFound},
		{"right id, wrong curve", hsm.KeyRef{ID: k.ID, Algorithm: hsm.P256}, k.PublicKey, hsm.ErrKeyNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := m.CheckKey(ctxT(t), tc.ref, tc.pinned)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("CheckKey = %v, want %v", err, tc.want)
			}
		})
	}

	// Pinning: a pinned key that fails its check is refused by Sign.
	m.SetPinnedKeys([]hsm.PinnedKey{
		{Ref: ref, PublicKey: k.PublicKey},
		{Ref: hsm.KeyRef{ID: other.ID, Algorithm: hsm.Secp256k1}, PublicKey: k.PublicKey},
	})
	if err := m.KeyError(k.ID); err != nil {
		t.Fatalf("KeyError(good) = %v", err)
	}
	if err := m.KeyError(other.ID); !errors.Is(err, hsm.ErrKeyMismatch) {
		t.Fatalf("KeyError(mismatched) = %v, want ErrKeyMismatch", err)
	}
	if err := m.KeyError([]byte("x")); !errors.Is(err, hsm.ErrKeyNotPinned) {
		t.Fatalf("KeyError(unpinned) = %v, want ErrKeyNotPinned", err)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := m.Sign(ctxT(t), hsm.KeyRef{ID: other.ID, Algorithm: hsm.Secp256k1}, d[:]); !errors.Is(err, hsm.ErrKeyMismatch) {
		t.Fatalf("Sign with mismatched pinned key = %v, want ErrKeyMismatch", err)
	}
	if _, err := m.Sign(ctxT(t), ref, d[:]); err != nil {
		t.Fatalf("Sign with good pinned key: %v", err)
	}
}

func TestInitTokenRefusesDuplicateLabel(t *testing.T) {
	uri, _ := softhsmtest.NewToken(t)
	err := hsm.InitToken(uri.ModulePath, uri.Token, []byte("so-pin-1"), []byte("user-pin-1"))
	if !errors.Is(err, hsm.ErrTokenExists) {
		t.Fatalf("InitToken with an existing label = %v, want ErrTokenExists", err)
	}
	// The original token was left alone: it still opens with its own PIN.
	m, err := hsm.Open(ctxT(t), hsm.Options{URI: uri, Logger: nopLogger()})
	if err != nil {
		t.Fatalf("Open after the refused InitToken: %v", err)
	}
	defer m.Close()
	if err := m.Probe(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctxT(t))
	if err != nil || info.TokenModel == "" || info.LibraryDescription == "" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
}

func TestOpenErrors(t *testing.T) {
	uri, _ := softhsmtest.NewToken(t)
	bad := *uri
	bad.Token = "no-such-token"
	if _, err := hsm.Open(ctxT(t), hsm.Options{URI: &bad, Logger: nopLogger()}); !errors.Is(err, hsm.ErrTokenNotFound) {
		t.Fatalf("Open(missing token) = %v, want ErrTokenNotFound", err)
	}
	wrong := *uri
	wrong.PinValue = "wrong-pin-value"
	_, err := hsm.Open(ctxT(t), hsm.Options{URI: &wrong, Logger: nopLogger()})
	if err == nil || bytes.Contains([]byte(err.Error()), []byte("wrong-pin-value")) {
		t.Fatalf("Open(wrong PIN) = %v: want an error without the PIN", err)
	}
	// One Module per library per process.
	m, err := hsm.Open(ctxT(t), hsm.Options{URI: uri, Logger: nopLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := hsm.Open(ctxT(t), hsm.Options{URI: uri, Logger: nopLogger()}); !errors.Is(err, hsm.ErrAlreadyInitialized) {
		t.Fatalf("second Open = %v, want ErrAlreadyInitialized", err)
	}
}
