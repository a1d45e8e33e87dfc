package signing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/apierr"
)

// queued is the number of waiters in g.
func (g *fairGate) queued() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, f := range g.waiting {
		for w := f.head; w != nil; w = w.next {
			n++
		}
	}
	if n != g.nqueued {
		panic(fmt.Sprintf("fair gate: %d waiters linked, %d counted", n, g.nqueued))
	}
	return n
}

// idle reports whether every slot is free and nobody waits.
func (g *fairGate) idle() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.free == g.size && len(g.waiting) == 0
}

type grant struct {
	label   string
	release func()
	err     error
}

// enqueue starts a waiter named label (its principal is label's first
// letter) and returns once it is queued, so that the queue order is the
// call order. Its outcome arrives on got.
func enqueue(t *testing.T, g *fairGate, ctx context.Context, label string, got chan<- grant) {
	t.Helper()
	before := g.queued()
	go func() {
		release, err := g.Acquire(ctx, label[:1])
		got <- grant{label, release, err}
	}()
	for deadline := time.Now().Add(10 * time.Second); g.queued() == before; time.Sleep(50 * time.Microsecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never queued", label)
		}
	}
}

func acquireNow(t *testing.T, g *fairGate, principal string) func() {
	t.Helper()
	release, err := g.Acquire(context.Background(), principal)
	if err != nil {
		t.Fatal(err)
	}
	return release
}

// TestFairGateOrder: with every slot held, waiters queued in a known order
// are served in turns across principals and FIFO within each, one slot
// cycling through them.
func TestFairGateOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		slots   int
		holders string   // principals holding the slots, one letter each
		queue   []string // waiters in arrival order
		want    []string // the order slots are granted in
	}{{
		name: "a lone request overtakes the flooding principal's backlog", slots: 1, holders: "A",
		queue: []string{"A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9", "A10", "B1"},
		want:  []string{"B1", "A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9", "A10"},
	}, {
		name: "three principals take turns", slots: 1, holders: "A",
		queue: []string{"A1", "A2", "A3", "A4", "B1", "B2", "B3", "C1"},
		want:  []string{"B1", "C1", "A1", "B2", "A2", "B3", "A3", "A4"},
	}, {
		name: "FIFO within one principal", slots: 1, holders: "X",
		queue: []string{"A1", "A2", "A3", "A4", "A5"},
		want:  []string{"A1", "A2", "A3", "A4", "A5"},
	}, {
		name: "the holder's turn counts; equal turns go to the earlier arrival", slots: 1, holders: "B",
		queue: []string{"A1", "A2", "B1"},
		want:  []string{"A1", "A2", "B1"},
	}, {
		name: "every slot held counts", slots: 2, holders: "AA",
		queue: []string{"A1", "A2", "A3", "B1", "B2"},
		want:  []string{"B1", "A1", "B2", "A2", "A3"},
	}, {
		name: "two flooding principals alternate", slots: 1, holders: "A",
		queue: []string{"A1", "A2", "A3", "B1", "B2", "B3"},
		want:  []string{"B1", "A1", "B2", "A2", "B3", "A3"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFairGate(tc.slots, 0)
			var held []func()
			for _, p := range tc.holders {
				held = append(held, acquireNow(t, g, string(p)))
			}
			got := make(chan grant, len(tc.queue))
			for _, label := range tc.queue {
				enqueue(t, g, context.Background(), label, got)
			}
			select {
			case gr := <-got:
				t.Fatalf("%s was granted a slot while all were held", gr.label)
			case <-time.After(10 * time.Millisecond):
			}
			principals := map[byte]bool{}
			for _, label := range tc.queue {
				principals[label[0]] = true
			}
			if sig, pr := g.waits(); sig != len(tc.queue) || pr != len(principals) {
				t.Fatalf("waits() = %d signatures, %d principals; want %d, %d", sig, pr, len(tc.queue), len(principals))
			}
			held[0]()
			var order []string
			for range tc.queue {
				gr := <-got
				if gr.err != nil {
					t.Fatalf("%s: %v", gr.label, gr.err)
				}
				order = append(order, gr.label)
				gr.release()
			}
			if !slices.Equal(order, tc.want) {
				t.Fatalf("granted in order %v, want %v", order, tc.want)
			}
			for _, r := range held[1:] {
				r()
			}
			if !g.idle() {
				t.Fatal("slots missing or waiters left after everyone released")
			}
		})
	}
}

