package ethereum

import (
	"fmt"
	"math/big"
)

// Validate reports whether tx can be encoded: a known type, the fee fields
// that type uses, and every integer non-negative and within 256 bits.
// Transactions returned by DecodeUnsigned always validate; the check is for
// Tx values built by hand.
func (tx *Tx) Validate() error {
	if tx.Type > TypeDynamicFee {
		return fmt.Errorf("%w: transaction type %d", ErrEncode, tx.Type)
	}
	type namedInt struct {
		name string
		v    *big.Int
	}
	ints := []namedInt{{"chainId", tx.ChainID}, {"value", tx.Value}}
	if tx.Type == TypeDynamicFee {
		ints = append(ints,
			namedInt{"maxPriorityFeePerGas", tx.MaxPriorityFeePerGas},
			namedInt{"maxFeePerGas", tx.MaxFeePerGas})
	} else {
		ints = append(ints, namedInt{"gasPrice", tx.GasPrice})
	}
	for _, f := range ints {
		if f.v == nil {
			return fmt.Errorf("%w: %s is missing", ErrEncode, f.name)
		}
		if f.v.Sign() < 0 || f.v.BitLen() > 256 {
			return fmt.Errorf("%w: %s is outside [0, 2^256)", ErrEncode, f.name)
		}
	}
	if tx.ChainID.Sign() == 0 {
		return fmt.Errorf("%w: chain id 0", ErrEncode)
	}
	if tx.Type == TypeLegacy && len(tx.AccessList) > 0 {
		return fmt.Errorf("%w: legacy transactions have no access list", ErrEncode)
	}
	return nil
}

// UnsignedPayload returns the canonical unsigned encoding of tx, the exact
// inverse of DecodeUnsigned: for a payload p that decodes,
// DecodeUnsigned(p).UnsignedPayload() equals p byte for byte. It assumes tx
// validates (see Validate); nil integers encode as zero.
func (tx *Tx) UnsignedPayload() []byte {
	fields := tx.unsignedFields()
	if tx.Type == TypeLegacy {
		// EIP-155 signing form: chainId, 0, 0 stand in for v, r, s.
		fields = append(fields, rlpBig(tx.ChainID), rlpUint(0), rlpUint(0))
		return rlpEncode(nil, rlpList(fields...))
	}
	return rlpEncode([]byte{tx.Type}, rlpList(fields...))
}

// SigningHash returns the digest to sign: keccak256 of UnsignedPayload.
func (tx *Tx) SigningHash() [32]byte {
	return keccak256(tx.UnsignedPayload())
}

// Signed returns the signed raw transaction, ready to broadcast, and its
// transaction hash keccak256(raw). Typed transactions are EIP-2718
// envelopes type || rlp([..., yParity, r, s]); legacy transactions are
// rlp([..., v, r, s]) with v = 2*chainId + 35 + yParity (EIP-155).
// The signature itself is not checked against the digest here; the caller
// verifies it (see package secp) before calling Signed.
func (tx *Tx) Signed(sig Signature) (raw []byte, hash [32]byte, err error) {
	if err := tx.Validate(); err != nil {
		return nil, hash, err
	}
	if sig.YParity > 1 {
		return nil, hash, fmt.Errorf("%w: y-parity %d, want 0 or 1", ErrEncode, sig.YParity)
	}
	r := new(big.Int).SetBytes(sig.R[:])
	s := new(big.Int).SetBytes(sig.S[:])
	if r.Sign() == 0 || s.Sign() == 0 {
		return nil, hash, fmt.Errorf("%w: signature r or s is zero", ErrEncode)
	}

	fields := tx.unsignedFields()
	if tx.Type == TypeLegacy {
		v := new(big.Int).Lsh(tx.ChainID, 1)
		v.Add(v, big.NewInt(35+int64(sig.YParity)))
		raw = rlpEncode(nil, rlpList(append(fields, rlpBig(v), rlpBig(r), rlpBig(s))...))
	} else {
		fields = append(fields, rlpUint(uint64(sig.YParity)), rlpBig(r), rlpBig(s))
		raw = rlpEncode([]byte{tx.Type}, rlpList(fields...))
	}
	return raw, keccak256(raw), nil
}

// unsignedFields lists the fields common to the unsigned and signed forms,
// in wire order for tx.Type.
func (tx *Tx) unsignedFields() []rlpValue {
	var to []byte
	if tx.To != nil {
		to = tx.To[:]
	}
	switch tx.Type {
	case TypeLegacy:
		return []rlpValue{
			rlpUint(tx.Nonce), rlpBig(tx.GasPrice), rlpUint(tx.Gas),
			rlpBytes(to), rlpBig(tx.Value), rlpBytes(tx.Data),
		}
	case TypeAccessList:
		return []rlpValue{
			rlpBig(tx.ChainID), rlpUint(tx.Nonce), rlpBig(tx.GasPrice), rlpUint(tx.Gas),
			rlpBytes(to), rlpBig(tx.Value), rlpBytes(tx.Data), encodeAccessList(tx.AccessList),
		}
	default:
		return []rlpValue{
			rlpBig(tx.ChainID), rlpUint(tx.Nonce), rlpBig(tx.MaxPriorityFeePerGas),
			rlpBig(tx.MaxFeePerGas), rlpUint(tx.Gas), rlpBytes(to), rlpBig(tx.Value),
			rlpBytes(tx.Data), encodeAccessList(tx.AccessList),
		}
	}
}

func encodeAccessList(al []AccessTuple) rlpValue {
	tuples := make([]rlpValue, 0, len(al))
	for i := range al {
		keys := make([]rlpValue, 0, len(al[i].StorageKeys))
		for j := range al[i].StorageKeys {
			keys = append(keys, rlpBytes(al[i].StorageKeys[j][:]))
		}
		tuples = append(tuples, rlpList(rlpBytes(al[i].Address[:]), rlpList(keys...)))
	}
	return rlpList(tuples...)
}
