package policy

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

// TestConcurrentWindowLimit is invariant 3: 200 concurrent requests, each
// moving 1 unit, against a window that allows exactly 50. Each request is
// recorded (store.CreateRequest) and decided in the same write transaction,
// as the signing path does; a denied request is kept with its code.
func TestConcurrentWindowLimit(t *testing.T) {
	const (
		rounds   = 20
		requests = 200
		limit    = 50
	)
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "hot")
	setRules(t, s, "hot", Rules{Windows: []Window{{"ETH", "1h", fmt.Sprint(limit)}}})
	ctx := context.Background()
	start := time.Now()

	for round := range rounds {
		// A fresh window each round: the previous round's usage is 2h old.
		now := t0.Add(time.Duration(round) * 2 * time.Hour)
		var (
			mu      sync.Mutex
			outcome = map[string]int{}
			wg      sync.WaitGroup
			gate    = make(chan struct{})
		)
		for i := range requests {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				var d Decision
				_, _, err := s.CreateRequest(ctx, store.Request{Principal: "client", KeyID: "hot", Chain: ChainEthereum,
					Payload: []byte{byte(i)}, PayloadHash: []byte{byte(i)}},
					func(tx *store.Tx, r *store.Request) error {
						var err error
						d, err = e.Evaluate(ctx, tx, Request{KeyID: "hot", Principal: "client", RequestID: r.ID,
							Intent: ethTransfer(alice, "1"), Now: now})
						if err != nil || d.Outcome == Allow {
							return err
						}
						_, err = tx.ExecContext(ctx, `UPDATE requests SET state = ?, error_code = ?, error_message = ? WHERE id = ?`,
							store.StateDenied, d.Code, d.Message, r.ID)
						return err
					})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					outcome["error: "+err.Error()]++
					return
				}
				outcome[d.Outcome.String()+" "+d.Code]++
			}()
		}
		close(gate)
		wg.Wait()
		want := map[string]int{"allow ": limit, "deny " + CodeLimitExceeded: requests - limit}
		if fmt.Sprint(outcome) != fmt.Sprint(want) {
			t.Fatalf("round %d: outcomes %v; want %v", round, outcome, want)
		}
	}
	if n := count(t, s, `SELECT COUNT(*) FROM requests WHERE state = ?`, store.StateSigning); n != rounds*limit {
		t.Fatalf("%d requests recorded for signing; want %d", n, rounds*limit)
	}
	if n := count(t, s, `SELECT COUNT(*) FROM requests WHERE state = ? AND error_code = ?`, store.StateDenied, CodeLimitExceeded); n != rounds*(requests-limit) {
		t.Fatalf("%d requests recorded as limit_exceeded; want %d", n, rounds*(requests-limit))
	}
	if n := count(t, s, usageRows); n != rounds*limit {
		t.Fatalf("%d usage rows; want %d", n, rounds*limit)
	}
	t.Logf("%d rounds of %d concurrent requests in %v", rounds, requests, time.Since(start))
}
