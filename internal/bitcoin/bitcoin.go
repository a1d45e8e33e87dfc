// Package bitcoin decodes Bitcoin signing requests into an intent and the
// digests the HSM must sign, and assembles the HSM's signatures back into a
// PSBT and, when possible, a broadcastable transaction.
//
// Everything here is a pure function of its inputs: bytes in, intent and
// digests out. There is no HSM, network or storage access, so every decoder
// can be fuzzed and judged against btcd.
//
// Scope: PSBT v0 (BIP-174) spending native P2WPKH outputs of one secp256k1
// key held in the HSM, signed with BIP-143 ECDSA. Taproot key-path spends are
// refused because they need BIP-340 Schnorr signatures, which PKCS#11 HSMs do
// not produce.
package bitcoin

import (
	"errors"
	"fmt"

	"github.com/btcsuite/btcd/chaincfg"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// these (ErrWrongNetwork is additionally wrapped together with
// ErrAddressInvalid), so callers map them to API codes with errors.Is.
var (
	// ErrDecode means the payload is not a well-formed PSBT v0, or its
	// amounts are out of range or spend more than they consume.
	ErrDecode = errors.New("payload does not decode as a PSBT")
	// ErrUnsupported means the PSBT is well formed but uses a form this
	// appliance will not sign (taproot inputs, PSBT v2, non-standard
	// outputs, value sent to OP_RETURN, ...). API code: unsupported.
	ErrUnsupported = errors.New("unsupported bitcoin transaction form")
	// ErrMissingUTXO means an input lacks the previous output data needed to
	// know what it spends. API: 422.
	ErrMissingUTXO = errors.New("input lacks its previous output")
	// ErrUTXOMismatch means an input's witness UTXO disagrees with the full
	// previous transaction, or that transaction is not the one the input
	// spends: the classic fee lie. API: 422.
	ErrUTXOMismatch = errors.New("input's previous output does not match its previous transaction")
	// ErrNotOurs means no input of the PSBT is spendable by the signing key.
	ErrNotOurs = errors.New("input is not spendable by this key")
	// ErrSighash means an input of ours asks for a sighash type the policy
	// does not allow.
	ErrSighash = errors.New("sighash type not allowed")
	// ErrAddressInvalid means an address string fails format, checksum or
	// network validation (API code address_invalid).
	ErrAddressInvalid = errors.New("invalid bitcoin address")
	// ErrWrongNetwork means an address is valid, but for another network.
	// It is always reported together with ErrAddressInvalid.
	ErrWrongNetwork = errors.New("address belongs to another network")
	// ErrUnknownNetwork means a Network name is not one of the known ones.
	ErrUnknownNetwork = errors.New("unknown bitcoin network")
	// ErrPublicKeyInvalid means the signing key is not a 65-byte uncompressed
	// SEC1 secp256k1 point.
	ErrPublicKeyInvalid = errors.New("invalid secp256k1 public key")
	// ErrSignature means the signatures handed to Finish are malformed, are
	// not as many as the digests, or do not verify against the key.
	ErrSignature = errors.New("invalid signature from signer")
	// ErrSignatureInvalid is wrapped, with ErrSignature, when a signature
	// handed to Finish is itself bad (not r||s, r or s out of range, or not
	// verifying against the key): the signer misbehaved, as opposed to a
	// miscount by the caller or a transaction the script engine refuses.
	ErrSignatureInvalid = errors.New("the signature is malformed or does not verify against the key")
)

// Network names a Bitcoin network as the API spells it.
type Network string

// Networks the appliance knows. Testnet4 shares every address prefix with
// testnet3, so both map to the same address parameters.
const (
	Mainnet  Network = "mainnet"
	Testnet  Network = "testnet"
	Testnet4 Network = "testnet4"
	Signet   Network = "signet"
	Regtest  Network = "regtest"
)

// Params returns btcd's chain parameters for n. Only the address prefixes
// (base58 version bytes and the bech32 HRP) are used by this package; the
// returned value is btcd's shared instance and must not be modified.
func Params(n Network) (*chaincfg.Params, error) {
	switch n {
	case Mainnet:
		return &chaincfg.MainNetParams, nil
	case Testnet, Testnet4:
		return &chaincfg.TestNet3Params, nil
	case Signet:
		return &chaincfg.SigNetParams, nil
	case Regtest:
		return &chaincfg.RegressionNetParams, nil
	default:
		return nil, fmt.Errorf("%w: %q (want mainnet, testnet, testnet4, signet or regtest)", ErrUnknownNetwork, string(n))
	}
}

// allParams lists each distinct prefix set once, so a wrong-network address
// can be recognised as such instead of as garbage.
func allParams() []*chaincfg.Params {
	return []*chaincfg.Params{&chaincfg.MainNetParams, &chaincfg.TestNet3Params, &chaincfg.RegressionNetParams}
}
