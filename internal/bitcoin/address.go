package bitcoin

import (
	"errors"
	"fmt"
	"strings"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/base58"
	"github.com/btcsuite/btcd/btcutil/bech32"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/txscript"
)

// Address and output types, as they appear in AddressInfo.Type and
// Output.Type.
const (
	TypeP2PKH          = "p2pkh"
	TypeP2SH           = "p2sh"
	TypeP2WPKH         = "p2wpkh"
	TypeP2WSH          = "p2wsh"
	TypeP2TR           = "p2tr"
	TypeWitnessUnknown = "witness_unknown"
	TypeNullData       = "nulldata"
	TypeNonStandard    = "nonstandard"
)

// maxAddressLen is BIP-173's limit for a bech32 string; base58 addresses
// are shorter.
const maxAddressLen = 90

// AddressInfo is a validated address.
type AddressInfo struct {
	// Normalized is the canonical spelling: bech32 lower-cased, base58 as
	// given (base58 is case-sensitive, so it has only one spelling).
	Normalized string
	// Type is one of the Type* constants except nulldata and nonstandard.
	Type string
	// Script is the scriptPubKey the address pays to.
	Script []byte
}

// ParseAddress validates s as an address of network n: Base58Check P2PKH or
// P2SH with the network's version bytes, or a segwit address per BIP-173 and
// BIP-350 (v0 must use Bech32, v1-v16 Bech32m; all one case; program 2-40
// bytes, 20 or 32 for v0). Upper-case bech32 is accepted and normalised to
// lower case. Witness versions 2-16 are valid addresses and are accepted;
// whether to pay them is a policy decision.
//
// Errors wrap ErrAddressInvalid with the reason; an address that is valid
// for a different network also wraps ErrWrongNetwork.
func ParseAddress(s string, n Network) (AddressInfo, error) {
	params, err := Params(n)
	if err != nil {
		return AddressInfo{}, err
	}
	if s == "" {
		return AddressInfo{}, fmt.Errorf("%w: empty", ErrAddressInvalid)
	}
	// Base58 decoding is quadratic in the length; no address is longer
	// than bech32's 90 characters, so refuse long input before decoding.
	if len(s) > maxAddressLen {
		return AddressInfo{}, fmt.Errorf("%w: %d characters (an address has at most %d)", ErrAddressInvalid, len(s), maxAddressLen)
	}
	// The HRP is everything before the last '1'; the bech32 data charset
	// has no '1', so this also finds "bcrt" correctly.
	if one := strings.LastIndexByte(s, '1'); one > 0 {
		hrp := strings.ToLower(s[:one])
		if hrp == params.Bech32HRPSegwit {
			return parseSegwit(s, params)
		}
		for _, other := range allParams() {
			if hrp == other.Bech32HRPSegwit {
				if _, err := parseSegwit(s, other); err != nil {
					return AddressInfo{}, err
				}
				return AddressInfo{}, fmt.Errorf("%w: %w: %q is a %s segwit address, not %s",
					ErrAddressInvalid, ErrWrongNetwork, s, other.Name, n)
			}
		}
	}
	info, err := parseBase58(s, params)
	if err == nil {
		return info, nil
	}
	// Explain a well-formed bech32 string with a foreign HRP better than
	// "not base58".
	if hrp, _, _, berr := bech32.DecodeGeneric(s); berr == nil {
		return AddressInfo{}, fmt.Errorf("%w: bech32 human-readable part %q is not %q", ErrAddressInvalid, hrp, params.Bech32HRPSegwit)
	}
	return AddressInfo{}, err
}

