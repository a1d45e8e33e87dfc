package policy

import (
	"testing"
	"time"
)

// TestStateSurvivesRestart: window usage and rate-limit buckets are rows in
// the database, so closing and reopening the store (a restart) resets neither.
func TestStateSurvivesRestart(t *testing.T) {
	s, path := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	setRules(t, s, "k", Rules{Windows: []Window{{"ETH", "1h", "5"}}, RatePerClient: &Rate{PerSecond: 0.01, Burst: 3}})
	for i := range 3 {
		if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: reqID("a", i), Intent: ethTransfer(alice, "1"), Now: t0}); d.Outcome != Allow {
			t.Fatalf("request %d: %+v", i, d)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path)
	e = newEngine(t)
	// A fresh bucket would be full; the persisted one is empty.
	d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "b1", Intent: ethTransfer(alice, "1"), Now: t0.Add(time.Second)})
	if d.Code != CodeRateLimited || d.RetryAfter != 99*time.Second {
		t.Fatalf("after restart, empty bucket: %+v", d)
	}
	// 200 s later two tokens are back, but the window still holds 3 of 5.
	later := t0.Add(200 * time.Second)
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "b2", Intent: ethTransfer(alice, "3"), Now: later}); d.Code != CodeLimitExceeded {
		t.Fatalf("after restart, window usage lost: %+v", d)
	}
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "b3", Intent: ethTransfer(alice, "2"), Now: later}); d.Outcome != Allow {
		t.Fatalf("after restart, 3 + 2 ≤ 5: %+v", d)
	}
}
