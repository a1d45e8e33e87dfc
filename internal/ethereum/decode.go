package ethereum

import (
	"errors"
	"fmt"
	"math/big"
)

// Field counts of the unsigned list bodies.
const (
	fieldsDynamicFee = 9
	fieldsAccessList = 8
	fieldsLegacy     = 9 // EIP-155: [..., chainId, 0, 0]
	fieldsPreEIP155  = 6
	fieldsSignature  = 3 // v/yParity, r, s appended by signing
)

// DecodeUnsigned decodes an unsigned transaction payload:
//
//	type 2: 0x02 || rlp([chainId, nonce, maxPriorityFeePerGas, maxFeePerGas, gas, to, value, data, accessList])
//	type 1: 0x01 || rlp([chainId, nonce, gasPrice, gas, to, value, data, accessList])
//	legacy: rlp([nonce, gasPrice, gas, to, value, data, chainId, 0, 0])  (EIP-155 signing form)
//
// Decoding is strict: only canonical RLP, exact field counts, `to` empty or
// 20 bytes, nonce and gas within uint64, other integers within 256 bits,
// and a non-zero chain id. Errors wrap ErrDecode, or ErrUnsupported for
// forms that decode but are not signed here (other type bytes, legacy
// without a chain id, chain id 0).
func DecodeUnsigned(payload []byte) (*Tx, error) {
	if len(payload) == 0 {
		return nil, fmt.Errorf("%w: empty payload", ErrDecode)
	}
	switch t := payload[0]; {
	case t == TypeAccessList || t == TypeDynamicFee:
		return decodeTyped(t, payload[1:])
	case t >= 0xc0:
		return decodeLegacy(payload)
	case t <= 0x7f:
		return nil, fmt.Errorf("%w: transaction type 0x%02x", ErrUnsupported, t)
	default:
		return nil, fmt.Errorf("%w: first byte 0x%02x is neither a transaction type nor an RLP list", ErrDecode, t)
	}
}

func decodeTyped(typ byte, body []byte) (*Tx, error) {
	fields, err := decodeFieldList(body)
	if err != nil {
		return nil, fmt.Errorf("%w: type %d: %w", ErrDecode, typ, err)
	}
	want := fieldsDynamicFee
	if typ == TypeAccessList {
		want = fieldsAccessList
	}
	if err := checkFieldCount(fields, want); err != nil {
		return nil, fmt.Errorf("%w: type %d: %w", ErrDecode, typ, err)
	}

	tx := &Tx{Type: typ}
	d := fieldDecoder{fields: fields}
	tx.ChainID = d.big("chainId")
	tx.Nonce = d.uint64("nonce")
	if typ == TypeDynamicFee {
		tx.MaxPriorityFeePerGas = d.big("maxPriorityFeePerGas")
		tx.MaxFeePerGas = d.big("maxFeePerGas")
	} else {
		tx.GasPrice = d.big("gasPrice")
	}
	tx.Gas = d.uint64("gas")
	tx.To = d.to()
	tx.Value = d.big("value")
	tx.Data = d.bytes("data")
	tx.AccessList = d.accessList()
	if d.err != nil {
		return nil, fmt.Errorf("%w: type %d: %w", ErrDecode, typ, d.err)
	}
	if err := checkChainID(tx.ChainID); err != nil {
		return nil, err
	}
	return tx, nil
}

func decodeLegacy(payload []byte) (*Tx, error) {
	fields, err := decodeFieldList(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: legacy: %w", ErrDecode, err)
	}
	// Signed legacy transactions also have nine fields, so the field count
	// cannot reveal a signature here; the r, s check below does.
	if n := len(fields); n != fieldsPreEIP155 && n != fieldsLegacy {
		return nil, fmt.Errorf("%w: legacy: %d fields, want %d", ErrDecode, n, fieldsLegacy)
	}

	tx := &Tx{Type: TypeLegacy}
	d := fieldDecoder{fields: fields}
	tx.Nonce = d.uint64("nonce")
	tx.GasPrice = d.big("gasPrice")
	tx.Gas = d.uint64("gas")
	tx.To = d.to()
	tx.Value = d.big("value")
	tx.Data = d.bytes("data")
	if len(fields) == fieldsPreEIP155 {
		if d.err != nil {
			return nil, fmt.Errorf("%w: legacy: %w", ErrDecode, d.err)
		}
		// Well formed, but a signature over it would be valid on every chain.
		return nil, fmt.Errorf("%w: legacy transaction without EIP-155 chain id (replayable on every chain)", ErrUnsupported)
	}
	tx.ChainID = d.big("chainId")
	r, s := d.big("r (0 when unsigned)"), d.big("s (0 when unsigned)")
	if d.err != nil {
		return nil, fmt.Errorf("%w: legacy: %w", ErrDecode, d.err)
	}
	// A signed legacy transaction has the same nine fields, with v, r, s in
	// place of chainId, 0, 0: non-zero r or s means a signature is present.
	if r.Sign() != 0 || s.Sign() != 0 {
		return nil, fmt.Errorf("%w: legacy: payload is already signed (r, s are set); submit the unsigned EIP-155 form [..., chainId, 0, 0]", ErrDecode)
	}
	if err := checkChainID(tx.ChainID); err != nil {
		return nil, err
	}
	return tx, nil
}

