package screening

import (
	"crypto/sha256"
	"fmt"
	"strings"
)

// DefaultNormalizers returns syntactic normalisers for the chains this
// package knows, needing no other package of the appliance. The integrator
// may replace them with the chains' full validators; what matters for
// screening is that list entries and destinations go through the same one.
//
//   - ethereum: "0x" and 40 hex digits, in any case, matched lower-cased
//     (EIP-55 case is a checksum, not part of the address).
//   - bitcoin: bech32/bech32m with a bc1, tb1 or bcrt1 prefix, in one case
//     and with a valid checksum, matched lower-cased (BIP-173: the two cases
//     are the same address); base58check P2PKH/P2SH for mainnet or testnet,
//     matched exactly, because in base58 case changes the value.
func DefaultNormalizers() map[Chain]Normalizer {
	return map[Chain]Normalizer{
		Ethereum: NormalizeEthereum,
		Bitcoin:  NormalizeBitcoin,
	}
}

// NormalizeEthereum accepts "0x" followed by 40 hex digits of any case and
// returns the lower-case form. It deliberately does not check EIP-55: a
// list written in the wrong case must still match.
func NormalizeEthereum(addr string) (string, error) {
	if len(addr) != 42 || addr[0] != '0' || addr[1] != 'x' {
		return "", fmt.Errorf("%w: ethereum: want \"0x\" followed by 40 hex digits", ErrAddress)
	}
	for i := 2; i < len(addr); i++ {
		if !isHex(addr[i]) {
			return "", fmt.Errorf("%w: ethereum: non-hex character at offset %d", ErrAddress, i)
		}
	}
	return strings.ToLower(addr), nil
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// NormalizeBitcoin accepts a bech32/bech32m segwit-style address (returned
// lower-cased) or a base58check P2PKH/P2SH address (returned unchanged).
// It does not check witness versions or program lengths; that is the
// address validator's job, and the matching only needs a canonical form.
func NormalizeBitcoin(addr string) (string, error) {
	lower := strings.ToLower(addr)
	for _, hrp := range []string{"bc1", "tb1", "bcrt1"} {
		if strings.HasPrefix(lower, hrp) {
			if err := checkBech32(addr); err != nil {
				return "", err
			}
			return lower, nil
		}
	}
	if err := checkBase58Address(addr); err != nil {
		return "", err
	}
	return addr, nil
}

const bech32Charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

// checkBech32 verifies the BIP-173 shape and the Bech32 or Bech32m (BIP-350)
// checksum, so a typo in a list entry is reported instead of silently
// never matching.
func checkBech32(s string) error {
	if len(s) < 8 || len(s) > 90 {
		return fmt.Errorf("%w: bech32: length %d outside 8..90", ErrAddress, len(s))
	}
	hasLower, hasUpper := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 33 || c > 126 {
			return fmt.Errorf("%w: bech32: character 0x%02x out of range", ErrAddress, c)
		}
		hasLower = hasLower || (c >= 'a' && c <= 'z')
		hasUpper = hasUpper || (c >= 'A' && c <= 'Z')
	}
	if hasLower && hasUpper {
		return fmt.Errorf("%w: bech32: mixed case", ErrAddress)
	}
	s = strings.ToLower(s)
	sep := strings.LastIndexByte(s, '1')
	if sep < 1 || len(s)-sep-1 < 6 {
		return fmt.Errorf("%w: bech32: separator misplaced", ErrAddress)
	}
	hrp, data := s[:sep], s[sep+1:]
	values := make([]byte, 0, 2*len(hrp)+1+len(data))
	for i := 0; i < len(hrp); i++ {
		values = append(values, hrp[i]>>5)
	}
	values = append(values, 0)
	for i := 0; i < len(hrp); i++ {
		values = append(values, hrp[i]&31)
	}
	for i := 0; i < len(data); i++ {
		v := strings.IndexByte(bech32Charset, data[i])
		if v < 0 {
			return fmt.Errorf("%w: bech32: invalid data character %q", ErrAddress, data[i])
		}
		values = append(values, byte(v))
	}
	// 1 is Bech32's constant, 0x2bc830a3 Bech32m's; which one a witness
	// version requires is the validator's concern, not the matcher's.
	if c := bech32Polymod(values); c != 1 && c != 0x2bc830a3 {
		return fmt.Errorf("%w: bech32: checksum mismatch", ErrAddress)
	}
	return nil
}

func bech32Polymod(values []byte) uint32 {
	gen := [5]uint32{0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3}
	chk := uint32(1)
	for _, v := range values {
		top := chk >> 25
		chk = (chk&0x1ffffff)<<5 ^ uint32(v)
		for i := 0; i < 5; i++ {
			if (top>>i)&1 == 1 {
				chk ^= gen[i]
			}
		}
	}
	return chk
}

const base58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

// checkBase58Address requires a base58check string decoding to 25 bytes
// with a Bitcoin P2PKH/P2SH version byte (mainnet 0x00/0x05, testnet
// 0x6f/0xc4) and a valid checksum. The version check is what keeps other
// chains' base58 addresses (Tron's 0x41, "T…") off a Bitcoin list.
func checkBase58Address(s string) error {
	if len(s) < 25 || len(s) > 35 {
		return fmt.Errorf("%w: base58: length %d outside 25..35", ErrAddress, len(s))
	}
	// Big-endian base-256 accumulator; 25 bytes is all a valid address
	// needs, so overflow past that is itself a rejection.
	var buf [25]byte
	for i := 0; i < len(s); i++ {
		carry := strings.IndexByte(base58Alphabet, s[i])
		if carry < 0 {
			return fmt.Errorf("%w: base58: invalid character %q", ErrAddress, s[i])
		}
		for j := len(buf) - 1; j >= 0; j-- {
			carry += 58 * int(buf[j])
			buf[j] = byte(carry)
			carry >>= 8
		}
		if carry != 0 {
			return fmt.Errorf("%w: base58: decodes to more than 25 bytes", ErrAddress)
		}
	}
	// Each leading '1' encodes one leading zero byte; the decoded value
	// must have exactly that many, or the string is not canonical.
	ones := 0
	for ones < len(s) && s[ones] == '1' {
		ones++
	}
	zeros := 0
	for zeros < len(buf) && buf[zeros] == 0 {
		zeros++
	}
	if zeros != ones {
		return fmt.Errorf("%w: base58: not a 25-byte payload", ErrAddress)
	}
	switch buf[0] {
	case 0x00, 0x05, 0x6f, 0xc4:
	default:
		return fmt.Errorf("%w: base58: version byte 0x%02x is not a Bitcoin P2PKH/P2SH version", ErrAddress, buf[0])
	}
	first := sha256.Sum256(buf[:21])
	second := sha256.Sum256(first[:])
	if [4]byte(second[:4]) != [4]byte(buf[21:]) {
		return fmt.Errorf("%w: base58: checksum mismatch", ErrAddress)
	}
	return nil
}