// TestFairGateCancelWhileQueued: a waiter whose context ends leaves the
// queue at once with the context's error and takes no slot; the others
// keep their order; the last one of a principal to leave is not charged a
// turn. One that outlasts the gate's bound gets errNoTurn.
func TestFairGateCancelWhileQueued(t *testing.T) {
	g := newFairGate(1, 0)
	hold := acquireNow(t, g, "H")
	got := make(chan grant, 8)
	serve := func(want ...string) {
		t.Helper()
		hold()
		for i, label := range want {
			gr := <-got
			if gr.label != label || gr.err != nil {
				t.Fatalf("granted %s (%v), want %s", gr.label, gr.err, label)
			}
			if i < len(want)-1 {
				gr.release()
			} else {
				hold = gr.release
			}
		}
	}
	gaveUp := func(label string) {
		t.Helper()
		if gr := <-got; gr.label != label || !errors.Is(gr.err, context.Canceled) || gr.release != nil {
			t.Fatalf("cancelled %s: %+v", label, gr)
		}
	}

	// From the middle of a queue.
	ctx, cancel := context.WithCancel(context.Background())
	enqueue(t, g, ctx, "A1", got)
	enqueue(t, g, context.Background(), "B1", got)
	enqueue(t, g, context.Background(), "A2", got)
	cancel()
	gaveUp("A1")
	if n := g.queued(); n != 2 {
		t.Fatalf("%d waiters after one left, want 2", n)
	}
	serve("B1", "A2")

	hold()
	if !g.idle() {
		t.Fatal("slots missing or waiters left")
	}

	// The last of its principal: A's next request starts in the current
	// round again, before C who queued after it (charged, A2 would be a
	// round behind C). A fresh gate: no turns taken before.
	g = newFairGate(1, 0)
	hold = acquireNow(t, g, "H")
	ctx, cancel = context.WithCancel(context.Background())
	enqueue(t, g, ctx, "A1", got)
	cancel()
	gaveUp("A1")
	enqueue(t, g, context.Background(), "B1", got)
	enqueue(t, g, context.Background(), "A2", got)
	enqueue(t, g, context.Background(), "C1", got)
	serve("B1", "A2", "C1")

	// Already cancelled: refused without queueing.
	if _, err := g.Acquire(ctx, "A"); !errors.Is(err, context.Canceled) || g.queued() != 0 {
		t.Fatalf("cancelled context: %v, %d queued", err, g.queued())
	}
	hold()
	if !g.idle() {
		t.Fatal("slots missing or waiters left")
	}

	// The gate's own bound.
	bounded := newFairGate(1, 20*time.Millisecond)
	holdB := acquireNow(t, bounded, "H")
	start := time.Now()
	if _, err := bounded.Acquire(context.Background(), "A"); !errors.Is(err, errNoTurn) || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("bounded wait: %v after %v", err, time.Since(start))
	}
	holdB()
	if !bounded.idle() {
		t.Fatal("slot missing after a wait that timed out")
	}
}

