package ethereum

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"math/big"
	mrand "math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	gethrlp "github.com/ethereum/go-ethereum/rlp"
)

func TestEIP155Vector(t *testing.T) {
	var v struct {
		Tx struct {
			Nonce    uint64 `json:"nonce"`
			GasPrice string `json:"gas_price_wei_dec"`
			Gas      uint64 `json:"gas_limit"`
			To       string `json:"to"`
			Value    string `json:"value_wei_dec"`
			Data     string `json:"data"`
			ChainID  int64  `json:"chain_id"`
		} `json:"tx"`
		SigningData string `json:"signing_data"`
		SigningHash string `json:"signing_hash"`
		V           int64  `json:"v"`
		R           string `json:"r_dec"`
		S           string `json:"s_dec"`
		SignedTx    string `json:"signed_tx"`
		Sender      string `json:"sender_address_derived"`
		PrivateKey  string `json:"private_key"`
	}
	loadVectors(t, "eip155.json", &v)

	tx, err := DecodeUnsigned(unhex(t, strings.TrimPrefix(v.SigningData, "0x")))
	if err != nil {
		t.Fatal(err)
	}
	to, err := ParseAddress(v.Tx.To)
	if err != nil {
		t.Fatal(err)
	}
	dec := func(s string) *big.Int {
		x, ok := new(big.Int).SetString(s, 10)
		if !ok {
			t.Fatalf("bad decimal %q", s)
		}
		return x
	}
	want := &Tx{Type: TypeLegacy, ChainID: big.NewInt(v.Tx.ChainID), Nonce: v.Tx.Nonce,
		GasPrice: dec(v.Tx.GasPrice), Gas: v.Tx.Gas, To: &to, Value: dec(v.Tx.Value), Data: []byte{}}
	if !reflect.DeepEqual(tx, want) {
		t.Fatalf("decoded %+v, want %+v", tx, want)
	}
	if h := tx.SigningHash(); "0x"+hex.EncodeToString(h[:]) != v.SigningHash {
		t.Fatalf("signing hash %x, want %s", h, v.SigningHash)
	}

	var sig Signature
	dec(v.R).FillBytes(sig.R[:])
	dec(v.S).FillBytes(sig.S[:])
	sig.YParity = byte(v.V - 35 - 2*v.Tx.ChainID)
	raw, hash, err := tx.Signed(sig)
	if err != nil {
		t.Fatal(err)
	}
	if "0x"+hex.EncodeToString(raw) != v.SignedTx {
		t.Fatalf("signed tx %x, want %s", raw, v.SignedTx)
	}
	if hash != crypto.Keccak256Hash(raw) {
		t.Fatal("hash is not keccak256(raw)")
	}
	key, err := crypto.HexToECDSA(strings.TrimPrefix(v.PrivateKey, "0x"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := AddressFromPublicKey(crypto.FromECDSAPub(&key.PublicKey)); got.Hex() != v.Sender {
		t.Fatalf("sender %s, want %s", got.Hex(), v.Sender)
	}
}

// randomTx makes a transaction of the given type covering the edges that
// matter to encoding: zero and 256-bit integers, empty and long data,
// contract creation, and access lists with and without storage keys.
func randomTx(r *mrand.Rand, typ byte) *Tx {
	randBig := func() *big.Int {
		switch r.IntN(4) {
		case 0:
			return new(big.Int)
		case 1:
			return new(big.Int).SetUint64(r.Uint64())
		case 2:
			return new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1))
		default:
			b := make([]byte, 1+r.IntN(32))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return new(big.Int).SetBytes(b)
		}
	}
	randU64 := func() uint64 {
		if r.IntN(3) == 0 {
			return r.Uint64N(200)
		}
		return r.Uint64()
	}
	chainIDs := []*big.Int{big.NewInt(1), big.NewInt(11155111), big.NewInt(137),
		new(big.Int).SetUint64(^uint64(0)), new(big.Int).Lsh(big.NewInt(1), 200)}
	tx := &Tx{Type: typ, ChainID: chainIDs[r.IntN(len(chainIDs))], Nonce: randU64(), Gas: randU64(), Value: randBig()}
	if typ == TypeDynamicFee {
		tx.MaxPriorityFeePerGas, tx.MaxFeePerGas = randBig(), randBig()
	} else {
		tx.GasPrice = randBig()
	}
	if r.IntN(4) != 0 {
		var a Address
		for i := range a {
			a[i] = byte(r.Uint32())
		}
		tx.To = &a
	}
	tx.Data = make([]byte, []int{0, 0, 4, 68, 55, 56, 5000}[r.IntN(7)])
	for i := range tx.Data {
		tx.Data[i] = byte(r.Uint32())
	}
	if typ != TypeLegacy && r.IntN(2) == 0 {
		for i := r.IntN(4); i >= 0; i-- {
			var t AccessTuple
			t.Address[0] = byte(i)
			t.StorageKeys = make([][32]byte, r.IntN(3))
			for j := range t.StorageKeys {
				t.StorageKeys[j][31] = byte(j)
				t.StorageKeys[j][0] = byte(r.Uint32())
			}
			tx.AccessList = append(tx.AccessList, t)
		}
	}
	return tx
}

