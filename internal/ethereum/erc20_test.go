package ethereum

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/accounts/abi"
	"github.com/ethereum/go-ethereum/common"
)

const erc20ABI = `[
{"type":"function","name":"transfer","inputs":[{"name":"to","type":"address"},{"name":"value","type":"uint256"}],"outputs":[{"type":"bool"}]},
{"type":"function","name":"transferFrom","inputs":[{"name":"from","type":"address"},{"name":"to","type":"address"},{"name":"value","type":"uint256"}],"outputs":[{"type":"bool"}]},
{"type":"function","name":"approve","inputs":[{"name":"spender","type":"address"},{"name":"value","type":"uint256"}],"outputs":[{"type":"bool"}]},
{"type":"function","name":"balanceOf","inputs":[{"name":"owner","type":"address"}],"outputs":[{"type":"uint256"}]}
]`

// gethERC20 is go-ethereum's ABI codec, the judge of our decoder.
func gethERC20(t testing.TB) abi.ABI {
	t.Helper()
	a, err := abi.JSON(strings.NewReader(erc20ABI))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func randAddr(r *rand.Rand) common.Address {
	var a common.Address
	for i := range a {
		a[i] = byte(r.UintN(256))
	}
	return a
}

// randAmount covers the whole uint256 range, with its edges.
func randAmount(r *rand.Rand, i int) *big.Int {
	maxU256 := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1))
	switch i {
	case 0:
		return big.NewInt(0)
	case 1:
		return maxU256
	}
	b := make([]byte, 1+r.IntN(32))
	for j := range b {
		b[j] = byte(r.UintN(256))
	}
	return new(big.Int).SetBytes(b)
}

func TestDecodeERC20AgainstGeth(t *testing.T) {
	a := gethERC20(t)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		from, to, amt := randAddr(r), randAddr(r), randAmount(r, i%100)
		for _, tc := range []struct {
			method string
			args   []any
		}{
			{MethodTransfer, []any{to, amt}},
			{MethodTransferFrom, []any{from, to, amt}},
			{MethodApprove, []any{to, amt}},
		} {
			data, err := a.Pack(tc.method, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			call, err := DecodeERC20(data)
			if err != nil || call == nil {
				t.Fatalf("%s %x: %v, %v", tc.method, data, call, err)
			}
			if call.Method != tc.method || !bytes.Equal(call.Selector[:], a.Methods[tc.method].ID) ||
				common.Address(call.To) != to || call.Amount.Cmp(amt) != 0 || call.Token != (Address{}) {
				t.Fatalf("%s: got %+v, want to %s amount %s", tc.method, call, to, amt)
			}
			if (call.From != nil) != (tc.method == MethodTransferFrom) ||
				(call.From != nil && common.Address(*call.From) != from) {
				t.Fatalf("%s: from = %v, want %s", tc.method, call.From, from)
			}
		}
	}
}

func TestDecodeERC20Malformed(t *testing.T) {
	a := gethERC20(t)
	transfer, _ := a.Pack("transfer", common.HexToAddress("0x35"), big.NewInt(7))
	transferFrom, _ := a.Pack("transferFrom", common.HexToAddress("0x34"), common.HexToAddress("0x35"), big.NewInt(7))
	approve, _ := a.Pack("approve", common.HexToAddress("0x35"), big.NewInt(7))
	balanceOf, _ := a.Pack("balanceOf", common.HexToAddress("0x35"))
	with := func(b []byte, i int, v byte) []byte {
		c := slices.Clone(b)
		c[i] = v
		return c
	}
	bad := map[string][]byte{
		"selector only":                   transfer[:4],
		"one byte short":                  transfer[:len(transfer)-1],
		"one word short":                  transferFrom[:len(transferFrom)-32],
		"one byte long":                   append(slices.Clone(transfer), 0),
		"one word long":                   append(slices.Clone(approve), make([]byte, 32)...),
		"transfer dirty padding byte 0":   with(transfer, 4, 1),
		"transfer dirty padding byte 11":  with(transfer, 4+11, 0x80),
		"transferFrom dirty from padding": with(transferFrom, 4, 0xff),
		"transferFrom dirty to padding":   with(transferFrom, 4+32+11, 1),
		"approve dirty padding":           with(approve, 5, 1),
	}
	for name, data := range bad {
		if call, err := DecodeERC20(data); call != nil || !errors.Is(err, ErrDecode) {
			t.Errorf("%s: %+v, %v; want ErrDecode", name, call, err)
		}
	}
	plain := map[string][]byte{
		"empty":            nil,
		"three bytes":      transfer[:3],
		"balanceOf":        balanceOf,
		"unknown selector": with(transfer, 0, 0xaa),
	}
	for name, data := range plain {
		if call, err := DecodeERC20(data); call != nil || err != nil {
			t.Errorf("%s: %+v, %v; want a plain call (nil, nil)", name, call, err)
		}
	}
	// Dirty padding in the amount word is just a large amount, not an error.
	if call, err := DecodeERC20(with(transfer, 4+32, 0x80)); err != nil || call.Amount.BitLen() != 256 {
		t.Errorf("high amount byte: %+v, %v", call, err)
	}
}

