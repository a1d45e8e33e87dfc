package seal

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

type fakeFreezer struct {
	mu      sync.Mutex
	reasons []string
}

func (f *fakeFreezer) Freeze(_ context.Context, _, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reasons = append(f.reasons, reason)
	return nil
}

func (f *fakeFreezer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reasons)
}

func waitTripped(t *testing.T, tw *Tripwire) {
	t.Helper()
	select {
	case <-tw.Tripped():
	case <-time.After(5 * time.Second):
		t.Fatal("tripwire did not freeze")
	}
}

func TestTripwireConsecutiveRecordFailures(t *testing.T) {
	f := &fakeFreezer{}
	tw := NewTripwire(f, TripwireOptions{RecordFailures: 3}, zap.NewNop())
	boom := errors.New("disk I/O error")
	tw.RecordFailed(boom)
	tw.RecordFailed(boom)
	tw.RecordOK() // the run is broken: not consecutive
	tw.RecordFailed(boom)
	tw.RecordFailed(boom)
	if f.count() != 0 {
		t.Fatal("froze before three consecutive failures")
	}
	tw.RecordFailed(boom)
	waitTripped(t, tw)
	tw.RecordFailed(boom)
	if f.count() != 1 || !strings.Contains(f.reasons[0], "3 consecutive failures") {
		t.Fatalf("freezes: %v", f.reasons)
	}
	tw.Rearm()
	for i := 0; i < 3; i++ {
		tw.RecordFailed(boom)
	}
	waitTripped(t, tw)
	if f.count() != 2 {
		t.Fatal("rearmed tripwire did not fire again")
	}
}

func TestTripwireDenialBurstPerPrincipal(t *testing.T) {
	f := &fakeFreezer{}
	tw := NewTripwire(f, TripwireOptions{Denials: 5, DenialWindow: time.Minute}, zap.NewNop())
	now := time.Unix(1_700_000_000, 0)
	tw.now = func() time.Time { return now }
	// Spread out over more than the window: never five within a minute.
	for i := 0; i < 10; i++ {
		tw.Denied("spiffe://a", "forbidden")
		now = now.Add(20 * time.Second)
	}
	// Other principals do not add up.
	for _, p := range []string{"b", "c", "d", "e"} {
		tw.Denied(p, "forbidden")
	}
	if f.count() != 0 {
		t.Fatalf("froze on a slow or spread trickle: %v", f.reasons)
	}
	for i := 0; i < 5; i++ {
		tw.Denied("spiffe://burst", "policy_denied")
	}
	waitTripped(t, tw)
	if f.count() != 1 || !strings.Contains(f.reasons[0], "spiffe://burst") {
		t.Fatalf("freezes: %v", f.reasons)
	}
}

func TestTripwireDisabled(t *testing.T) {
	f := &fakeFreezer{}
	tw := NewTripwire(f, TripwireOptions{}, zap.NewNop())
	for i := 0; i < 100; i++ {
		tw.RecordFailed(errors.New("x"))
		tw.Denied("p", "forbidden")
	}
	time.Sleep(10 * time.Millisecond)
	if f.count() != 0 {
		t.Fatal("a disabled tripwire froze")
	}
}
