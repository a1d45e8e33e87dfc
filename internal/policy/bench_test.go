package policy

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

func BenchmarkEvaluateEmpty(b *testing.B) { benchEvaluate(b, 0) }

// BenchmarkEvaluateWith1MHistory: the same work with 1,000,000 past usage
// rows (older than the longest window, spread over 100 keys and 3 assets,
// the benchmarked key and asset included). The window index makes them
// invisible to the evaluation.
func BenchmarkEvaluateWith1MHistory(b *testing.B) { benchEvaluate(b, 1_000_000) }

func benchEvaluate(b *testing.B, history int) {
	// The rules exercise every stateful path: two windows (one index range
	// scan), a per-transaction limit and both rate buckets (read and write).
	benchRules := Rules{
		PerTxMax:      map[string]string{"ETH": "1000000000000000000000"},
		Windows:       []Window{{"ETH", "1h", "1000000000000000000000000"}, {"ETH", "24h", "1000000000000000000000000"}},
		RatePerClient: &Rate{PerSecond: 1e6, Burst: 1_000_000},
		RatePerKey:    &Rate{PerSecond: 1e6, Burst: 1_000_000},
	}
	s, _ := newStore(b)
	e := newEngine(b)
	addKey(b, s, "bench")
	setRules(b, s, "bench", benchRules)
	ctx := context.Background()
	if history > 0 {
		start := time.Now()
		assets := []string{"eth", "btc", "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"}
		keys := make([]string, 100)
		keys[0] = "bench"
		for i := 1; i < len(keys); i++ {
			keys[i] = fmt.Sprintf("key-%03d", i)
		}
		old := t0.Add(-48 * time.Hour)
		rows := make([]seedRow, history)
		for i := range rows {
			rows[i] = seedRow{requestID: fmt.Sprintf("old-%07d", i), keyID: keys[i%len(keys)], asset: assets[i%len(assets)],
				amount: "1000000000000000000", at: old.Add(-time.Duration(i) * time.Second)}
		}
		seedUsageRows(b, s, rows)
		b.Logf("inserted %d history rows in %v", history, time.Since(start))
	}
	i := 0
	for b.Loop() {
		i++
		req := Request{KeyID: "bench", Principal: "client", RequestID: reqID("bench", i),
			Intent: ethTransfer(alice, "1000000000000000000"), Now: t0.Add(time.Duration(i) * time.Millisecond)}
		var d Decision
		err := s.WriteTx(ctx, func(tx *store.Tx) error {
			var err error
			d, err = e.Evaluate(ctx, tx, req)
			return err
		})
		if err != nil || d.Outcome != Allow {
			b.Fatalf("op %d: %+v, %v", i, d, err)
		}
	}
}

// errRollback ends a benchmark's write transaction without committing it.
var errRollback = errors.New("rolled back by the benchmark")

// realisticRules is a production-shaped rule set: a per-transaction limit,
// two rolling windows, both rate buckets, allowlist mode and fee caps, on
// both the native coin and a token.
var realisticRules = Rules{
	PerTxMax: map[string]string{"ETH": "50000000000000000000", usdc: "1000000000000"},
	Windows: []Window{{"ETH", "1h", "200000000000000000000"}, {"ETH", "24h", "1000000000000000000000"},
		{usdc, "24h", "100000000000000"}},
	RatePerClient:        &Rate{PerSecond: 1e6, Burst: 1_000_000},
	RatePerKey:           &Rate{PerSecond: 1e6, Burst: 1_000_000},
	Allowlist:            true,
	AllowlistDelay:       "24h",
	MaxFeePerGas:         "200000000000",
	MaxPriorityFeePerGas: "5000000000",
}

// BenchmarkEvaluateRolledBack measures the policy decision alone: the
// realistic rules above (allowlisted destination, fees under the caps,
// amount under the limits) evaluated inside a write transaction that is then
// rolled back, so no commit (and no fsync) is in the figure. The rate
// buckets and usage rows it writes are undone each time, so every iteration
// sees the same state. empty_tx is the same transaction without the
// evaluation: the difference is the policy's own cost. (The cost of windows
// that already hold many rows is BenchmarkEvaluateWithFullWindow's.)
func BenchmarkEvaluateRolledBack(b *testing.B) {
	s, _ := newStore(b)
	e := newEngine(b)
	addKey(b, s, "bench")
	setRules(b, s, "bench", realisticRules)
	addAllow(b, s, "bench", alice, t0.Add(-48*time.Hour))
	ctx := context.Background()
	b.Run("empty_tx", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := s.WriteTx(ctx, func(*store.Tx) error { return errRollback }); !errors.Is(err, errRollback) {
				b.Fatal(err)
			}
		}
	})
	b.Run("realistic_rules", func(b *testing.B) {
		req := Request{KeyID: "bench", Principal: "client", RequestID: "bench-000001",
			Intent: ethTransfer(alice, "1000000000000000000"), Now: t0}
		benchEvaluateRolledBack(b, s, e, req)
	})
}

// benchEvaluateRolledBack times e.Evaluate of req, which must allow it, each
// in a write transaction that is rolled back: no commit, no fsync, and every
// iteration sees the same rows.
func benchEvaluateRolledBack(b *testing.B, s *store.Store, e *Engine, req Request) {
	b.Helper()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		var d Decision
		err := s.WriteTx(ctx, func(tx *store.Tx) error {
			var err error
			if d, err = e.Evaluate(ctx, tx, req); err != nil {
				return err
			}
			return errRollback
		})
		if !errors.Is(err, errRollback) || d.Outcome != Allow {
			b.Fatalf("%+v, %v", d, err)
		}
	}
}
