package backup

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testKey derives a key pair from a seed of 32 copies of b.
func testKey(t testing.TB, b byte) (*PrivateKey, *PublicKey) {
	t.Helper()
	priv, pub, err := KeyPairFromSeed(bytes.Repeat([]byte{b}, SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

func TestKeyPairFromSeedIsRFC9180DeriveKeyPair(t *testing.T) {
	// RFC 9180 Appendix A.1.1 (DHKEM(X25519, HKDF-SHA256)): ikmR -> pkRm.
	// Pinning the published vector keeps restores possible across Go
	// releases and rewrites of this package.
	ikm := mustHex(t, "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037")
	want := mustHex(t, "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d")
	priv, pub, err := KeyPairFromSeed(ikm)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pub.Bytes(), want) {
		t.Fatalf("public key %x, want %x", pub.Bytes(), want)
	}
	sk, err := priv.k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	// skRm as serialized by RFC 9180 section 7.1.2, which clamps it.
	wantSK := mustHex(t, "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
	wantSK[0] &= 248
	wantSK[31] = wantSK[31]&127 | 64
	if !bytes.Equal(sk, wantSK) {
		t.Fatalf("private key %x, want %x", sk, wantSK)
	}
	if !priv.Public().Equal(pub) {
		t.Fatal("Public() differs from the returned public key")
	}
}

func TestKeyPairFromSeedDeterministic(t *testing.T) {
	_, a := testKey(t, 1)
	_, b := testKey(t, 1)
	_, c := testKey(t, 2)
	if !a.Equal(b) || a.Fingerprint() != b.Fingerprint() {
		t.Fatal("same seed gave different keys")
	}
	if a.Equal(c) || a.Fingerprint() == c.Fingerprint() {
		t.Fatal("different seeds gave the same key")
	}
	for _, seed := range [][]byte{nil, make([]byte, 31), make([]byte, 33), make([]byte, 64), make([]byte, 32)} {
		if _, _, err := KeyPairFromSeed(seed); err == nil {
			t.Errorf("KeyPairFromSeed(%d bytes, zero) succeeded", len(seed))
		}
	}
}

// The text form and fingerprint are written into configuration and shown
// to officers; they must never change for a given key.
func TestPublicKeyTextFormIsStable(t *testing.T) {
	_, pub := testKey(t, 1)
	const wantText = "apbk1-QYUjIP82dJX6UiyUy4OvOR5OiQGDknJbvyCY3ZMbxCTs3lmU"
	const wantFP = "849d5304c576f00c22fcbd682803464422efff8939866a03f9161a01a6535069"
	if got := MarshalPublicKey(pub); got != wantText {
		t.Errorf("MarshalPublicKey = %q, want %q", got, wantText)
	}
	if got := pub.Fingerprint().String(); got != wantFP {
		t.Errorf("Fingerprint = %s, want %s", got, wantFP)
	}
	if pub.String() != MarshalPublicKey(pub) {
		t.Error("String differs from MarshalPublicKey")
	}
}

func TestParsePublicKey(t *testing.T) {
	_, pub := testKey(t, 7)
	text := MarshalPublicKey(pub)
	for _, s := range []string{text, " " + text + "\n"} {
		got, err := ParsePublicKey(s)
		if err != nil {
			t.Fatalf("ParsePublicKey(%q): %v", s, err)
		}
		if !got.Equal(pub) || got.Fingerprint() != pub.Fingerprint() {
			t.Fatal("parsed key differs")
		}
	}

	// A small-order point with a valid checksum: well-formed text, but a
	// key whose shared secret anyone can compute.
	zero := make([]byte, 32)
	smallOrder := PublicKeyPrefix + base64.RawURLEncoding.EncodeToString(append(zero, pubChecksum(zero)...))

	flipped := []byte(text)
	flipped[len(PublicKeyPrefix)+3] ^= 'A' ^ 'B'
	for name, s := range map[string]string{
		"empty":        "",
		"no prefix":    strings.TrimPrefix(text, PublicKeyPrefix),
		"other prefix": "apbk2-" + strings.TrimPrefix(text, PublicKeyPrefix),
		"typo":         string(flipped),
		"truncated":    text[:len(text)-1],
		"extended":     text + "AA",
		"padded":       text + "==",
		"std base64":   strings.NewReplacer("_", "/", "-", "+").Replace(text),
		"small order":  smallOrder,
	} {
		if s == text {
			continue // a replacement that did not change anything
		}
		if _, err := ParsePublicKey(s); err == nil {
			t.Errorf("%s: ParsePublicKey(%q) succeeded", name, s)
		}
	}
}

func TestNilKeys(t *testing.T) {
	var pub *PublicKey
	var priv *PrivateKey
	if pub.Bytes() != nil || MarshalPublicKey(pub) != "" || pub.Fingerprint() != (Fingerprint{}) || pub.Equal(pub) {
		t.Error("nil public key methods")
	}
	if priv.Public() != nil {
		t.Error("nil private key Public")
	}
	if _, err := NewWriter(&bytes.Buffer{}, nil, created); err == nil {
		t.Error("NewWriter with a nil key succeeded")
	}
	if _, err := Open(bytes.NewReader(nil), nil); err == nil {
		t.Error("Open with a nil key succeeded")
	}
}