// TestFairGateHandoffRacesCancel: the slot is handed to a waiter at the
// moment its context ends. Whichever the waiter sees, the slot is not
// lost: it is returned to the caller, or passed on to the next waiter.
// Both outcomes must occur over the runs (select picks at random), so both
// paths are exercised.
func TestFairGateHandoffRacesCancel(t *testing.T) {
	var kept, passedOn int
	for i := 0; i < 300; i++ {
		g := newFairGate(2, 0)
		other := acquireNow(t, g, "H")
		acquireNow(t, g, "H") // released by hand below
		got := make(chan grant, 2)
		ctx, cancel := context.WithCancel(context.Background())
		enqueue(t, g, ctx, "A1", got)
		enqueue(t, g, context.Background(), "B1", got)
		// Cancel and hand off in one critical section: when the waiter
		// looks, its context is done and the slot is in its channel. A
		// waiter parked in select wakes on what came first: cancelled
		// first, it finds the slot granted and must pass it on; handed
		// the slot first, it keeps it.
		g.mu.Lock()
		if i%2 == 0 {
			cancel()
			g.releaseLocked()
		} else {
			g.releaseLocked()
			cancel()
		}
		g.mu.Unlock()

		// The two outcomes arrive in either order; a slot A1 kept is
		// given back at once, for B1.
		out := map[string]grant{}
		for range 2 {
			var gr grant
			select {
			case gr = <-got:
			case <-time.After(10 * time.Second):
				t.Fatalf("run %d: %d of 2 outcomes in 10s: the slot was lost", i, len(out))
			}
			out[gr.label] = gr
			if gr.label == "A1" && gr.err == nil {
				gr.release()
			}
		}
		switch a := out["A1"]; {
		case a.err == nil:
			kept++
		case errors.Is(a.err, context.Canceled):
			passedOn++
		default:
			t.Fatalf("A1: %v", a.err)
		}
		second := out["B1"]
		if second.err != nil {
			t.Fatalf("B1 after the race: %v", second.err)
		}
		second.release()
		other()
		if !g.idle() {
			t.Fatalf("run %d: a slot was lost (A1 kept it: %v)", i, out["A1"].err == nil)
		}
		// Every slot is still there.
		a, b := acquireNow(t, g, "X"), acquireNow(t, g, "Y")
		a()
		b()
	}
	if kept == 0 || passedOn == 0 {
		t.Fatalf("kept %d, passed on %d: both paths must be exercised", kept, passedOn)
	}
}

// TestFairGateNeverOverAdmits: many goroutines of several principals,
// some giving up early, never hold more than n slots together, and at the
// end every slot is free and nobody waits. Run with -race.
func TestFairGateNeverOverAdmits(t *testing.T) {
	const slots, workers, rounds = 3, 48, 200
	g := newFairGate(slots, time.Second)
	var in, peak, served, gaveUp atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			principal := string(rune('A' + w%5))
			for r := range rounds {
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if (w+r)%7 == 0 {
					ctx, cancel = context.WithTimeout(ctx, time.Duration(r%3)*50*time.Microsecond)
				}
				release, err := g.Acquire(ctx, principal)
				cancel()
				if err != nil {
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("%s: %v", principal, err)
						return
					}
					gaveUp.Add(1)
					continue
				}
				n := in.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				if r%4 == 0 {
					time.Sleep(10 * time.Microsecond)
				}
				in.Add(-1)
				served.Add(1)
				release()
			}
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > slots || p < slots {
		t.Fatalf("peak holders %d, want exactly %d", p, slots)
	}
	if !g.idle() {
		t.Fatal("slots missing or waiters left")
	}
	if served.Load()+gaveUp.Load() != workers*rounds {
		t.Fatalf("served %d + gave up %d != %d", served.Load(), gaveUp.Load(), workers*rounds)
	}
	t.Logf("served %d, gave up %d, flows kept %d", served.Load(), gaveUp.Load(), len(g.flows))
}

// TestFairGateForgetsIdlePrincipals: the per-principal map does not grow
// with every name ever seen.
func TestFairGateForgetsIdlePrincipals(t *testing.T) {
	g := newFairGate(1, 0)
	for i := range 10_000 {
		// Each acquires twice, so its tag runs ahead and the round moves.
		acquireNow(t, g, fmt.Sprint("p", i))()
		acquireNow(t, g, fmt.Sprint("p", i))()
	}
	if n := len(g.flows); n > 2*minSweep {
		t.Fatalf("%d flows kept after 10,000 idle principals", n)
	}
}

// recordingSigner is an HSM that answers at once.
type recordingSigner struct{ calls atomic.Int64 }

func (r *recordingSigner) Sign(context.Context, hsm.KeyRef, []byte) ([]byte, error) {
	r.calls.Add(1)
	return make([]byte, 64), nil
}
func (r *recordingSigner) KeyError([]byte) error { return nil }

