package hsm

import (
	"bytes"
	"crypto/ecdh"
	"encoding/asn1"
	"encoding/hex"
	"math/big"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// fuzzAlgs are the algorithms, plus one the package does not know.
var fuzzAlgs = []Algorithm{Secp256k1, P256, Ed25519, "rsa"}

// FuzzDecodePoint: CKA_EC_POINT as a token returns it, the public key every
// signature is then verified against (and that the registry pins). What is
// accepted is exactly the point, bare or as its one DER OCTET STRING (no
// other encoding), of the algorithm's length; an EC point is uncompressed
// and on its curve; and the caller's form decodes to itself.
func FuzzDecodePoint(f *testing.F) {
	g1, _ := hex.DecodeString("0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8")
	g2, _ := hex.DecodeString("046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")
	// RFC 8032 section 7.1, test 1: the public key.
	ed, _ := hex.DecodeString("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
	wrap := func(b []byte) []byte { d, _ := asn1.Marshal(b); return d }
	f.Add(uint8(0), g1)
	f.Add(uint8(0), wrap(g1))
	f.Add(uint8(1), wrap(g2))
	f.Add(uint8(1), g1)
	f.Add(uint8(2), wrap(ed))
	f.Add(uint8(2), ed)
	f.Add(uint8(0), append([]byte{0x04, 0x81, 0x41}, g1...)) // long-form length: not DER
	f.Add(uint8(3), g1)
	f.Fuzz(func(t *testing.T, a uint8, v []byte) {
		alg := fuzzAlgs[int(a)%len(fuzzAlgs)]
		buf := bytes.Clone(v) // the token's buffer, which the engine's v must not stand for
		out, err := decodePoint(alg, buf)
		if err != nil {
			if out != nil {
				t.Fatal("refusal with a point")
			}
			return
		}
		spec := algSpecs[alg]
		if len(out) != spec.pubLen {
			t.Fatalf("%s point of %d bytes", alg, len(out))
		}
		if !bytes.Equal(v, out) && !bytes.Equal(v, wrap(out)) {
			t.Fatalf("%s: %x accepted as %x, neither the bare point nor its DER", alg, v, out)
		}
		switch alg {
		case Secp256k1:
			if _, err := secp256k1.ParsePubKey(out); err != nil || out[0] != 4 {
				t.Fatalf("secp256k1 point %x: %v", out, err)
			}
		case P256:
			if _, err := ecdh.P256().NewPublicKey(out); err != nil || out[0] != 4 {
				t.Fatalf("P-256 point %x: %v", out, err)
			}
		}
		for _, form := range [][]byte{out, wrap(out)} {
			if again, err := decodePoint(alg, form); err != nil || !bytes.Equal(again, out) {
				t.Fatalf("%s: %x decodes as %x (%v)", alg, form, again, err)
			}
		}
		kept := bytes.Clone(out)
		for i := range buf {
			buf[i] ^= 0xff
		}
		if !bytes.Equal(out, kept) {
			t.Fatal("the decoded point aliases the token's buffer")
		}
	})
}

// FuzzNormalizeECDSA: the raw r||s a token's CKM_ECDSA returns, before it
// is verified and assembled. Only 64 bytes with 0 < r, s < n are accepted;
// r is kept; s becomes the low one of s and n-s; normalising twice changes
// nothing.
func FuzzNormalizeECDSA(f *testing.F) {
	// BIP-143's native P2WPKH signature (r, s of the DER form) and EIP-155's.
	f.Add(false, mustHexT(f, "3609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee"))
	f.Add(false, mustHexT(f, "28ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa63627667cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83"))
	high := new(big.Int).Sub(orderP256, big.NewInt(7)).FillBytes(make([]byte, 32))
	f.Add(true, append(bytes.Repeat([]byte{1}, 32), high...))
	f.Add(true, append(orderP256.FillBytes(make([]byte, 32)), high...))
	f.Add(false, make([]byte, 64))
	f.Fuzz(func(t *testing.T, p256 bool, sig []byte) {
		order := orderSecp256k1
		if p256 {
			order = orderP256
		}
		in := bytes.Clone(sig)
		out, err := normalizeECDSA(sig, order)
		if !bytes.Equal(sig, in) {
			t.Fatal("the token's signature was modified in place")
		}
		if err != nil {
			return
		}
		r, s := new(big.Int).SetBytes(in[:32]), new(big.Int).SetBytes(in[32:])
		s2 := new(big.Int).SetBytes(out[32:])
		half := new(big.Int).Rsh(order, 1)
		if len(in) != 64 || len(out) != 64 || r.Sign() <= 0 || r.Cmp(order) >= 0 || s.Sign() <= 0 || s.Cmp(order) >= 0 {
			t.Fatalf("accepted %x", in)
		}
		if !bytes.Equal(out[:32], in[:32]) || s2.Sign() <= 0 || s2.Cmp(half) > 0 ||
			(s2.Cmp(s) != 0 && new(big.Int).Add(s2, s).Cmp(order) != 0) {
			t.Fatalf("%x normalised to %x", in, out)
		}
		if again, err := normalizeECDSA(out, order); err != nil || !bytes.Equal(again, out) {
			t.Fatalf("normalising %x again gives %x (%v)", out, again, err)
		}
	})
}

func mustHexT(tb testing.TB, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