// parseSegwit decodes a segwit address whose HRP is already known to be
// params' HRP (in either case).
func parseSegwit(s string, params *chaincfg.Params) (AddressInfo, error) {
	_, data, enc, err := bech32.DecodeGeneric(s)
	if errors.As(err, new(bech32.ErrMixedCase)) {
		return AddressInfo{}, fmt.Errorf("%w: mixed case (bech32 must be all lower or all upper case)", ErrAddressInvalid)
	}
	if err != nil {
		return AddressInfo{}, fmt.Errorf("%w: %w", ErrAddressInvalid, err)
	}
	if len(data) < 1 {
		return AddressInfo{}, fmt.Errorf("%w: empty data section", ErrAddressInvalid)
	}
	version := data[0]
	if version > 16 {
		return AddressInfo{}, fmt.Errorf("%w: witness version %d > 16", ErrAddressInvalid, version)
	}
	// BIP-350: the checksum constant is bound to the witness version, so a
	// v1+ address with a Bech32 checksum (or v0 with Bech32m) is refused
	// even though its checksum verifies under the other constant.
	switch {
	case version == 0 && enc != bech32.Version0:
		return AddressInfo{}, fmt.Errorf("%w: witness v0 must use Bech32, not Bech32m (BIP-350)", ErrAddressInvalid)
	case version != 0 && enc != bech32.VersionM:
		return AddressInfo{}, fmt.Errorf("%w: witness v%d must use Bech32m, not Bech32 (BIP-350)", ErrAddressInvalid, version)
	}
	// ConvertBits without padding enforces BIP-173's padding rules: at most
	// 4 leftover bits, all zero.
	program, err := bech32.ConvertBits(data[1:], 5, 8, false)
	if err != nil {
		return AddressInfo{}, fmt.Errorf("%w: %w", ErrAddressInvalid, err)
	}
	if len(program) < 2 || len(program) > 40 {
		return AddressInfo{}, fmt.Errorf("%w: witness program is %d bytes (want 2-40)", ErrAddressInvalid, len(program))
	}
	if version == 0 && len(program) != 20 && len(program) != 32 {
		return AddressInfo{}, fmt.Errorf("%w: witness v0 program is %d bytes (want 20 or 32, BIP-141)", ErrAddressInvalid, len(program))
	}
	script, err := witnessScript(version, program)
	if err != nil {
		return AddressInfo{}, fmt.Errorf("%w: %w", ErrAddressInvalid, err)
	}
	return AddressInfo{Normalized: strings.ToLower(s), Type: witnessType(version, len(program)), Script: script}, nil
}

// parseBase58 decodes a Base58Check P2PKH or P2SH address.
func parseBase58(s string, params *chaincfg.Params) (AddressInfo, error) {
	payload, ver, err := base58.CheckDecode(s)
	switch {
	case errors.Is(err, base58.ErrChecksum):
		return AddressInfo{}, fmt.Errorf("%w: base58 checksum mismatch", ErrAddressInvalid)
	case err != nil:
		return AddressInfo{}, fmt.Errorf("%w: neither bech32 for this network nor base58check", ErrAddressInvalid)
	case len(payload) != 20:
		return AddressInfo{}, fmt.Errorf("%w: base58 payload is %d bytes (want 20)", ErrAddressInvalid, len(payload))
	}
	var b *txscript.ScriptBuilder
	var typ string
	switch ver {
	case params.PubKeyHashAddrID:
		typ = TypeP2PKH
		b = txscript.NewScriptBuilder().AddOp(txscript.OP_DUP).AddOp(txscript.OP_HASH160).
			AddData(payload).AddOp(txscript.OP_EQUALVERIFY).AddOp(txscript.OP_CHECKSIG)
	case params.ScriptHashAddrID:
		typ = TypeP2SH
		b = txscript.NewScriptBuilder().AddOp(txscript.OP_HASH160).AddData(payload).AddOp(txscript.OP_EQUAL)
	default:
		for _, other := range allParams() {
			if ver == other.PubKeyHashAddrID || ver == other.ScriptHashAddrID {
				return AddressInfo{}, fmt.Errorf("%w: %w: base58 version 0x%02x is %s's, not %s's",
					ErrAddressInvalid, ErrWrongNetwork, ver, other.Name, params.Name)
			}
		}
		return AddressInfo{}, fmt.Errorf("%w: unknown base58 version byte 0x%02x", ErrAddressInvalid, ver)
	}
	script, err := b.Script()
	if err != nil {
		return AddressInfo{}, fmt.Errorf("%w: %w", ErrAddressInvalid, err)
	}
	return AddressInfo{Normalized: s, Type: typ, Script: script}, nil
}