// gethUnsignedPayload is the signing preimage encoded by go-ethereum's own
// RLP encoder; its keccak is checked against go-ethereum's signer.Hash, so
// the preimage itself is judged by go-ethereum.
func gethUnsignedPayload(t *testing.T, tx *types.Transaction, chainID *big.Int) []byte {
	t.Helper()
	var fields []any
	switch tx.Type() {
	case types.LegacyTxType:
		fields = []any{tx.Nonce(), tx.GasPrice(), tx.Gas(), tx.To(), tx.Value(), tx.Data(), chainID, uint(0), uint(0)}
	case types.AccessListTxType:
		fields = []any{chainID, tx.Nonce(), tx.GasPrice(), tx.Gas(), tx.To(), tx.Value(), tx.Data(), tx.AccessList()}
	default:
		fields = []any{chainID, tx.Nonce(), tx.GasTipCap(), tx.GasFeeCap(), tx.Gas(), tx.To(), tx.Value(), tx.Data(), tx.AccessList()}
	}
	body, err := gethrlp.EncodeToBytes(fields)
	if err != nil {
		t.Fatal(err)
	}
	if tx.Type() != types.LegacyTxType {
		body = append([]byte{tx.Type()}, body...)
	}
	if crypto.Keccak256Hash(body) != types.LatestSignerForChainID(chainID).Hash(tx) {
		t.Fatal("test harness: preimage does not hash to go-ethereum's signing hash")
	}
	return body
}

