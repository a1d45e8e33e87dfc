// Package ethereum decodes unsigned Ethereum transactions submitted for
// signing, computes the digest to sign, and assembles the signed raw
// transaction. Everything here is a pure function of its inputs: every
// payload either decodes to a Tx or yields an error wrapping ErrDecode or
// ErrUnsupported, and nothing panics.
package ethereum

import (
	"errors"
	"math/big"
)

var (
	// ErrDecode means the payload is not a well-formed, canonically encoded
	// unsigned Ethereum transaction (API code decode_failed).
	ErrDecode = errors.New("payload does not decode as an Ethereum transaction")
	// ErrUnsupported means the payload is a transaction form this appliance
	// does not sign, such as blob transactions or pre-EIP-155 legacy
	// transactions (API code unsupported).
	ErrUnsupported = errors.New("unsupported transaction form")
	// ErrEncode means a Tx or Signature cannot be encoded, for example a
	// negative value or a y-parity other than 0 or 1.
	ErrEncode = errors.New("transaction cannot be encoded")
)

// Transaction types (EIP-2718 type bytes; 0 stands for legacy).
const (
	TypeLegacy     byte = 0
	TypeAccessList byte = 1 // EIP-2930
	TypeDynamicFee byte = 2 // EIP-1559
)

// AccessTuple is one EIP-2930 access-list entry.
type AccessTuple struct {
	Address     Address
	StorageKeys [][32]byte
}

// Tx is a decoded unsigned transaction. Which fee fields are set depends on
// Type: GasPrice for types 0 and 1, MaxPriorityFeePerGas and MaxFeePerGas
// for type 2; the others are nil. Integer fields are never negative.
type Tx struct {
	Type                 byte
	ChainID              *big.Int
	Nonce                uint64
	GasPrice             *big.Int // types 0 and 1
	MaxPriorityFeePerGas *big.Int // type 2
	MaxFeePerGas         *big.Int // type 2
	Gas                  uint64
	To                   *Address // nil means contract creation
	Value                *big.Int
	Data                 []byte
	AccessList           []AccessTuple // always nil for legacy
}

// Signature is a secp256k1 signature in Ethereum's (r, s, y-parity) form.
type Signature struct {
	R, S    [32]byte
	YParity byte // 0 or 1
}