// AddressFromScript renders a scriptPubKey as an address of network n and
// names its type. OP_RETURN scripts return type "nulldata" and no address;
// anything else that is not P2PKH, P2SH or a witness program returns type
// "nonstandard", no address and an error wrapping ErrUnsupported, because
// the appliance only pays to things an address can name.
func AddressFromScript(script []byte, n Network) (address, typ string, err error) {
	params, err := Params(n)
	if err != nil {
		return "", "", err
	}
	switch {
	case txscript.IsPayToPubKeyHash(script):
		return base58.CheckEncode(script[3:23], params.PubKeyHashAddrID), TypeP2PKH, nil
	case txscript.IsPayToScriptHash(script):
		return base58.CheckEncode(script[2:22], params.ScriptHashAddrID), TypeP2SH, nil
	case txscript.IsWitnessProgram(script):
		version, program, err := txscript.ExtractWitnessProgramInfo(script)
		if err != nil {
			return "", TypeNonStandard, fmt.Errorf("%w: witness program: %w", ErrUnsupported, err)
		}
		addr, err := encodeSegwit(params.Bech32HRPSegwit, byte(version), program)
		if err != nil {
			return "", TypeNonStandard, fmt.Errorf("%w: witness program: %w", ErrUnsupported, err)
		}
		return addr, witnessType(byte(version), len(program)), nil
	case txscript.IsNullData(script):
		return "", TypeNullData, nil
	default:
		return "", TypeNonStandard, fmt.Errorf("%w: script %x has no address form", ErrUnsupported, script)
	}
}

// encodeSegwit encodes a witness program with the checksum its version
// requires (BIP-350).
func encodeSegwit(hrp string, version byte, program []byte) (string, error) {
	conv, err := bech32.ConvertBits(program, 8, 5, true)
	if err != nil {
		return "", err
	}
	data := append([]byte{version}, conv...)
	if version == 0 {
		return bech32.Encode(hrp, data)
	}
	return bech32.EncodeM(hrp, data)
}

// witnessScript builds OP_version <program>.
func witnessScript(version byte, program []byte) ([]byte, error) {
	op := byte(txscript.OP_0)
	if version > 0 {
		op = txscript.OP_1 + version - 1
	}
	return txscript.NewScriptBuilder().AddOp(op).AddData(program).Script()
}

func witnessType(version byte, programLen int) string {
	switch {
	case version == 0 && programLen == 20:
		return TypeP2WPKH
	case version == 0 && programLen == 32:
		return TypeP2WSH
	case version == 1 && programLen == 32:
		return TypeP2TR
	default:
		return TypeWitnessUnknown
	}
}

// P2WPKHScript returns the P2WPKH scriptPubKey (OP_0 <hash160>) of a 65-byte
// uncompressed SEC1 public key, as the HSM returns it. The hash is taken over
// the COMPRESSED encoding: BIP-143 makes uncompressed keys non-standard in
// segwit, so a hash of the 65-byte form would create unspendable outputs.
func P2WPKHScript(pub65 []byte) ([]byte, error) {
	compressed, err := compressedKey(pub65)
	if err != nil {
		return nil, err
	}
	return witnessScript(0, btcutil.Hash160(compressed))
}

// P2WPKHAddress returns the bech32 P2WPKH address of a 65-byte uncompressed
// SEC1 public key on network n (see P2WPKHScript for why the compressed form
// is hashed).
func P2WPKHAddress(pub65 []byte, n Network) (string, error) {
	params, err := Params(n)
	if err != nil {
		return "", err
	}
	compressed, err := compressedKey(pub65)
	if err != nil {
		return "", err
	}
	return encodeSegwit(params.Bech32HRPSegwit, 0, btcutil.Hash160(compressed))
}

// compressedKey checks that pub65 is an uncompressed point on secp256k1 and
// returns its 33-byte compressed form. Only the uncompressed form is taken
// because that is what the HSM returns; accepting others would hide a
// mis-wired caller.
func compressedKey(pub65 []byte) ([]byte, error) {
	if len(pub65) != 65 || pub65[0] != 0x04 {
		return nil, fmt.Errorf("%w: want 65-byte uncompressed SEC1 (0x04 prefix), got %d bytes", ErrPublicKeyInvalid, len(pub65))
	}
	key, err := btcec.ParsePubKey(pub65)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPublicKeyInvalid, err)
	}
	return key.SerializeCompressed(), nil
}
