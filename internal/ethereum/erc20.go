package ethereum

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
)

// ERC-20 methods DecodeERC20 recognises.
const (
	MethodTransfer     = "transfer"
	MethodTransferFrom = "transferFrom"
	MethodApprove      = "approve"
)

// Function selectors: the first 4 bytes of keccak256 of the signature.
const (
	selectorTransfer     uint32 = 0xa9059cbb // transfer(address,uint256)
	selectorTransferFrom uint32 = 0x23b872dd // transferFrom(address,address,uint256)
	selectorApprove      uint32 = 0x095ea7b3 // approve(address,uint256)
)

// TokenCall is a decoded ERC-20 transfer, transferFrom or approve call.
type TokenCall struct {
	Method   string // MethodTransfer | MethodTransferFrom | MethodApprove
	Selector [4]byte
	Token    Address  // the token contract, tx.To; zero from DecodeERC20 alone
	From     *Address // the debited owner, transferFrom only
	To       Address  // recipient (transfer, transferFrom) or spender (approve)
	Amount   *big.Int // token base units, 0 ≤ Amount < 2^256
}

// erc20Shape says how many address words lead a recognised call's
// arguments (the last word is always the uint256 amount).
func erc20Shape(data []byte) (method string, addrWords int, ok bool) {
	if len(data) < 4 {
		return "", 0, false
	}
	switch binary.BigEndian.Uint32(data) {
	case selectorTransfer:
		return MethodTransfer, 1, true
	case selectorTransferFrom:
		return MethodTransferFrom, 2, true
	case selectorApprove:
		return MethodApprove, 1, true
	}
	return "", 0, false
}

// DecodeERC20 recognises exactly the three ABI-encoded calls
// transfer(address,uint256) (a9059cbb), transferFrom(address,address,uint256)
// (23b872dd) and approve(address,uint256) (095ea7b3). It returns (nil, nil)
// for any other calldata, which is a plain contract call, and an error
// wrapping ErrDecode when a recognised selector has malformed arguments.
//
// It is strict where token contracts are not: the length must be exactly
// 4+32n and each address word must carry 12 zero bytes of padding. Older
// Solidity decoders ignore trailing bytes and mask dirty padding, so such
// calldata could still move tokens; callers must therefore refuse a
// recognised call that fails here (decode_failed) rather than sign it as an
// opaque contract call. Destinations covers it meanwhile.
func DecodeERC20(data []byte) (*TokenCall, error) {
	method, addrWords, ok := erc20Shape(data)
	if !ok {
		return nil, nil
	}
	args := data[4:]
	if want := 32 * (addrWords + 1); len(args) != want {
		return nil, fmt.Errorf("%w: ERC-20 %s: %d argument bytes, want %d", ErrDecode, method, len(args), want)
	}
	addrs := make([]Address, addrWords)
	for i := range addrs {
		word := args[32*i : 32*i+32]
		for _, b := range word[:12] {
			if b != 0 {
				return nil, fmt.Errorf("%w: ERC-20 %s: argument %d is not a padded address", ErrDecode, method, i)
			}
		}
		copy(addrs[i][:], word[12:])
	}
	call := &TokenCall{
		Method:   method,
		Selector: [4]byte(data[:4]),
		To:       addrs[addrWords-1],
		Amount:   new(big.Int).SetBytes(args[32*addrWords:]),
	}
	if addrWords == 2 {
		from := addrs[0]
		call.From = &from
	}
	return call, nil
}

// TokenCall decodes tx's calldata as an ERC-20 call to tx.To, setting
// Token. It returns (nil, nil) for contract creation, plain transfers and
// other contract calls, and an error wrapping ErrDecode for a recognised
// selector with malformed arguments, which the signing path should refuse.
func (tx *Tx) TokenCall() (*TokenCall, error) {
	if tx.To == nil {
		return nil, nil
	}
	call, err := DecodeERC20(tx.Data)
	if call != nil {
		call.Token = *tx.To
	}
	return call, err
}

// Destinations returns every address a screening or allowlist check must
// look at, without duplicates: tx.To, and for calldata with an ERC-20
// transfer, transferFrom or approve selector the recipient or spender and
// the transferFrom owner. Contract creation has none.
//
// The calldata addresses are read the way a non-validating token contract
// would read them (low 20 bytes of each word, missing bytes as zero), so
// even calldata DecodeERC20 refuses cannot carry an unscreened recipient.
// For well-formed calls they are exactly DecodeERC20's.
func (tx *Tx) Destinations() []Address {
	if tx.To == nil {
		return nil
	}
	out := []Address{*tx.To}
	_, addrWords, ok := erc20Shape(tx.Data)
	if !ok {
		return out
	}
	for i := range addrWords {
		var word [32]byte
		if start := 4 + 32*i; start < len(tx.Data) {
			copy(word[:], tx.Data[start:]) // EVM CALLDATALOAD zero-fills past the end
		}
		a := Address(word[12:])
		seen := false
		for _, d := range out {
			seen = seen || d == a
		}
		if !seen {
			out = append(out, a)
		}
	}
	return out
}

// kind maps a decoded call to its intent kind.
func (c *TokenCall) kind() string {
	switch c.Method {
	case MethodTransferFrom:
		return KindERC20TransferFrom
	case MethodApprove:
		return KindERC20Approve
	}
	return KindERC20Transfer
}

// intent renders c for the API; addresses in EIP-55, the amount in decimal
// because it can exceed JSON's safe integer range.
func (c *TokenCall) intent() *TokenIntent {
	ti := &TokenIntent{
		Method:   c.Method,
		Contract: c.Token.Hex(),
		To:       c.To.Hex(),
		Amount:   decimal(c.Amount),
		Selector: "0x" + hex.EncodeToString(c.Selector[:]),
	}
	if c.From != nil {
		ti.From = c.From.Hex()
	}
	return ti
}
