package hsm

import (
	"bytes"
	"encoding/hex"
	"math/big"
	"testing"
)

func TestNormalizeECDSA(t *testing.T) {
	for _, order := range []*big.Int{orderSecp256k1, orderP256} {
		r := big.NewInt(12345)
		high := new(big.Int).Sub(order, big.NewInt(7)) // > n/2
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		high.FillBytes(sig[32:])
		got, err := normalizeECDSA(sig, order)
		if err != nil {
			t.Fatal(err)
		}
		if s := new(big.Int).SetBytes(got[32:]); s.Int64() != 7 || !bytes.Equal(got[:32], sig[:32]) {
			t.Fatalf("high-S not flipped to n-s: %x", got)
		}
		again, err := normalizeECDSA(got, order)
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("low-S signature changed: %x, %v", again, err)
		}
		for _, bad := range [][]byte{sig[:63], make([]byte, 64), append(order.FillBytes(make([]byte, 32)), sig[32:]...)} {
			if _, err := normalizeECDSA(bad, order); err == nil {
				t.Fatalf("accepted malformed signature %x", bad)
			}
		}
	}
}

func TestDecodePoint(t *testing.T) {
	// The secp256k1 generator point, bare and DER-wrapped.
	g, _ := hex.DecodeString("0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8")
	wrapped := append([]byte{0x04, 0x41}, g...)
	for _, in := range [][]byte{g, wrapped} {
		got, err := decodePoint(Secp256k1, in)
		if err != nil || !bytes.Equal(got, g) {
			t.Fatalf("decodePoint(%x) = %x, %v", in, got, err)
		}
	}
	if _, err := decodePoint(P256, wrapped); err == nil {
		t.Fatal("a secp256k1 point was accepted as P-256")
	}
	if _, err := decodePoint(Secp256k1, wrapped[:66]); err == nil {
		t.Fatal("a truncated point was accepted")
	}
	ed := bytes.Repeat([]byte{9}, 32)
	if got, err := decodePoint(Ed25519, append([]byte{0x04, 0x20}, ed...)); err != nil || !bytes.Equal(got, ed) {
		t.Fatalf("Ed25519 unwrap = %x, %v", got, err)
	}
}
