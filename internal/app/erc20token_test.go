package app

import (
	"bytes"
	"context"
	"math/big"
	"net/http"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/core/vm"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient/simulated"
)

// evmAsm is a tiny EVM assembler: opcodes, PUSHn immediates, and labels
// (a label is a JUMPDEST; pushLabel pushes its offset with PUSH1).
type evmAsm struct {
	code   []byte
	labels map[string]int
	refs   map[int]string // offset of a PUSH1 immediate → the label it names
}

func (a *evmAsm) op(ops ...vm.OpCode) {
	for _, o := range ops {
		a.code = append(a.code, byte(o))
	}
}

// push emits PUSHn with n = len(imm).
func (a *evmAsm) push(imm ...byte) {
	if len(imm) == 0 || len(imm) > 32 {
		panic("evmAsm: push of 1..32 bytes")
	}
	a.code = append(a.code, byte(vm.PUSH1)+byte(len(imm)-1))
	a.code = append(a.code, imm...)
}

func (a *evmAsm) label(name string) {
	if a.labels == nil {
		a.labels = map[string]int{}
	}
	if _, dup := a.labels[name]; dup {
		panic("evmAsm: label " + name + " defined twice")
	}
	a.labels[name] = len(a.code)
	a.op(vm.JUMPDEST)
}

func (a *evmAsm) pushLabel(name string) {
	if a.refs == nil {
		a.refs = map[int]string{}
	}
	a.code = append(a.code, byte(vm.PUSH1), 0)
	a.refs[len(a.code)-1] = name
}

func (a *evmAsm) assemble() []byte {
	out := append([]byte{}, a.code...)
	for at, name := range a.refs {
		dest, ok := a.labels[name]
		if !ok || dest > 0xff {
			panic("evmAsm: label " + name + " undefined or beyond PUSH1")
		}
		out[at] = byte(dest)
	}
	return out
}

// tokenRuntime is the runtime bytecode of a minimal ERC-20-like token, with
// balances where Solidity keeps `mapping(address => uint256)` declared
// first: balance[a] at keccak256(pad32(a) ‖ pad32(0)).
//
//	balanceOf(address) 0x70a08231 → uint256 balance
//	transfer(address,uint256) 0xa9059cbb → true; reverts when
//	    balance[caller] < amount
//	anything else, native value, or an address argument whose 12
//	padding bytes are not zero (as Solidity ≥ 0.8 does) → revert
//
// Memory [0,32) holds the address being looked up, [32,64) stays zero (the
// mapping's slot number 0), so keccak256(mem[0,64)) is the balance slot.
// No Transfer event, no total supply, no allowances: only what the tests
// observe. The balance addition cannot overflow in these tests (the total
// supply is seeded below 2^256).
func tokenRuntime() []byte {
	var a evmAsm
	// slotOf: [addr] → [keccak256(pad32(addr) ‖ pad32(0))]
	slotOf := func() {
		a.push(0x00)
		a.op(vm.MSTORE) // mem[0:32] = addr
		a.push(0x40)
		a.push(0x00)
		a.op(vm.KECCAK256) // keccak256(mem[0:64])
	}
	// addrArg: [] → [calldata word at off], reverting on dirty padding.
	addrArg := func(off byte) {
		a.push(off)
		a.op(vm.CALLDATALOAD, vm.DUP1) // [w, w]
		a.push(0xa0)
		a.op(vm.SHR) // [w, w>>160]
		a.pushLabel("revert")
		a.op(vm.JUMPI) // [w]
	}
	returnWord := func() { // [x] → return pad32(x)
		a.push(0x00)
		a.op(vm.MSTORE)
		a.push(0x20)
		a.push(0x00)
		a.op(vm.RETURN)
	}

	// Not payable.
	a.op(vm.CALLVALUE)
	a.pushLabel("revert")
	a.op(vm.JUMPI)
	// Dispatch on the selector (CALLDATALOAD zero-fills short calldata).
	a.push(0x00)
	a.op(vm.CALLDATALOAD)
	a.push(0xe0)
	a.op(vm.SHR, vm.DUP1) // [sel, sel]
	a.push(0x70, 0xa0, 0x82, 0x31)
	a.op(vm.EQ)
	a.pushLabel("balanceOf")
	a.op(vm.JUMPI) // [sel]
	a.push(0xa9, 0x05, 0x9c, 0xbb)
	a.op(vm.EQ)
	a.pushLabel("transfer")
	a.op(vm.JUMPI)    // []
	a.label("revert") // falls through from the dispatch
	a.push(0x00)
	a.op(vm.DUP1, vm.REVERT) // revert(0, 0)

	a.label("balanceOf") // [sel]
	addrArg(0x04)        // [sel, owner]
	slotOf()             // [sel, slot]
	a.op(vm.SLOAD)       // [sel, balance]
	returnWord()

	a.label("transfer") // []
	a.op(vm.CALLER)
	slotOf()                  // [sFrom]
	a.op(vm.DUP1, vm.SLOAD)   // [sFrom, bal]
	a.push(0x24)              //
	a.op(vm.CALLDATALOAD)     // [sFrom, bal, amt]
	a.op(vm.DUP1, vm.DUP3)    // [sFrom, bal, amt, amt, bal]
	a.op(vm.LT)               // [sFrom, bal, amt, bal<amt]
	a.pushLabel("revert")     //
	a.op(vm.JUMPI)            // [sFrom, bal, amt]
	a.op(vm.SWAP1, vm.SUB)    // [sFrom, bal-amt]
	a.op(vm.SWAP1, vm.SSTORE) // balance[caller] = bal-amt; []
	addrArg(0x04)             // [to]
	slotOf()                  // [sTo]
	a.op(vm.DUP1, vm.SLOAD)   // [sTo, balTo]
	a.push(0x24)              //
	a.op(vm.CALLDATALOAD)     // [sTo, balTo, amt]
	a.op(vm.ADD)              // [sTo, balTo+amt]
	a.op(vm.SWAP1, vm.SSTORE) // balance[to] += amt (after the debit: a self-transfer is a no-op); []
	a.push(0x01)
	returnWord() // true
	return a.assemble()
}

