package policy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

// BenchmarkEvaluateWithFullWindow measures one evaluation of a key whose
// windows already hold rows usage rows, every one of them inside the 24 h
// window (spread over its last 23 hours, so about 1/23 of them are also
// inside the 1 h window): a busy key's steady state, and the worst case of
// the schema-8 code, which read and summed every row of the window on every
// evaluation. Each evaluation (two windows, then recording the usage) runs
// in a write transaction that is rolled back — no commit, no fsync — so the
// figure is the policy's own cost and every iteration sees the same rows.
// rows_0 has no usage at all (fewer reads: nothing to look up); rows_1000
// and rows_200000 should cost the same. released_1000 first releases 1,000
// of those requests (rejected or expired approvals), which the windows
// subtract.
func BenchmarkEvaluateWithFullWindow(b *testing.B) {
	const huge = "1000000000000000000000000000000"
	for _, c := range []struct{ rows, released int }{{0, 0}, {1_000, 0}, {200_000, 0}, {200_000, 1_000}} {
		name := fmt.Sprintf("rows_%d", c.rows)
		if c.released > 0 {
			name += fmt.Sprintf("_released_%d", c.released)
		}
		b.Run(name, func(b *testing.B) {
			s, _ := newStore(b)
			e := newEngine(b)
			addKey(b, s, "bench")
			setRules(b, s, "bench", Rules{Windows: []Window{{"ETH", "1h", huge}, {"ETH", "24h", huge}}})
			ctx := context.Background()
			now := t0
			ats := make([]time.Time, c.rows)
			for i := range ats {
				ats[i] = now.Add(-23*time.Hour + time.Duration(i)*(23*time.Hour/time.Duration(c.rows)))
			}
			start := time.Now()
			seedUsage(b, s, "bench", "eth", "10000000000000000", ats)
			if c.released > 0 {
				err := s.WriteTx(ctx, func(tx *store.Tx) error {
					for i := range c.released {
						if err := e.Release(ctx, tx, seedRequestID(i*(c.rows/c.released))); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			if c.rows > 0 {
				b.Logf("seeded %d usage rows (%d released) in %v", c.rows, c.released, time.Since(start))
			}
			req := Request{KeyID: "bench", Principal: "client", RequestID: "bench-full-window",
				Intent: ethTransfer(alice, "1000000000000000000"), Now: now}
			benchEvaluateRolledBack(b, s, e, req)
		})
	}
}