// decodeFieldList decodes body as one canonical RLP list with no trailing bytes.
func decodeFieldList(body []byte) ([]rlpValue, error) {
	v, err := rlpDecode(body)
	if err != nil {
		return nil, err
	}
	if !v.isList {
		return nil, errors.New("transaction body is an RLP string, want a list")
	}
	return v.list, nil
}

func checkFieldCount(fields []rlpValue, want int) error {
	switch n := len(fields); {
	case n == want:
		return nil
	case n == want+fieldsSignature:
		return fmt.Errorf("payload is already signed (%d fields include v, r, s); submit the unsigned form", n)
	default:
		return fmt.Errorf("%d fields, want %d", n, want)
	}
}

func checkChainID(id *big.Int) error {
	if id.Sign() == 0 {
		return fmt.Errorf("%w: chain id 0 names no network", ErrUnsupported)
	}
	return nil
}

// fieldDecoder reads list fields in order and keeps the first error, so the
// decoders above read as a plain list of fields.
type fieldDecoder struct {
	fields []rlpValue
	i      int
	err    error
}

func (d *fieldDecoder) next(name string) ([]byte, bool) {
	if d.err != nil {
		return nil, false
	}
	f := d.fields[d.i]
	d.i++
	if f.isList {
		d.err = fmt.Errorf("field %s is a list, want a string", name)
		return nil, false
	}
	return f.str, true
}

// integer returns the big-endian bytes of a canonical integer field.
func (d *fieldDecoder) integer(name string, maxLen int) []byte {
	b, ok := d.next(name)
	if !ok {
		return nil
	}
	if len(b) > 0 && b[0] == 0 {
		d.err = fmt.Errorf("field %s: integer has leading zero bytes", name)
		return nil
	}
	if len(b) > maxLen {
		d.err = fmt.Errorf("field %s: integer is %d bytes, limit %d", name, len(b), maxLen)
		return nil
	}
	return b
}

func (d *fieldDecoder) uint64(name string) uint64 {
	var u uint64
	for _, c := range d.integer(name, 8) {
		u = u<<8 | uint64(c)
	}
	return u
}

func (d *fieldDecoder) big(name string) *big.Int {
	return new(big.Int).SetBytes(d.integer(name, 32))
}

func (d *fieldDecoder) bytes(name string) []byte {
	b, _ := d.next(name)
	// Copy so the Tx does not alias (and pin) the caller's payload buffer.
	return append([]byte{}, b...)
}

func (d *fieldDecoder) to() *Address {
	b, ok := d.next("to")
	if !ok || len(b) == 0 {
		return nil
	}
	if len(b) != len(Address{}) {
		d.err = fmt.Errorf("field to is %d bytes, want 0 or 20", len(b))
		return nil
	}
	var a Address
	copy(a[:], b)
	return &a
}

func (d *fieldDecoder) accessList() []AccessTuple {
	if d.err != nil {
		return nil
	}
	f := d.fields[d.i]
	d.i++
	if !f.isList {
		d.err = errors.New("accessList is a string, want a list")
		return nil
	}
	var out []AccessTuple
	for i, t := range f.list {
		if !t.isList || len(t.list) != 2 {
			d.err = fmt.Errorf("accessList[%d] is not a [address, storageKeys] pair", i)
			return nil
		}
		addr, keys := t.list[0], t.list[1]
		if addr.isList || len(addr.str) != 20 {
			d.err = fmt.Errorf("accessList[%d] address is not 20 bytes", i)
			return nil
		}
		if !keys.isList {
			d.err = fmt.Errorf("accessList[%d] storage keys is not a list", i)
			return nil
		}
		tuple := AccessTuple{StorageKeys: make([][32]byte, 0, len(keys.list))}
		copy(tuple.Address[:], addr.str)
		for j, k := range keys.list {
			if k.isList || len(k.str) != 32 {
				d.err = fmt.Errorf("accessList[%d] storage key %d is not 32 bytes", i, j)
				return nil
			}
			tuple.StorageKeys = append(tuple.StorageKeys, [32]byte(k.str))
		}
		out = append(out, tuple)
	}
	return out
}