// tokenBalanceSlot is where tokenRuntime (and Solidity, for a mapping at
// slot 0) keeps holder's balance.
func tokenBalanceSlot(holder common.Address) common.Hash {
	return common.BytesToHash(crypto.Keccak256(abiWord(holder.Bytes()), abiWord(nil)))
}

// tokenAccount is a genesis account holding the token, with seeded balances.
func tokenAccount(balances map[common.Address]*big.Int) types.Account {
	storage := map[common.Hash]common.Hash{}
	for holder, b := range balances {
		storage[tokenBalanceSlot(holder)] = common.BigToHash(b)
	}
	return types.Account{Code: tokenRuntime(), Storage: storage, Balance: new(big.Int), Nonce: 1}
}

func tokenBalanceOf(t *testing.T, client simulated.Client, token, holder common.Address) *big.Int {
	t.Helper()
	data := append(erc20Selector("balanceOf(address)"), abiWord(holder.Bytes())...)
	out, err := client.CallContract(context.Background(), ethereum.CallMsg{To: &token, Data: data}, nil)
	if err != nil || len(out) != 32 {
		t.Fatalf("balanceOf(%s): %x %v", holder, out, err)
	}
	return new(big.Int).SetBytes(out)
}

// waitPending waits until the pool has promoted tx: go-ethereum's pool does
// it asynchronously, and a block mined before that would miss it.
func waitPending(t *testing.T, client simulated.Client, tx *types.Transaction) {
	t.Helper()
	from, err := types.Sender(types.LatestSignerForChainID(tx.ChainId()), tx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "transaction pending", func() bool {
		n, err := client.PendingNonceAt(context.Background(), from)
		return err == nil && n > tx.Nonce()
	})
}

// mine sends tx, mines a block and returns the receipt.
func mine(t *testing.T, backend *simulated.Backend, tx *types.Transaction) *types.Receipt {
	t.Helper()
	ctx := context.Background()
	if err := backend.Client().SendTransaction(ctx, tx); err != nil {
		t.Fatalf("simulated chain refuses %s: %v", tx.Hash(), err)
	}
	waitPending(t, backend.Client(), tx)
	backend.Commit()
	receipt, err := backend.Client().TransactionReceipt(ctx, tx.Hash())
	if err != nil {
		t.Fatalf("receipt %s: %v", tx.Hash(), err)
	}
	return receipt
}

