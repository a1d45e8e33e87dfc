package app

import (
	"context"
	"encoding/hex"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient/simulated"
	"github.com/ethereum/go-ethereum/rlp"
)

// devChainID is the chain id of the harness's eth-dev key and of go-ethereum's
// simulated backend.
const devChainID = 1337

var gwei = big.NewInt(1_000_000_000)

// unsignedTx is an unsigned Ethereum transaction as an upstream builder
// would describe it. payload encodes it with go-ethereum's rlp package, in
// the form POST /v1/sign takes, independently of the appliance's encoder.
type unsignedTx struct {
	typ        uint8 // types.LegacyTxType (EIP-155), types.AccessListTxType, types.DynamicFeeTxType
	nonce      uint64
	gasPrice   *big.Int // legacy and type 1
	tip        *big.Int // type 2: maxPriorityFeePerGas
	maxFee     *big.Int // type 2: maxFeePerGas
	gas        uint64
	to         *common.Address // nil: contract creation
	value      *big.Int
	data       []byte
	accessList types.AccessList // types 1 and 2
}

func (u unsignedTx) payload(t testing.TB) string {
	t.Helper()
	var to any = []byte{} // contract creation: the empty string
	if u.to != nil {
		to = *u.to
	}
	data := u.data
	if data == nil {
		data = []byte{}
	}
	al := u.accessList
	if al == nil {
		al = types.AccessList{}
	}
	chainID := big.NewInt(devChainID)
	var fields []any
	var prefix []byte
	switch u.typ {
	case types.LegacyTxType:
		// EIP-155: the chain id and two zeros stand where v, r, s go.
		fields = []any{u.nonce, u.gasPrice, u.gas, to, u.value, data, chainID, uint(0), uint(0)}
	case types.AccessListTxType:
		prefix = []byte{types.AccessListTxType}
		fields = []any{chainID, u.nonce, u.gasPrice, u.gas, to, u.value, data, al}
	case types.DynamicFeeTxType:
		prefix = []byte{types.DynamicFeeTxType}
		fields = []any{chainID, u.nonce, u.tip, u.maxFee, u.gas, to, u.value, data, al}
	default:
		t.Fatalf("unsignedTx: type %d", u.typ)
	}
	b, err := rlp.EncodeToBytes(fields)
	if err != nil {
		t.Fatal(err)
	}
	return "0x" + hex.EncodeToString(append(prefix, b...))
}

// signViaAppliance signs payload through POST /v1/sign and returns the
// signed transaction as go-ethereum decodes it, with the answer. It checks
// what holds for every signed answer: state, tx_hash as go-ethereum
// computes it, and the signature recovering to from on chain 1337.
func signViaAppliance(t *testing.T, e *env, c *http.Client, from common.Address, payload, idem string) (*types.Transaction, map[string]any) {
	t.Helper()
	a := e.must(c, "POST", "/v1/sign", signBody(payload, idem))
	if a.status != http.StatusOK {
		t.Fatalf("sign %s: %d %s", idem, a.status, a.body)
	}
	m := a.json(t)
	if m["state"] != "signed" {
		t.Fatalf("sign %s: answer %s", idem, a.body)
	}
	signed, _ := m["signed_tx"].(string)
	raw, err := hex.DecodeString(strings.TrimPrefix(signed, "0x"))
	if err != nil || !strings.HasPrefix(signed, "0x") {
		t.Fatalf("sign %s: signed_tx %q: %v", idem, signed, err)
	}
	tx := new(types.Transaction)
	if err := tx.UnmarshalBinary(raw); err != nil {
		t.Fatalf("sign %s: go-ethereum refuses the signed tx: %v", idem, err)
	}
	if tx.Hash().Hex() != m["tx_hash"] {
		t.Fatalf("sign %s: tx_hash %v, go-ethereum computes %s", idem, m["tx_hash"], tx.Hash().Hex())
	}
	sender, err := types.Sender(types.LatestSignerForChainID(big.NewInt(devChainID)), tx)
	if err != nil || sender != from {
		t.Fatalf("sign %s: sender %s (%v), want the key's address %s", idem, sender, err, from)
	}
	return tx, m
}

// sameAccessList compares access lists by content (nil and empty key
// lists are the same list on the wire).
func sameAccessList(a, b types.AccessList) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Address != b[i].Address || len(a[i].StorageKeys) != len(b[i].StorageKeys) {
			return false
		}
		for j := range a[i].StorageKeys {
			if a[i].StorageKeys[j] != b[i].StorageKeys[j] {
				return false
			}
		}
	}
	return true
}