func TestRoundTripAgainstGeth(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	keys := make([]*ecdsa.PrivateKey, 4)
	for i := range keys {
		var err error
		if keys[i], err = crypto.GenerateKey(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 600; i++ {
		want := randomTx(r, byte(i%3))
		gtx := gethTx(want)
		payload := gethUnsignedPayload(t, gtx, want.ChainID)

		got, err := DecodeUnsigned(payload)
		if err != nil {
			t.Fatalf("case %d type %d: %v", i, want.Type, err)
		}
		if want.Data == nil {
			want.Data = []byte{}
		}
		if !reflect.DeepEqual(normalise(got), normalise(want)) {
			t.Fatalf("case %d: decoded\n%+v\nwant\n%+v", i, got, want)
		}
		if !bytes.Equal(got.UnsignedPayload(), payload) {
			t.Fatalf("case %d: re-encoding differs", i)
		}
		signer := types.LatestSignerForChainID(want.ChainID)
		digest := got.SigningHash()
		if digest != signer.Hash(gtx) {
			t.Fatalf("case %d: signing hash differs from go-ethereum", i)
		}

		key := keys[i%len(keys)]
		sigBytes, err := crypto.Sign(digest[:], key)
		if err != nil {
			t.Fatal(err)
		}
		sig := Signature{R: [32]byte(sigBytes[:32]), S: [32]byte(sigBytes[32:64]), YParity: sigBytes[64]}
		raw, hash, err := got.Signed(sig)
		if err != nil {
			t.Fatal(err)
		}
		var decoded types.Transaction
		if err := decoded.UnmarshalBinary(raw); err != nil {
			t.Fatalf("case %d: go-ethereum cannot parse our signed tx: %v", i, err)
		}
		from, err := types.Sender(signer, &decoded)
		if err != nil || from != crypto.PubkeyToAddress(key.PublicKey) {
			t.Fatalf("case %d: sender %s, err %v", i, from.Hex(), err)
		}
		if common.Hash(hash) != decoded.Hash() {
			t.Fatalf("case %d: tx hash differs from go-ethereum", i)
		}
		// go-ethereum's own signing of the same tx must give the same bytes.
		gsigned, err := gtx.WithSignature(signer, sigBytes)
		if err != nil {
			t.Fatal(err)
		}
		if gRaw, _ := gsigned.MarshalBinary(); !bytes.Equal(gRaw, raw) {
			t.Fatalf("case %d: signed encoding differs from go-ethereum", i)
		}
	}
}

// normalise maps the nil/empty distinctions that carry no meaning (an
// empty access list vs nil, empty storage keys) to one form for comparison.
func normalise(tx *Tx) *Tx {
	c := *tx
	if len(c.AccessList) == 0 {
		c.AccessList = nil
	}
	for i := range c.AccessList {
		if len(c.AccessList[i].StorageKeys) == 0 {
			c.AccessList[i].StorageKeys = nil
		}
	}
	return &c
}

func TestIntent(t *testing.T) {
	to := Address{0x35}
	base := Tx{Type: TypeDynamicFee, ChainID: big.NewInt(1), Nonce: 7, Gas: 21000,
		MaxPriorityFeePerGas: big.NewInt(2), MaxFeePerGas: big.NewInt(30_000_000_000),
		To: &to, Value: new(big.Int).Exp(big.NewInt(10), big.NewInt(24), nil)}
	transfer := base
	call := base
	call.Data = []byte{0xa9, 0x05, 0x9c, 0xbb}
	create := base
	create.To = nil
	create.Data = []byte{0x60}
	legacy := base
	legacy.Type, legacy.GasPrice, legacy.MaxFeePerGas, legacy.MaxPriorityFeePerGas = TypeLegacy, big.NewInt(5), nil, nil

	tests := []struct {
		tx   Tx
		want string
	}{
		{transfer, `{"kind":"transfer","chain_id":"1","nonce":7,"to":"` + to.Hex() + `","value":"1000000000000000000000000","gas":21000,"max_fee_per_gas":"30000000000","max_priority_fee_per_gas":"2","data_len":0,"type":2}`},
		{call, `{"kind":"contract_call","chain_id":"1","nonce":7,"to":"` + to.Hex() + `","value":"1000000000000000000000000","gas":21000,"max_fee_per_gas":"30000000000","max_priority_fee_per_gas":"2","data_len":4,"type":2}`},
		{create, `{"kind":"contract_creation","chain_id":"1","nonce":7,"value":"1000000000000000000000000","gas":21000,"max_fee_per_gas":"30000000000","max_priority_fee_per_gas":"2","data_len":1,"type":2}`},
		{legacy, `{"kind":"transfer","chain_id":"1","nonce":7,"to":"` + to.Hex() + `","value":"1000000000000000000000000","gas":21000,"gas_price":"5","data_len":0,"type":0}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.tx.Intent())
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tt.want {
			t.Errorf("got  %s\nwant %s", b, tt.want)
		}
	}
}

func TestSignedRefusesBadInput(t *testing.T) {
	good := Signature{R: [32]byte{31: 1}, S: [32]byte{31: 1}}
	tx := &Tx{Type: TypeDynamicFee, ChainID: big.NewInt(1), MaxFeePerGas: big.NewInt(1),
		MaxPriorityFeePerGas: big.NewInt(1), Value: big.NewInt(0)}
	if _, _, err := tx.Signed(good); err != nil {
		t.Fatal(err)
	}
	neg := *tx
	neg.Value = big.NewInt(-1)
	missing := *tx
	missing.MaxFeePerGas = nil
	huge := *tx
	huge.Value = new(big.Int).Lsh(big.NewInt(1), 256)
	blob := *tx
	blob.Type = 3
	cases := []struct {
		name string
		tx   *Tx
		sig  Signature
	}{
		{"parity 2", tx, Signature{R: good.R, S: good.S, YParity: 2}},
		{"zero r", tx, Signature{S: good.S}},
		{"negative value", &neg, good},
		{"missing fee", &missing, good},
		{"257-bit value", &huge, good},
		{"type 3", &blob, good},
	}
	for _, c := range cases {
		if _, _, err := c.tx.Signed(c.sig); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}
