package ethereum

import (
	"encoding/hex"
	"math/big"
)

// Intent kinds.
const (
	KindTransfer         = "transfer"
	KindContractCall     = "contract_call"
	KindContractCreation = "contract_creation"
	// ERC-20 calls without native value; see Tx.Intent.
	KindERC20Transfer     = "erc20_transfer"
	KindERC20TransferFrom = "erc20_transfer_from"
	KindERC20Approve      = "erc20_approve"
)

// Intent is the API's JSON view of what the appliance is about to sign.
// Amounts are decimal strings in wei because they exceed JSON's safe
// integer range. Recognising calldata (ERC-20 transfer/approve) is meant to
// refine Kind and add fields here without changing the existing ones.
type Intent struct {
	Kind                 string `json:"kind"` // transfer | contract_call | contract_creation | erc20_*
	ChainID              string `json:"chain_id"`
	Nonce                uint64 `json:"nonce"`
	To                   string `json:"to,omitempty"` // EIP-55
	Value                string `json:"value"`        // wei, decimal
	Gas                  uint64 `json:"gas"`
	MaxFeePerGas         string `json:"max_fee_per_gas,omitempty"`
	MaxPriorityFeePerGas string `json:"max_priority_fee_per_gas,omitempty"`
	GasPrice             string `json:"gas_price,omitempty"`
	DataLen              int    `json:"data_len"`
	Type                 int    `json:"type"`
	// Token is the decoded ERC-20 call, when the calldata is one.
	Token *TokenIntent `json:"token,omitempty"`
	// Selector is the 4-byte function selector ("0x" hex) of a plain
	// contract call, one whose selector is not a recognised ERC-20 call.
	Selector string `json:"selector,omitempty"`
}

// TokenIntent is the API's view of an ERC-20 transfer, transferFrom or
// approve call. Addresses are EIP-55; Amount is in the token's base units,
// decimal (the token's decimals are not known here).
type TokenIntent struct {
	Method   string `json:"method"`         // transfer | transferFrom | approve
	Contract string `json:"contract"`       // the token contract (tx.To)
	From     string `json:"from,omitempty"` // the debited owner, transferFrom only
	To       string `json:"to"`             // recipient, or spender for approve
	Amount   string `json:"amount"`
	Selector string `json:"selector"`
}

// Intent summarises tx for approval and audit. It never fails: calldata
// that is a well-formed ERC-20 transfer, transferFrom or approve adds Token
// and, when no native value rides along, gives the erc20_* kind. A
// recognised call that also sends native value stays contract_call with
// Token set: standard token methods are not payable, so the pair is
// anomalous and policy must weigh both the value and the token amount. A
// recognised selector with malformed arguments is a contract_call without
// Token; the signing path must refuse it (see DecodeERC20).
func (tx *Tx) Intent() Intent {
	in := Intent{
		Kind:    KindTransfer,
		ChainID: decimal(tx.ChainID),
		Nonce:   tx.Nonce,
		Value:   decimal(tx.Value),
		Gas:     tx.Gas,
		DataLen: len(tx.Data),
		Type:    int(tx.Type),
	}
	switch {
	case tx.To == nil:
		in.Kind = KindContractCreation
	case len(tx.Data) > 0:
		in.Kind = KindContractCall
		call, err := tx.TokenCall()
		switch {
		case call != nil:
			in.Token = call.intent()
			if tx.Value == nil || tx.Value.Sign() == 0 {
				in.Kind = call.kind()
			}
		case err == nil && len(tx.Data) >= 4:
			in.Selector = "0x" + hex.EncodeToString(tx.Data[:4])
		}
	}
	if tx.To != nil {
		in.To = tx.To.Hex()
	}
	if tx.Type == TypeDynamicFee {
		in.MaxFeePerGas = decimal(tx.MaxFeePerGas)
		in.MaxPriorityFeePerGas = decimal(tx.MaxPriorityFeePerGas)
	} else {
		in.GasPrice = decimal(tx.GasPrice)
	}
	return in
}

// decimal formats a wei amount; nil (a field the type does not use) is "0".
func decimal(x *big.Int) string {
	if x == nil {
		return "0"
	}
	return x.String()
}
