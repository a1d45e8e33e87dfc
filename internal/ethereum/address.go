package ethereum

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"golang.org/x/crypto/sha3"
)

var (
	// ErrAddressInvalid means an address string fails format or EIP-55
	// checksum validation (API code address_invalid).
	ErrAddressInvalid = errors.New("invalid Ethereum address")
	// ErrPublicKeyInvalid means a public key is not a 65-byte uncompressed
	// SEC1 secp256k1 point.
	ErrPublicKeyInvalid = errors.New("invalid secp256k1 public key")
)

// Address is a 20-byte Ethereum account address.
type Address [20]byte

// ParseAddress parses "0x" followed by 40 hex digits. Mixed-case input must
// carry a valid EIP-55 checksum; all-lower and all-upper input carries no
// checksum and is accepted as is (EIP-55 leaves single-case addresses valid).
func ParseAddress(s string) (Address, error) {
	var a Address
	if len(s) != 42 || s[0] != '0' || s[1] != 'x' {
		return a, fmt.Errorf("%w: want \"0x\" followed by 40 hex digits", ErrAddressInvalid)
	}
	body := s[2:]
	if _, err := hex.Decode(a[:], []byte(body)); err != nil {
		return Address{}, fmt.Errorf("%w: %w", ErrAddressInvalid, err)
	}
	hasLower, hasUpper := false, false
	for i := 0; i < len(body); i++ {
		switch c := body[i]; {
		case c >= 'a' && c <= 'f':
			hasLower = true
		case c >= 'A' && c <= 'F':
			hasUpper = true
		}
	}
	if hasLower && hasUpper && a.Hex()[2:] != body {
		return Address{}, fmt.Errorf("%w: mixed-case address fails its EIP-55 checksum", ErrAddressInvalid)
	}
	return a, nil
}

// Hex returns the EIP-55 checksummed form, "0x" followed by 40 hex digits.
func (a Address) Hex() string {
	var lower [40]byte
	hex.Encode(lower[:], a[:])
	h := keccak256(lower[:])
	out := make([]byte, 2, 42)
	out[0], out[1] = '0', 'x'
	for i, c := range lower {
		// Each hex letter is upper-cased when the matching nibble of
		// keccak256(lowercase hex) is >= 8.
		nibble := h[i/2] >> 4
		if i%2 == 1 {
			nibble = h[i/2] & 0x0f
		}
		if c >= 'a' && nibble >= 8 {
			c -= 'a' - 'A'
		}
		out = append(out, c)
	}
	return string(out)
}

// String returns the EIP-55 form, so addresses print readably.
func (a Address) String() string { return a.Hex() }

// AddressFromPublicKey derives the address of a 65-byte uncompressed SEC1
// public key (0x04 || X || Y): the last 20 bytes of keccak256(X || Y).
// The point is checked to be on the curve, so a corrupted key read back
// from the HSM cannot silently become a valid-looking address.
func AddressFromPublicKey(pub []byte) (Address, error) {
	if len(pub) != 65 || pub[0] != 0x04 {
		return Address{}, fmt.Errorf("%w: want 65-byte uncompressed SEC1 (0x04 prefix), got %d bytes", ErrPublicKeyInvalid, len(pub))
	}
	if _, err := secp256k1.ParsePubKey(pub); err != nil {
		return Address{}, fmt.Errorf("%w: %w", ErrPublicKeyInvalid, err)
	}
	var a Address
	h := keccak256(pub[1:])
	copy(a[:], h[12:])
	return a, nil
}

// keccak256 is Ethereum's hash: the original Keccak padding, not SHA3-256.
func keccak256(b ...[]byte) [32]byte {
	d := sha3.NewLegacyKeccak256()
	for _, p := range b {
		d.Write(p)
	}
	var out [32]byte
	d.Sum(out[:0])
	return out
}
