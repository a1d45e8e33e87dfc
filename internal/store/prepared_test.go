package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"math/big"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/store"
)

// countCompiles makes every statement SQLite compiles on db's connection
// (a prepare, or the re-prepare of a cached statement) add to the returned
// counter, except BEGIN, COMMIT and savepoints, which the driver runs
// without its statement cache. db must hold one connection.
func countCompiles(t *testing.T, db *sql.DB) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		dc.(*sqlite3.SQLiteConn).RegisterAuthorizer(func(op int, _, _, _ string) int {
			if op != sqlite3.SQLITE_TRANSACTION && op != sqlite3.SQLITE_SAVEPOINT {
				n.Add(1)
			}
			return sqlite3.SQLITE_OK
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return &n
}

// TestSigningPathStatementsStayPrepared: once warm, the database work of a
// signed request (the request record, the policy decision with every
// stateful rule, the audit entries, the completion) runs entirely from the
// writer's statement cache. A statement SQLite marks for re-preparation on
// every new binding is compiled again on every use (the driver clears the
// bindings of a statement it caches, which expires such a statement): with
// SQLite 3.54, any `column = ?` beside an ORDER BY that some candidate plan
// does not use is marked so.
func TestSigningPathStatementsStayPrepared(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(ctx, filepath.Join(t.TempDir(), "appliance.db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.InsertKey(ctx, store.Key{ID: "k", Label: "k", CKAID: []byte("k"), Algorithm: store.AlgSecp256k1,
		Chain: "ethereum", Network: "1337", PublicKey: []byte{4, 1, 2, 3}}); err != nil {
		t.Fatal(err)
	}
	const to = "0x1111111111111111111111111111111111111111"
	rules := policy.Rules{
		PerTxMax:      map[string]string{"ETH": "1000000000000000000"},
		Windows:       []policy.Window{{Asset: "ETH", Duration: "1h", Max: "1000000000000000000000"}, {Asset: "ETH", Duration: "24h", Max: "1000000000000000000000"}},
		MaxFeePerGas:  "500000000000",
		RatePerClient: &policy.Rate{PerSecond: 1000, Burst: 1000},
		RatePerKey:    &policy.Rate{PerSecond: 1000, Burst: 1000},
		Allowlist:     true,
		ApprovalAbove: map[string]string{"ETH": "10000000000000000000"},
		Approvals:     2,
	}
	err = s.WriteTx(ctx, func(tx *store.Tx) error {
		if _, err := policy.SetRules(ctx, tx, "k", rules, "test"); err != nil {
			return err
		}
		return policy.AddAllowlist(ctx, tx, "k", to, time.Now().Add(-time.Hour), "officer")
	})
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.New(zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	compiles := countCompiles(t, store.WriterForTest(s))

	sign := func(i int) {
		t.Helper()
		payload := []byte(fmt.Sprint("payload-", i))
		h := sha256.Sum256(payload)
		rec, created, err := s.CreateRequest(ctx, store.Request{Principal: "client", IdempotencyKey: fmt.Sprint("idem-", i),
			KeyID: "k", Chain: "ethereum", Network: "1337", Payload: payload, PayloadHash: h[:],
			Intent: []byte(`{}`), Digest: bytes.Repeat([]byte{7}, 32)},
			func(tx *store.Tx, r *store.Request) error {
				d, err := e.Evaluate(ctx, tx, policy.Request{KeyID: "k", Principal: "client", RequestID: r.ID,
					Intent: policy.Intent{Chain: policy.ChainEthereum, Kind: policy.KindTransfer,
						Transfers:    []policy.Transfer{{Asset: "ETH", To: to, Amount: big.NewInt(1000)}},
						MaxFeePerGas: big.NewInt(1000), MaxPriorityFeePerGas: big.NewInt(1000)}})
				if err == nil && d.Outcome != policy.Allow {
					err = fmt.Errorf("decision %+v", d)
				}
				return err
			})
		if err != nil || !created {
			t.Fatalf("request %d: created %v, %v", i, created, err)
		}
		if err := s.CompleteRequestWith(ctx, rec.ID, store.Completion{SignedTx: []byte{2}, TxHash: "0xabc"}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		sign(i)
	}
	if compiles.Load() == 0 {
		t.Fatal("the authorizer saw no statement compiled: the test no longer observes anything")
	}
	compiles.Store(0)
	for i := 3; i < 13; i++ {
		sign(i)
	}
	if n := compiles.Load(); n != 0 {
		t.Errorf("10 warm signed requests compiled statements again (%d authorizer calls); want none", n)
	}
}