var (
	tokenAddress   = common.HexToAddress("0x0000000000000000000000000000000000070c3e")
	tokenUnit      = new(big.Int).Exp(big.NewInt(10), big.NewInt(18), nil)
	tokenRecipient = common.HexToAddress("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
)

// tokenTxGas covers a transfer that creates the recipient's balance slot:
// the simulated chain runs go-ethereum's newest dev forks, where that costs
// about 145k gas in all (far more than the 50k of mainnet pricing today).
const tokenTxGas = 300_000

func tokens(n int64) *big.Int { return new(big.Int).Mul(big.NewInt(n), tokenUnit) }

// TestERC20TransferTokenBytecode proves the hand-assembled token against the
// EVM itself, with a go-ethereum key: it is the yardstick the appliance
// test below measures with.
func TestERC20TransferTokenBytecode(t *testing.T) {
	key, err := crypto.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	holder := crypto.PubkeyToAddress(key.PublicKey)
	other := tokenRecipient
	initial := tokens(1000)
	backend := simulated.NewBackend(types.GenesisAlloc{
		holder:       {Balance: new(big.Int).Exp(big.NewInt(10), big.NewInt(20), nil)},
		tokenAddress: tokenAccount(map[common.Address]*big.Int{holder: initial}),
	})
	defer backend.Close()
	client := backend.Client()
	signer := types.LatestSignerForChainID(big.NewInt(devChainID))
	nonce := uint64(0)
	send := func(value *big.Int, data []byte) *types.Receipt {
		t.Helper()
		tx, err := types.SignTx(types.NewTx(&types.DynamicFeeTx{ChainID: big.NewInt(devChainID), Nonce: nonce,
			GasTipCap: gwei, GasFeeCap: new(big.Int).Mul(big.NewInt(10), gwei), Gas: tokenTxGas,
			To: &tokenAddress, Value: value, Data: data}), signer, key)
		if err != nil {
			t.Fatal(err)
		}
		nonce++
		return mine(t, backend, tx)
	}
	balances := func(wantHolder, wantOther *big.Int) {
		t.Helper()
		if h, o := tokenBalanceOf(t, client, tokenAddress, holder), tokenBalanceOf(t, client, tokenAddress, other); h.Cmp(wantHolder) != 0 || o.Cmp(wantOther) != 0 {
			t.Fatalf("balances holder %v other %v, want %v %v", h, o, wantHolder, wantOther)
		}
	}

	balances(initial, new(big.Int))
	// The seeded slot is Solidity's: balanceOf reads exactly it.
	if got, err := client.StorageAt(context.Background(), tokenAddress, tokenBalanceSlot(holder), nil); err != nil || new(big.Int).SetBytes(got).Cmp(initial) != 0 {
		t.Fatalf("storage at the balance slot: %x %v", got, err)
	}

	// transfer answers true, as eth_call from the holder shows.
	out, err := client.CallContract(context.Background(), ethereum.CallMsg{From: holder, To: &tokenAddress, Data: erc20TransferData(other, tokens(1))}, nil)
	if err != nil || !bytes.Equal(out, abiWord([]byte{1})) {
		t.Fatalf("transfer call: %x %v", out, err)
	}

	failures := []struct {
		name  string
		value *big.Int
		data  []byte
	}{
		{"more than the balance", new(big.Int), erc20TransferData(other, new(big.Int).Add(initial, big.NewInt(1)))},
		{"unknown selector", new(big.Int), append(erc20Selector("approve(address,uint256)"), append(abiWord(other.Bytes()), abiWord([]byte{1})...)...)},
		{"native value", big.NewInt(1), erc20TransferData(other, tokens(1))},
		{"dirty address padding", new(big.Int), func() []byte {
			d := erc20TransferData(other, tokens(1))
			d[4] = 0x01
			return d
		}()},
		{"no calldata", new(big.Int), nil},
	}
	for _, f := range failures {
		if r := send(f.value, f.data); r.Status != types.ReceiptStatusFailed {
			t.Fatalf("%s: receipt status %d, want failed", f.name, r.Status)
		}
	}
	balances(initial, new(big.Int))

	if r := send(new(big.Int), erc20TransferData(other, tokens(250))); r.Status != types.ReceiptStatusSuccessful {
		t.Fatalf("transfer: receipt status %d", r.Status)
	}
	balances(tokens(750), tokens(250))
	if r := send(new(big.Int), erc20TransferData(holder, tokens(100))); r.Status != types.ReceiptStatusSuccessful {
		t.Fatalf("self-transfer: receipt status %d", r.Status)
	}
	balances(tokens(750), tokens(250))
	// Exactly the balance is allowed; one more unit then is not.
	if r := send(new(big.Int), erc20TransferData(other, tokens(750))); r.Status != types.ReceiptStatusSuccessful {
		t.Fatalf("transfer of the whole balance: receipt status %d", r.Status)
	}
	balances(new(big.Int), tokens(1000))
	if r := send(new(big.Int), erc20TransferData(other, big.NewInt(1))); r.Status != types.ReceiptStatusFailed {
		t.Fatalf("transfer from an empty balance: receipt status %d", r.Status)
	}
}

// TestERC20TransferMinedAndBalanceChanges: an ERC-20 transfer signed through
// the real endpoint is mined against a token contract and moves exactly the
// tokens it says, and the request's recorded intent names the token
// recipient and amount. A transfer beyond the balance, also signed (the
// appliance does not know token balances), is mined and reverts.
func TestERC20TransferMinedAndBalanceChanges(t *testing.T) {
	e := newEnv(t)
	e.start()
	from := keyAddress(t, e)
	c := e.client("client")
	initial, amount := tokens(1000), tokens(250) // amounts beyond 2^53: decimal strings must be exact

	backend := simulated.NewBackend(types.GenesisAlloc{
		from:         {Balance: new(big.Int).Exp(big.NewInt(10), big.NewInt(20), nil)},
		tokenAddress: tokenAccount(map[common.Address]*big.Int{from: initial}),
	})
	defer backend.Close()
	client := backend.Client()
	if got := tokenBalanceOf(t, client, tokenAddress, from); got.Cmp(initial) != 0 {
		t.Fatalf("seeded balance %v, want %v", got, initial)
	}
	transfer := func(nonce uint64, amount *big.Int) unsignedTx {
		return unsignedTx{typ: types.DynamicFeeTxType, nonce: nonce, tip: gwei, maxFee: new(big.Int).Mul(big.NewInt(10), gwei),
			gas: tokenTxGas, to: &tokenAddress, value: new(big.Int), data: erc20TransferData(tokenRecipient, amount)}
	}

	tooMuch, _ := signViaAppliance(t, e, c, from, transfer(0, new(big.Int).Add(initial, big.NewInt(1))).payload(t), "erc20-too-much")
	if r := mine(t, backend, tooMuch); r.Status != types.ReceiptStatusFailed {
		t.Fatalf("transfer beyond the balance: receipt status %d, want failed", r.Status)
	}
	tx, m := signViaAppliance(t, e, c, from, transfer(1, amount).payload(t), "erc20-transfer")
	if *tx.To() != tokenAddress || tx.Value().Sign() != 0 {
		t.Fatalf("signed to %v value %v", tx.To(), tx.Value())
	}
	if r := mine(t, backend, tx); r.Status != types.ReceiptStatusSuccessful {
		t.Fatalf("transfer: receipt status %d", r.Status)
	}
	if got := tokenBalanceOf(t, client, tokenAddress, tokenRecipient); got.Cmp(amount) != 0 {
		t.Fatalf("recipient holds %v, want %v", got, amount)
	}
	if got, want := tokenBalanceOf(t, client, tokenAddress, from), new(big.Int).Sub(initial, amount); got.Cmp(want) != 0 {
		t.Fatalf("sender holds %v, want %v", got, want)
	}

	// The recorded intent is the token transfer, not an opaque call.
	r := e.must(c, "GET", "/v1/requests/"+m["request_id"].(string), nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET request: %d %s", r.status, r.body)
	}
	intent, _ := r.json(t)["intent"].(map[string]any)
	token, _ := intent["token"].(map[string]any)
	if intent["kind"] != "erc20_transfer" || intent["to"] != tokenAddress.Hex() || intent["value"] != "0" || token == nil {
		t.Fatalf("intent %s", r.body)
	}
	want := map[string]string{"method": "transfer", "contract": tokenAddress.Hex(), "to": tokenRecipient.Hex(),
		"amount": amount.String(), "selector": "0xa9059cbb"}
	for k, v := range want {
		if token[k] != v {
			t.Errorf("intent.token.%s = %v, want %s (%s)", k, token[k], v, r.body)
		}
	}
	if _, ok := token["from"]; ok {
		t.Errorf("intent.token.from set for a transfer: %s", r.body)
	}
}
