package app

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient/simulated"
	"github.com/ethereum/go-ethereum/rlp"
)

// unsignedEIP1559 is the payload an upstream builder sends: 0x02 || rlp(fields).
func unsignedEIP1559(t testing.TB, chainID int64, nonce uint64, to common.Address, value *big.Int) string {
	t.Helper()
	fields := []any{big.NewInt(chainID), nonce, big.NewInt(1_000_000_000), big.NewInt(10_000_000_000),
		uint64(21000), to, value, []byte{}, types.AccessList{}}
	b, err := rlp.EncodeToBytes(fields)
	if err != nil {
		t.Fatal(err)
	}
	return "0x02" + hex.EncodeToString(b)
}

func signBody(payload, idem string) map[string]string {
	return map[string]string{"key_id": "eth-dev", "chain": "ethereum", "network": "1337", "payload": payload, "idempotency_key": idem}
}

// keyAddress reads the key's address through the API and checks it against
// go-ethereum's derivation from the public key.
func keyAddress(t *testing.T, e *env) common.Address {
	t.Helper()
	a := e.must(e.client("client"), "GET", "/v1/keys/eth-dev", nil)
	if a.status != http.StatusOK {
		t.Fatalf("GET /v1/keys/eth-dev: %d %s", a.status, a.body)
	}
	m := a.json(t)
	pub, err := hex.DecodeString(m["public_key"].(string))
	if err != nil {
		t.Fatal(err)
	}
	pk, err := crypto.UnmarshalPubkey(pub)
	if err != nil {
		t.Fatal(err)
	}
	want := crypto.PubkeyToAddress(*pk)
	if m["address"] != want.Hex() { // Hex() is EIP-55
		t.Fatalf("address %v, go-ethereum derives %s", m["address"], want.Hex())
	}
	return want
}

// TestSignMinedBySimulatedChain is the foundation's proof: a transaction
// signed through the real endpoint over real mTLS is accepted by
// go-ethereum, mined by a simulated chain (id 1337), and moves the value.
func TestSignMinedBySimulatedChain(t *testing.T) {
	e := newEnv(t)
	e.start()
	from := keyAddress(t, e)
	to := common.HexToAddress("0x00000000000000000000000000000000000000aa")
	value := big.NewInt(123_456_789_000)

	a := e.must(e.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, value), "mine-1"))
	if a.status != http.StatusOK {
		t.Fatalf("sign: %d %s", a.status, a.body)
	}
	m := a.json(t)
	if m["state"] != "signed" || !strings.HasPrefix(m["request_id"].(string), "req_") {
		t.Fatalf("answer %s", a.body)
	}
	raw, err := hex.DecodeString(strings.TrimPrefix(m["signed_tx"].(string), "0x"))
	if err != nil {
		t.Fatal(err)
	}
	tx := new(types.Transaction)
	if err := tx.UnmarshalBinary(raw); err != nil {
		t.Fatalf("go-ethereum refuses the signed tx: %v", err)
	}
	if tx.Hash().Hex() != m["tx_hash"] {
		t.Fatalf("tx_hash %v, go-ethereum computes %s", m["tx_hash"], tx.Hash().Hex())
	}
	sender, err := types.Sender(types.LatestSignerForChainID(big.NewInt(1337)), tx)
	if err != nil || sender != from {
		t.Fatalf("sender %s (%v), want the key's address %s", sender, err, from)
	}

	backend := simulated.NewBackend(types.GenesisAlloc{from: {Balance: new(big.Int).Exp(big.NewInt(10), big.NewInt(20), nil)}})
	defer backend.Close()
	client := backend.Client()
	ctx := context.Background()
	if id, err := client.ChainID(ctx); err != nil || id.Int64() != 1337 {
		t.Fatalf("simulated chain id %v %v", id, err)
	}
	if err := client.SendTransaction(ctx, tx); err != nil {
		t.Fatalf("simulated chain refuses the transaction: %v", err)
	}
	waitPending(t, client, tx)
	backend.Commit()
	receipt, err := client.TransactionReceipt(ctx, tx.Hash())
	if err != nil || receipt.Status != types.ReceiptStatusSuccessful {
		t.Fatalf("receipt %+v %v", receipt, err)
	}
	bal, err := client.BalanceAt(ctx, to, nil)
	if err != nil || bal.Cmp(value) != 0 {
		t.Fatalf("recipient balance %v (%v), want %v", bal, err, value)
	}
}

