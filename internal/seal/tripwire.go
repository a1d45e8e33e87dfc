package seal

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Freezer is what a tripwire pulls.
type Freezer interface {
	Freeze(ctx context.Context, by, reason string) error
}

// TripwireOptions configure the automatic freeze. Zero disables a trigger.
type TripwireOptions struct {
	// RecordFailures freezes after this many consecutive failures to record
	// a request or its outcome (the audit trail cannot be written).
	RecordFailures int
	// Denials freezes after this many refusals of one principal within
	// DenialWindow: a client probing the policy looks like a compromised one.
	Denials      int
	DenialWindow time.Duration
}

// Tripwire freezes the appliance automatically. It is safe for concurrent
// use. The freeze runs in its own goroutine: the caller may be a signer
// holding the seal gate, which Freeze must wait for.
type Tripwire struct {
	f    Freezer
	opts TripwireOptions
	log  *zap.Logger
	now  func() time.Time

	mu       sync.Mutex
	failures int
	denials  map[string][]time.Time
	tripped  bool
	done     chan struct{} // closed when a tripped freeze has completed
}

// NewTripwire returns a tripwire pulling f.
func NewTripwire(f Freezer, opts TripwireOptions, log *zap.Logger) *Tripwire {
	if opts.DenialWindow <= 0 {
		opts.DenialWindow = time.Minute
	}
	return &Tripwire{f: f, opts: opts, log: log, now: time.Now, denials: map[string][]time.Time{}, done: make(chan struct{})}
}

// RecordFailed notes a failure to record; RecordOK resets the run.
func (t *Tripwire) RecordFailed(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failures++
	if t.opts.RecordFailures > 0 && t.failures >= t.opts.RecordFailures {
		t.tripLocked("automatic", fmt.Sprintf("%d consecutive failures to record (last: %v)", t.failures, err))
	}
}

// RecordOK notes a successful record.
func (t *Tripwire) RecordOK() {
	t.mu.Lock()
	t.failures = 0
	t.mu.Unlock()
}

// Denied notes a refusal of principal.
func (t *Tripwire) Denied(principal, code string) {
	if t.opts.Denials <= 0 || principal == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	cut := now.Add(-t.opts.DenialWindow)
	recent := t.denials[principal][:0]
	for _, at := range t.denials[principal] {
		if at.After(cut) {
			recent = append(recent, at)
		}
	}
	recent = append(recent, now)
	t.denials[principal] = recent
	if len(recent) >= t.opts.Denials {
		t.tripLocked("automatic", fmt.Sprintf("%d denials of %s within %s (last: %s)", len(recent), principal, t.opts.DenialWindow, code))
	}
	// Forget quiet principals so the map stays bounded by the active ones.
	if len(t.denials) > 10000 {
		for p, ts := range t.denials {
			if len(ts) == 0 || ts[len(ts)-1].Before(cut) {
				delete(t.denials, p)
			}
		}
	}
}

func (t *Tripwire) tripLocked(by, reason string) {
	if t.tripped {
		return
	}
	t.tripped = true
	t.log.Error("TRIPWIRE: freezing the appliance", zap.String("reason", reason))
	go func() {
		defer close(t.done)
		if err := t.f.Freeze(context.Background(), by, reason); err != nil {
			t.log.Error("automatic freeze", zap.Error(err))
		}
	}()
}

// Rearm allows the tripwire to fire again (after the quorum unfroze).
func (t *Tripwire) Rearm() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tripped {
		<-t.done
		t.done = make(chan struct{})
	}
	t.tripped, t.failures = false, 0
	clear(t.denials)
}

// Tripped returns a channel closed once a tripped freeze completed (tests).
func (t *Tripwire) Tripped() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done
}
