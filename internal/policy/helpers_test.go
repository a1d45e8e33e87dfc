package policy

import (
	"context"
	"fmt"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/store"
)

// t0 is the tests' reference time; every Now is t0 plus an offset.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

const (
	alice = "0x1111111111111111111111111111111111111111"
	bob   = "0x2222222222222222222222222222222222222222"
	// usdc is an EIP-55 checksummed token contract.
	usdc = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
)

func openStore(t testing.TB, path string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), path, zap.NewNop())
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newStore(t testing.TB) (*store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "appliance.db")
	return openStore(t, path), path
}

func newEngine(t testing.TB) *Engine {
	t.Helper()
	e, err := New(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func addKey(t testing.TB, s *store.Store, id string) {
	t.Helper()
	err := s.InsertKey(context.Background(), store.Key{ID: id, Label: id, CKAID: []byte(id),
		Algorithm: store.AlgSecp256k1, Chain: ChainEthereum, PublicKey: []byte{4, 1, 2, 3}})
	if err != nil {
		t.Fatalf("InsertKey %s: %v", id, err)
	}
}

func setRules(t testing.TB, s *store.Store, keyID string, r Rules) int {
	t.Helper()
	var v int
	err := s.WriteTx(context.Background(), func(tx *store.Tx) error {
		var err error
		v, err = SetRules(context.Background(), tx, keyID, r, "test-quorum")
		return err
	})
	if err != nil {
		t.Fatalf("SetRules %s: %v", keyID, err)
	}
	return v
}

func addAllow(t testing.TB, s *store.Store, keyID, addr string, eff time.Time) {
	t.Helper()
	err := s.WriteTx(context.Background(), func(tx *store.Tx) error {
		return AddAllowlist(context.Background(), tx, keyID, addr, eff, "officer")
	})
	if err != nil {
		t.Fatalf("AddAllowlist: %v", err)
	}
}

// evaluate runs Evaluate in its own write transaction, as the signing path does.
func evaluate(t testing.TB, s *store.Store, e *Engine, req Request) Decision {
	t.Helper()
	var d Decision
	err := s.WriteTx(context.Background(), func(tx *store.Tx) error {
		var err error
		d, err = e.Evaluate(context.Background(), tx, req)
		return err
	})
	if err != nil {
		t.Fatalf("Evaluate: %v", err)
	}
	return d
}

// count returns a COUNT(*) query's answer, read through the writer.
func count(t testing.TB, s *store.Store, query string, args ...any) int {
	t.Helper()
	var n int
	err := s.WriteTx(context.Background(), func(tx *store.Tx) error {
		return tx.QueryRowContext(context.Background(), query, args...).Scan(&n)
	})
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func amt(s string) *big.Int {
	v, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic("bad amount " + s)
	}
	return v
}

func ethTransfer(to, amount string) Intent {
	return Intent{Chain: ChainEthereum, Kind: KindTransfer,
		Transfers:    []Transfer{{Asset: "ETH", To: to, Amount: amt(amount)}},
		MaxFeePerGas: amt("1000000000"), MaxPriorityFeePerGas: amt("1000000000")}
}

func tokenTransfer(token, to, amount string) Intent {
	return Intent{Chain: ChainEthereum, Kind: KindERC20Transfer, Contract: token, Selector: "0xa9059cbb",
		Transfers:    []Transfer{{Asset: token, To: to, Amount: amt(amount)}},
		MaxFeePerGas: amt("1000000000"), MaxPriorityFeePerGas: amt("1000000000")}
}

func reqID(prefix string, i int) string { return fmt.Sprintf("%s-%06d", prefix, i) }