// TestEachTransactionTypeAcceptedByGoEthereum: an EIP-1559 transaction with
// an access list, an EIP-2930 one and a legacy EIP-155 one, each encoded by
// go-ethereum's rlp and signed through the real endpoint, decode in
// go-ethereum with every field intact, recover to the key, hash to the
// answer's tx_hash, and are all mined, in one block, by a simulated chain.
func TestEachTransactionTypeAcceptedByGoEthereum(t *testing.T) {
	e := newEnv(t)
	e.start()
	from := keyAddress(t, e)
	c := e.client("client")
	tenGwei := new(big.Int).Mul(big.NewInt(10), gwei)
	addr := func(s string) *common.Address { a := common.HexToAddress(s); return &a }

	cases := []struct {
		name string
		tx   unsignedTx
	}{
		{"eip1559", unsignedTx{typ: types.DynamicFeeTxType, nonce: 0, tip: gwei, maxFee: tenGwei, gas: 60_000,
			to: addr("0x00000000000000000000000000000000000000d2"), value: big.NewInt(2_000_000_000_002),
			accessList: types.AccessList{
				{Address: common.HexToAddress("0x00000000000000000000000000000000000000e1"),
					StorageKeys: []common.Hash{common.BigToHash(big.NewInt(1)), common.HexToHash("0xff00000000000000000000000000000000000000000000000000000000000001")}},
				{Address: common.HexToAddress("0x00000000000000000000000000000000000000e2")},
			}}},
		// An access-list entry without storage keys: an empty inner list.
		{"eip2930", unsignedTx{typ: types.AccessListTxType, nonce: 1, gasPrice: tenGwei, gas: 30_000,
			to: addr("0x00000000000000000000000000000000000000d1"), value: big.NewInt(1_000_000_000_001),
			accessList: types.AccessList{{Address: common.HexToAddress("0x00000000000000000000000000000000000000e3")}}}},
		{"legacy", unsignedTx{typ: types.LegacyTxType, nonce: 2, gasPrice: tenGwei, gas: 21_000,
			to: addr("0x00000000000000000000000000000000000000d0"), value: big.NewInt(3_000_000_000_003)}},
	}
	signed := make([]*types.Transaction, len(cases))
	for i, tc := range cases {
		tx, _ := signViaAppliance(t, e, c, from, tc.tx.payload(t), "types-"+tc.name)
		u := tc.tx
		if tx.Type() != u.typ {
			t.Fatalf("%s: type %d, want %d", tc.name, tx.Type(), u.typ)
		}
		if tx.ChainId().Int64() != devChainID || tx.Nonce() != u.nonce || tx.Gas() != u.gas ||
			tx.To() == nil || *tx.To() != *u.to || tx.Value().Cmp(u.value) != 0 || len(tx.Data()) != 0 {
			t.Fatalf("%s: fields changed: chain %v nonce %d gas %d to %v value %v data %x",
				tc.name, tx.ChainId(), tx.Nonce(), tx.Gas(), tx.To(), tx.Value(), tx.Data())
		}
		if !sameAccessList(tx.AccessList(), u.accessList) {
			t.Fatalf("%s: access list %+v, want %+v", tc.name, tx.AccessList(), u.accessList)
		}
		v, r, s := tx.RawSignatureValues()
		if r.Sign() == 0 || s.Sign() == 0 || s.Cmp(new(big.Int).Rsh(crypto.S256().Params().N, 1)) > 0 {
			t.Fatalf("%s: r %v s %v: not a low-S signature", tc.name, r, s)
		}
		switch u.typ {
		case types.DynamicFeeTxType:
			if tx.GasTipCap().Cmp(u.tip) != 0 || tx.GasFeeCap().Cmp(u.maxFee) != 0 {
				t.Fatalf("%s: tip %v maxFee %v", tc.name, tx.GasTipCap(), tx.GasFeeCap())
			}
		default:
			if tx.GasPrice().Cmp(u.gasPrice) != 0 {
				t.Fatalf("%s: gas price %v", tc.name, tx.GasPrice())
			}
		}
		switch u.typ {
		case types.LegacyTxType:
			// EIP-155: v = 2·chainId + 35 + parity.
			base := int64(2*devChainID + 35)
			if !v.IsInt64() || (v.Int64() != base && v.Int64() != base+1) {
				t.Fatalf("legacy: v = %v, want %d or %d", v, base, base+1)
			}
			if !tx.Protected() {
				t.Fatal("legacy: go-ethereum sees no EIP-155 replay protection")
			}
		default:
			// Typed transactions carry the y-parity itself.
			if v.Sign() < 0 || v.Cmp(big.NewInt(1)) > 0 {
				t.Fatalf("%s: y-parity %v", tc.name, v)
			}
		}
		signed[i] = tx
	}

	balance := new(big.Int).Exp(big.NewInt(10), big.NewInt(20), nil)
	backend := simulated.NewBackend(types.GenesisAlloc{from: {Balance: balance}})
	defer backend.Close()
	client := backend.Client()
	ctx := context.Background()
	for i, tx := range signed {
		if err := client.SendTransaction(ctx, tx); err != nil {
			t.Fatalf("%s: simulated chain refuses the transaction: %v", cases[i].name, err)
		}
	}
	// The pool promotes transactions asynchronously: mine only once all
	// three are pending, or the block may miss the last one.
	waitFor(t, 5*time.Second, "all transactions pending", func() bool {
		n, err := client.PendingNonceAt(ctx, from)
		return err == nil && n == uint64(len(signed))
	})
	backend.Commit()
	var block *big.Int
	for i, tx := range signed {
		receipt, err := client.TransactionReceipt(ctx, tx.Hash())
		if err != nil || receipt.Status != types.ReceiptStatusSuccessful {
			t.Fatalf("%s: receipt %+v %v", cases[i].name, receipt, err)
		}
		if receipt.Type != cases[i].tx.typ {
			t.Fatalf("%s: receipt type %d", cases[i].name, receipt.Type)
		}
		if block == nil {
			block = receipt.BlockNumber
		} else if receipt.BlockNumber.Cmp(block) != 0 {
			t.Fatalf("%s: mined in block %v, the others in %v", cases[i].name, receipt.BlockNumber, block)
		}
		got, err := client.BalanceAt(ctx, *tx.To(), nil)
		if err != nil || got.Cmp(cases[i].tx.value) != 0 {
			t.Fatalf("%s: recipient balance %v (%v), want %v", cases[i].name, got, err, cases[i].tx.value)
		}
	}
	if n, err := client.NonceAt(ctx, from, nil); err != nil || n != 3 {
		t.Fatalf("sender nonce %d (%v), want 3", n, err)
	}
}

