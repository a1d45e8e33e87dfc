package ethereum

import "math/big"

// Intent kinds.
const (
	KindTransfer         = "transfer"
	KindContractCall     = "contract_call"
	KindContractCreation = "contract_creation"
)

// Intent is the API's JSON view of what the appliance is about to sign.
// Amounts are decimal strings in wei because they exceed JSON's safe
// integer range. Recognising calldata (ERC-20 transfer/approve) is meant to
// refine Kind and add fields here without changing the existing ones.
type Intent struct {
	Kind                 string `json:"kind"` // transfer | contract_call | contract_creation
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
}

// Intent summarises tx for approval and audit.
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