// TestThousandSignaturesLowSAndRecover: every signature is low-S and
// recovers to the key.
func TestThousandSignaturesLowSAndRecover(t *testing.T) {
	e := newEnv(t)
	e.start()
	from := keyAddress(t, e)
	halfN := new(big.Int).Rsh(crypto.S256().Params().N, 1)
	signer := types.LatestSignerForChainID(big.NewInt(1337))
	to := common.HexToAddress("0x00000000000000000000000000000000000000bb")
	c := e.client("client")

	const total, workers = 1000, 8
	var wg sync.WaitGroup
	errs := make(chan error, total)
	next := make(chan uint64)
	go func() {
		for i := uint64(0); i < total; i++ {
			next <- i
		}
		close(next)
	}()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range next {
				a, err := e.do(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, n, to, big.NewInt(int64(n)+1)), fmt.Sprintf("k-%d", n)))
				if err != nil || a.status != http.StatusOK {
					errs <- fmt.Errorf("nonce %d: %v %d %s", n, err, a.status, a.body)
					continue
				}
				var m map[string]any
				m = a.json(t)
				raw, _ := hex.DecodeString(strings.TrimPrefix(m["signed_tx"].(string), "0x"))
				tx := new(types.Transaction)
				if err := tx.UnmarshalBinary(raw); err != nil {
					errs <- fmt.Errorf("nonce %d: %v", n, err)
					continue
				}
				_, _, s := tx.RawSignatureValues()
				if s.Cmp(halfN) > 0 {
					errs <- fmt.Errorf("nonce %d: high-S signature", n)
				}
				if got, err := types.Sender(signer, tx); err != nil || got != from || tx.Nonce() != n {
					errs <- fmt.Errorf("nonce %d: recovers to %s (%v)", n, got, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestIdempotency(t *testing.T) {
	e := newEnv(t)
	e.start()
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000cc")
	p1 := unsignedEIP1559(t, 1337, 7, to, big.NewInt(1))
	p2 := unsignedEIP1559(t, 1337, 7, to, big.NewInt(2))

	first := e.must(c, "POST", "/v1/sign", signBody(p1, "idem-1"))
	if first.status != http.StatusOK {
		t.Fatalf("%d %s", first.status, first.body)
	}
	// Replays, also concurrent ones, answer exactly the same bytes.
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			again, err := e.do(c, "POST", "/v1/sign", signBody(p1, "idem-1"))
			if err != nil || again.status != http.StatusOK || string(again.body) != string(first.body) {
				t.Errorf("replay: %v %d %s, first %s", err, again.status, again.body, first.body)
			}
		}()
	}
	wg.Wait()
	conflict := e.must(c, "POST", "/v1/sign", signBody(p2, "idem-1"))
	if conflict.status != http.StatusConflict || conflict.code(t) != "idempotency_conflict" {
		t.Fatalf("other payload, same key: %d %s", conflict.status, conflict.body)
	}
	// Concurrent first requests with one new key: one signature, one answer.
	answers := make([]string, 16)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := e.do(c, "POST", "/v1/sign", signBody(p2, "idem-2"))
			if err != nil || a.status != http.StatusOK {
				t.Errorf("%v %d %s", err, a.status, a.body)
				return
			}
			answers[i] = string(a.body)
		}()
	}
	wg.Wait()
	for _, s := range answers[1:] {
		if s != answers[0] {
			t.Fatalf("concurrent first requests answered differently:\n%s\n%s", answers[0], s)
		}
	}
	// The request is readable by its requester and by an auditor.
	id := first.json(t)["request_id"].(string)
	for _, who := range []string{"client", "auditor"} {
		r := e.must(e.client(who), "GET", "/v1/requests/"+id, nil)
		if r.status != http.StatusOK || r.json(t)["state"] != "signed" {
			t.Fatalf("%s reads request: %d %s", who, r.status, r.body)
		}
	}
}

// unsignedEIP1559Data is unsignedEIP1559 with calldata and gas for it.
func unsignedEIP1559Data(t testing.TB, nonce uint64, to common.Address, value *big.Int, data []byte) string {
	t.Helper()
	fields := []any{big.NewInt(1337), nonce, big.NewInt(1_000_000_000), big.NewInt(10_000_000_000),
		uint64(100_000), to, value, data, types.AccessList{}}
	b, err := rlp.EncodeToBytes(fields)
	if err != nil {
		t.Fatal(err)
	}
	return "0x02" + hex.EncodeToString(b)
}