// erc20Selector is the 4-byte selector of an ABI function signature.
func erc20Selector(signature string) []byte { return crypto.Keccak256([]byte(signature))[:4] }

// abiWord left-pads b to one 32-byte ABI word.
func abiWord(b []byte) []byte { return common.LeftPadBytes(b, 32) }

// erc20TransferData is transfer(to, amount) calldata, packed by hand.
func erc20TransferData(to common.Address, amount *big.Int) []byte {
	data := append([]byte{}, erc20Selector("transfer(address,uint256)")...)
	data = append(data, abiWord(to.Bytes())...)
	return append(data, abiWord(amount.Bytes())...)
}

// TestContractCallsRefusedByDefault: calldata that is not a well-formed
// ERC-20 transfer, transferFrom or approve is not signed. An unknown
// selector and a contract creation are refused by policy; an ERC-20
// transfer whose address word has dirty padding (which a token contract
// might mask and execute) is refused as undecodable rather than signed as
// an opaque call. The well-formed ERC-20 calls, same target, are signed.
func TestContractCallsRefusedByDefault(t *testing.T) {
	e := newEnv(t)
	e.start()
	from := keyAddress(t, e)
	c := e.client("client")
	contract := common.HexToAddress("0x00000000000000000000000000000000000c0de1")
	spender := common.HexToAddress("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
	amount := big.NewInt(1_000_000)
	tx := func(nonce uint64, to *common.Address, data []byte) string {
		return unsignedTx{typ: types.DynamicFeeTxType, nonce: nonce, tip: gwei, maxFee: new(big.Int).Mul(big.NewInt(10), gwei),
			gas: 200_000, to: to, value: new(big.Int), data: data}.payload(t)
	}
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}

	dirty := abiWord(spender.Bytes())
	dirty[0] = 0x01 // the low 20 bytes are still the address
	refused := []struct {
		name    string
		payload string
		status  int
		code    string
	}{
		{"unknown selector", tx(0, &contract, cat([]byte{0xde, 0xad, 0xbe, 0xef}, abiWord([]byte{1}))), http.StatusForbidden, "policy_denied"},
		// Init code that would deploy an empty contract.
		{"contract creation", tx(1, nil, []byte{0x60, 0x00, 0x60, 0x00, 0xf3}), http.StatusForbidden, "policy_denied"},
		{"erc20 transfer, dirty address padding", tx(2, &contract, cat(erc20Selector("transfer(address,uint256)"), dirty, abiWord(amount.Bytes()))),
			http.StatusUnprocessableEntity, "decode_failed"},
	}
	for _, r := range refused {
		a := e.must(c, "POST", "/v1/sign", signBody(r.payload, "refuse-"+r.name))
		if a.status != r.status || a.code(t) != r.code {
			t.Errorf("%s: %d %s, want %d %s", r.name, a.status, a.body, r.status, r.code)
		}
		if strings.Contains(string(a.body), "signed_tx") {
			t.Errorf("%s: a refusal carries a signed transaction: %s", r.name, a.body)
		}
	}

	// Controls: the same contract, well-formed ERC-20 calls, are signed.
	signed := []struct {
		name string
		data []byte
	}{
		{"transfer", erc20TransferData(spender, amount)},
		{"approve", cat(erc20Selector("approve(address,uint256)"), abiWord(spender.Bytes()), abiWord(amount.Bytes()))},
		{"transferFrom", cat(erc20Selector("transferFrom(address,address,uint256)"), abiWord(from.Bytes()), abiWord(spender.Bytes()), abiWord(amount.Bytes()))},
	}
	for i, s := range signed {
		got, _ := signViaAppliance(t, e, c, from, tx(uint64(10+i), &contract, s.data), "erc20-"+s.name)
		if *got.To() != contract || string(got.Data()) != string(s.data) {
			t.Fatalf("%s: signed to %v data %x", s.name, got.To(), got.Data())
		}
	}
}