func TestIntentERC20(t *testing.T) {
	a := gethERC20(t)
	token := Address{0x70, 0x17}
	owner := Address{0x0a}
	to := Address{0x35}
	amt, _ := new(big.Int).SetString("123456789012345678901234567890", 10)
	transfer, _ := a.Pack("transfer", common.Address(to), amt)
	transferFrom, _ := a.Pack("transferFrom", common.Address(owner), common.Address(to), amt)
	approve, _ := a.Pack("approve", common.Address(to), amt)
	mk := func(data []byte, value int64, dest *Address) Tx {
		return Tx{Type: TypeDynamicFee, ChainID: big.NewInt(1), Nonce: 7, Gas: 60000,
			MaxPriorityFeePerGas: big.NewInt(2), MaxFeePerGas: big.NewInt(3),
			To: dest, Value: big.NewInt(value), Data: data}
	}
	head := func(kind string, value int64, data []byte) string {
		return `{"kind":"` + kind + `","chain_id":"1","nonce":7,"to":"` + token.Hex() + `","value":"` +
			big.NewInt(value).String() + `","gas":60000,"max_fee_per_gas":"3","max_priority_fee_per_gas":"2","data_len":` +
			big.NewInt(int64(len(data))).String() + `,"type":2`
	}
	tok := func(method, from, sel string) string {
		f := ""
		if from != "" {
			f = `"from":"` + from + `",`
		}
		return `,"token":{"method":"` + method + `","contract":"` + token.Hex() + `",` + f + `"to":"` + to.Hex() +
			`","amount":"123456789012345678901234567890","selector":"` + sel + `"}`
	}
	other := append([]byte{0xde, 0xad, 0xbe, 0xef}, make([]byte, 32)...)
	malformed := append(slices.Clone(transfer), 0)
	tests := []struct {
		name string
		tx   Tx
		want string
	}{
		{"transfer", mk(transfer, 0, &token), head(KindERC20Transfer, 0, transfer) + tok("transfer", "", "0xa9059cbb") + `}`},
		{"transferFrom", mk(transferFrom, 0, &token), head(KindERC20TransferFrom, 0, transferFrom) + tok("transferFrom", owner.Hex(), "0x23b872dd") + `}`},
		{"approve", mk(approve, 0, &token), head(KindERC20Approve, 0, approve) + tok("approve", "", "0x095ea7b3") + `}`},
		{"transfer with native value", mk(transfer, 5, &token), head(KindContractCall, 5, transfer) + tok("transfer", "", "0xa9059cbb") + `}`},
		{"plain call", mk(other, 0, &token), head(KindContractCall, 0, other) + `,"selector":"0xdeadbeef"}`},
		{"malformed transfer", mk(malformed, 0, &token), head(KindContractCall, 0, malformed) + `}`},
		{"short call", mk([]byte{1, 2}, 0, &token), head(KindContractCall, 0, []byte{1, 2}) + `}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.tx.Intent())
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tt.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tt.name, b, tt.want)
		}
	}
	// Creation whose init code happens to start like a transfer is creation.
	create := mk(transfer, 0, nil)
	if in := create.Intent(); in.Kind != KindContractCreation || in.Token != nil || in.Selector != "" {
		t.Errorf("creation: %+v", in)
	}
}

func TestDestinations(t *testing.T) {
	a := gethERC20(t)
	token, owner, to := Address{0x70}, Address{0x0a}, Address{0x35}
	transfer, _ := a.Pack("transfer", common.Address(to), big.NewInt(1))
	transferFrom, _ := a.Pack("transferFrom", common.Address(owner), common.Address(to), big.NewInt(1))
	approve, _ := a.Pack("approve", common.Address(to), big.NewInt(1))
	toSelf, _ := a.Pack("transfer", common.Address(token), big.NewInt(1))
	dirty := slices.Clone(transfer)
	dirty[4] = 0xff // a lenient token masks this to `to`
	// A truncated word, as a token without length checks reads it:
	// the 8 bytes present after the padding, then zero fill.
	wide := Address{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	wideTransfer, _ := a.Pack("transfer", common.Address(wide), big.NewInt(1))
	short := wideTransfer[:4+20]
	shortReads := Address{1, 2, 3, 4, 5, 6, 7, 8}
	var zero Address
	tests := []struct {
		name string
		to   *Address
		data []byte
		want []Address
	}{
		{"creation", nil, transfer, nil},
		{"native transfer", &to, nil, []Address{to}},
		{"plain call", &token, []byte{0xde, 0xad, 0xbe, 0xef}, []Address{token}},
		{"transfer", &token, transfer, []Address{token, to}},
		{"transferFrom", &token, transferFrom, []Address{token, owner, to}},
		{"approve", &token, approve, []Address{token, to}},
		{"transfer to the token itself", &token, toSelf, []Address{token}},
		{"dirty padding still screened", &token, dirty, []Address{token, to}},
		{"truncated word", &token, short, []Address{token, shortReads}},
		{"selector only", &token, transfer[:4], []Address{token, zero}},
	}
	for _, tt := range tests {
		tx := Tx{To: tt.to, Data: tt.data, Value: big.NewInt(0)}
		if got := tx.Destinations(); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

// FuzzDecodeERC20: no panic; errors wrap ErrDecode; anything accepted is
// exactly what go-ethereum's ABI encoder produces for the decoded values
// (so acceptance implies canonical encoding) and what its decoder reads;
// Destinations always includes the decoded addresses.
func FuzzDecodeERC20(f *testing.F) {
	a := gethERC20(f)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 3 {
		t1, _ := a.Pack("transfer", randAddr(r), randAmount(r, i))
		t2, _ := a.Pack("transferFrom", randAddr(r), randAddr(r), randAmount(r, i))
		t3, _ := a.Pack("approve", randAddr(r), randAmount(r, i))
		f.Add(t1)
		f.Add(t2)
		f.Add(t3)
	}
	f.Add([]byte{0xa9, 0x05, 0x9c})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		call, err := DecodeERC20(data)
		token := Address{0x70}
		tx := Tx{To: &token, Data: data, Value: big.NewInt(0)}
		dests := tx.Destinations()
		if err != nil {
			if !errors.Is(err, ErrDecode) || call != nil {
				t.Fatalf("%v, %v", call, err)
			}
			return
		}
		if call == nil {
			if len(data) >= 4 {
				if m, err := a.MethodById(data[:4]); err == nil && m.Name != "balanceOf" {
					t.Fatalf("recognised selector %x treated as plain call", data[:4])
				}
			}
			return
		}
		var args []any
		if call.From != nil {
			args = append(args, common.Address(*call.From))
		}
		args = append(args, common.Address(call.To), call.Amount)
		packed, err := a.Pack(call.Method, args...)
		if err != nil || !bytes.Equal(packed, data) {
			t.Fatalf("accepted %x, go-ethereum packs %x (%v)", data, packed, err)
		}
		vals, err := a.Methods[call.Method].Inputs.Unpack(data[4:])
		if err != nil || vals[len(vals)-2].(common.Address) != common.Address(call.To) ||
			vals[len(vals)-1].(*big.Int).Cmp(call.Amount) != 0 {
			t.Fatalf("go-ethereum reads %v (%v), we read %+v", vals, err, call)
		}
		if !slices.Contains(dests, call.To) || (call.From != nil && !slices.Contains(dests, *call.From)) {
			t.Fatalf("destinations %v miss %+v", dests, call)
		}
		if hex.EncodeToString(call.Selector[:]) != hex.EncodeToString(data[:4]) {
			t.Fatal("selector")
		}
	})
}