// TestFairSignerWaitIsHSMUnavailable: a wait for a turn that ends, by the
// request's context or the gate's bound, is answered as the HSM's own
// session wait is (503 hsm_unavailable, "retry with the same idempotency
// key"), the HSM is not called, and the context's error is kept. With
// FairHSM off the HSM is used as is.
func TestFairSignerWaitIsHSMUnavailable(t *testing.T) {
	inner := &recordingSigner{}
	key := &Key{}
	want := apierr.From(func() error {
		_, err := hsmSign(context.Background(), failingSigner{fmt.Errorf("hsm: no free session within 5s: %w", hsm.ErrUnavailable)}, key, nil)
		return err
	}())

	s := &Service{}
	s.FairHSM(1, 30*time.Millisecond)
	hold, err := s.turns.Acquire(context.Background(), "other")
	if err != nil {
		t.Fatal(err)
	}
	h := s.fair(inner, "client")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for name, ctx := range map[string]context.Context{"context ended": ctx, "bound passed": context.Background()} {
		_, err := hsmSign(ctx, h, key, make([]byte, 32))
		ae := apierr.From(err)
		if ae.Status != http.StatusServiceUnavailable || ae.Code != want.Code || ae.Message != want.Message {
			t.Fatalf("%s: %d %s %q, want %d %s %q", name, ae.Status, ae.Code, ae.Message, want.Status, want.Code, want.Message)
		}
		if !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("%s: %v does not wrap hsm.ErrUnavailable", name, err)
		}
		if name == "context ended" && !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: %v does not keep the context's error", name, err)
		}
	}
	if inner.calls.Load() != 0 {
		t.Fatal("the HSM was called without a turn")
	}
	hold()
	if _, err := hsmSign(context.Background(), h, key, make([]byte, 32)); err != nil || inner.calls.Load() != 1 {
		t.Fatalf("with a turn free: %v, %d calls", err, inner.calls.Load())
	}
	if !s.turns.idle() {
		t.Fatal("the turn was not given back")
	}

	s.FairHSM(0, 0)
	if got := s.fair(inner, "client"); got != Signer(inner) {
		t.Fatalf("FairHSM(0): the HSM is wrapped (%T)", got)
	}
}

type failingSigner struct{ err error }

func (f failingSigner) Sign(context.Context, hsm.KeyRef, []byte) ([]byte, error) { return nil, f.err }
func (f failingSigner) KeyError([]byte) error                                    { return nil }

// BenchmarkFairGate: Acquire and release with a slot free (the common
// case: the HSM keeps up), and with 4 × GOMAXPROCS goroutines of 4
// principals contending for one slot (queued/op: the share of Acquires
// that waited and were handed the slot). "channel" is the same contention
// on a buffered channel of one, the HSM session pool's kind of queue, for
// scale: a hand-off costs a goroutine's park and wake-up either way.
func BenchmarkFairGate(b *testing.B) {
	b.Run("uncontended", func(b *testing.B) {
		g := newFairGate(4, time.Second)
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			release, err := g.Acquire(ctx, "spiffe://appliance.dev/client")
			if err != nil {
				b.Fatal(err)
			}
			release()
		}
	})
	names := []string{"spiffe://appliance.dev/a", "spiffe://appliance.dev/b", "spiffe://appliance.dev/c", "spiffe://appliance.dev/d"}
	b.Run("contended", func(b *testing.B) {
		g := newFairGate(1, time.Second)
		ctx := context.Background()
		var next atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			name := names[next.Add(1)%int64(len(names))]
			for pb.Next() {
				release, err := g.Acquire(ctx, name)
				if err != nil {
					b.Error(err)
					return
				}
				release()
			}
		})
		b.ReportMetric(float64(g.seq)/float64(b.N), "queued/op")
	})
	b.Run("channel", func(b *testing.B) {
		sem := make(chan struct{}, 1)
		b.ReportAllocs()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				sem <- struct{}{}
				<-sem
			}
		})
	})
}
