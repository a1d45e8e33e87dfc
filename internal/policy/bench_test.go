package policy

import (
	"context"
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
		err := s.WriteTx(ctx, func(tx *store.Tx) error {
			st, err := tx.PrepareContext(ctx, `INSERT INTO policy_usage (request_id, key_id, asset, amount, at) VALUES (?, ?, ?, ?, ?)`)
			if err != nil {
				return err
			}
			defer st.Close()
			assets := []string{"eth", "btc", "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"}
			keys := make([]string, 100)
			keys[0] = "bench"
			for i := 1; i < len(keys); i++ {
				keys[i] = fmt.Sprintf("key-%03d", i)
			}
			old := t0.Add(-48 * time.Hour).UnixNano()
			for i := range history {
				if _, err := st.ExecContext(ctx, fmt.Sprintf("old-%07d", i), keys[i%len(keys)], assets[i%len(assets)],
					"1000000000000000000", old-int64(i)*int64(time.Second)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
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
