package hsm

import (
	"bytes"
	"crypto/ecdh"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/miekg/pkcs11"
)

// Algorithm names a key type and the signature scheme used with it.
type Algorithm string

// Supported algorithms.
const (
	Secp256k1 Algorithm = "secp256k1"
	P256      Algorithm = "p256"
	Ed25519   Algorithm = "ed25519"
)

// PKCS#11 3.0 EdDSA constants that miekg/pkcs11 v1.1.2 does not define.
const (
	CKK_EC_EDWARDS              = 0x40   //nolint:revive // PKCS#11 spelling
	CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055 //nolint:revive // PKCS#11 spelling
	CKM_EDDSA                   = 0x1057 //nolint:revive // PKCS#11 spelling
)

// Curve OIDs, carried in CKA_EC_PARAMS as DER.
var (
	oidSecp256k1 = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
	oidP256      = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidEd25519   = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// Group orders, for low-S normalisation.
var (
	orderSecp256k1, _ = new(big.Int).SetString("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141", 16)
	orderP256, _      = new(big.Int).SetString("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551", 16)
)

// algSpec is everything the package needs to know about one Algorithm.
type algSpec struct {
	keyType   uint
	genMech   uint
	signMech  uint
	params    []byte   // DER CKA_EC_PARAMS used at generation
	altParams [][]byte // other encodings a token may store for the same curve
	order     *big.Int // nil for EdDSA: no low-S rule
	pubLen    int      // length of the public key as returned to callers
}

func mustDER(oid asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(oid)
	if err != nil {
		panic(err) // constant input: cannot happen
	}
	return b
}

func mustPrintable(name string) []byte {
	b, err := asn1.MarshalWithParams(name, "printable")
	if err != nil {
		panic(err) // constant input: cannot happen
	}
	return b
}

var algSpecs = map[Algorithm]algSpec{
	Secp256k1: {pkcs11.CKK_EC, pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKM_ECDSA, mustDER(oidSecp256k1), nil, orderSecp256k1, 65},
	P256:      {pkcs11.CKK_EC, pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKM_ECDSA, mustDER(oidP256), nil, orderP256, 65},
	// SoftHSM 2.6 stores the private half's CKA_EC_PARAMS as the PrintableString
	// "edwards25519" even when the OID form was supplied at generation.
	Ed25519: {CKK_EC_EDWARDS, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA, mustDER(oidEd25519), [][]byte{mustPrintable("edwards25519")}, nil, 32},
}

func specFor(alg Algorithm) (algSpec, error) {
	s, ok := algSpecs[alg]
	if !ok {
		return algSpec{}, fmt.Errorf("hsm: algorithm %q: %w", alg, ErrInvalidInput)
	}
	return s, nil
}

// decodePoint turns a CKA_EC_POINT value into the caller-facing public key
// (65-byte uncompressed SEC1 for EC, 32 raw bytes for Ed25519) and validates it.
// PKCS#11 says the value is a DER OCTET STRING around the point; some tokens
// return the bare point, so that is accepted when the length leaves no doubt.
func decodePoint(alg Algorithm, v []byte) ([]byte, error) {
	spec, err := specFor(alg)
	if err != nil {
		return nil, err
	}
	point := v
	var inner []byte
	if rest, err := asn1.Unmarshal(v, &inner); err == nil && len(rest) == 0 && len(inner) == spec.pubLen {
		point = inner
	}
	if len(point) != spec.pubLen {
		return nil, fmt.Errorf("hsm: %s public key has %d bytes, want %d", alg, len(point), spec.pubLen)
	}
	switch alg {
	case Secp256k1:
		if _, err := secp256k1.ParsePubKey(point); err != nil || point[0] != 0x04 {
			return nil, fmt.Errorf("hsm: secp256k1 public key is not an uncompressed curve point: %v", err)
		}
	case P256:
		if _, err := ecdh.P256().NewPublicKey(point); err != nil {
			return nil, fmt.Errorf("hsm: p256 public key is not a curve point: %w", err)
		}
	}
	return bytes.Clone(point), nil
}

// normalizeECDSA checks a raw r||s signature from CKM_ECDSA and rewrites s to
// n-s when s > n/2: both curves' signatures are malleable, and Bitcoin and
// Ethereum relay only the low-S form.
func normalizeECDSA(sig []byte, order *big.Int) ([]byte, error) {
	if len(sig) != 64 {
		return nil, fmt.Errorf("hsm: ECDSA signature has %d bytes, want 64", len(sig))
	}
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	if r.Sign() == 0 || s.Sign() == 0 || r.Cmp(order) >= 0 || s.Cmp(order) >= 0 {
		return nil, fmt.Errorf("hsm: ECDSA signature out of range")
	}
	half := new(big.Int).Rsh(order, 1)
	if s.Cmp(half) > 0 {
		s.Sub(order, s)
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}
