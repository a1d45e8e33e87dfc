package api

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeLimiter(rate float64, burst, maxBuckets int) (*rateLimiter, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	l := newRateLimiter(rate, burst, maxBuckets)
	l.now = clk.now
	return l, clk
}

// TestRateLimiterTokenBucket: a burst, then the rate; Retry-After is the
// time to the next token; the warning is logged once a minute.
func TestRateLimiterTokenBucket(t *testing.T) {
	l, clk := newFakeLimiter(2, 3, 16)
	for i := range 3 {
		if ok, _, _ := l.allow("p"); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, retry, warn := l.allow("p")
	if ok || retry != 500*time.Millisecond || !warn {
		t.Fatalf("beyond the burst: ok %v retry %v warn %v, want refused, 500ms, warned", ok, retry, warn)
	}
	if ok, _, warn := l.allow("p"); ok || warn {
		t.Fatalf("second refusal: ok %v warn %v (warn once a minute)", ok, warn)
	}
	clk.add(250 * time.Millisecond) // half a token
	if ok, retry, _ := l.allow("p"); ok || retry != 250*time.Millisecond {
		t.Fatalf("half a token: ok %v retry %v", ok, retry)
	}
	clk.add(250 * time.Millisecond)
	if ok, _, _ := l.allow("p"); !ok {
		t.Fatal("a token after 500ms was refused")
	}
	// Another principal has its own bucket.
	if ok, _, _ := l.allow("q"); !ok {
		t.Fatal("another principal was refused")
	}
	clk.add(time.Hour) // refill caps at the burst
	n, warned := 0, false
	for {
		ok, _, warn := l.allow("p")
		if !ok {
			warned = warn
			break
		}
		n++
	}
	if n != 3 || !warned {
		t.Fatalf("after an hour idle, %d requests passed (want the burst 3), then warned %v (want a new warning)", n, warned)
	}
}

// TestRateLimiterTenThousandFromOnePrincipal: 10,000 requests at one
// instant pass exactly the burst and hold one bucket.
func TestRateLimiterTenThousandFromOnePrincipal(t *testing.T) {
	l, _ := newFakeLimiter(5000, 100, maxRateBuckets)
	passed := 0
	for range 10_000 {
		if ok, _, _ := l.allow("spiffe://appliance.dev/client"); ok {
			passed++
		}
	}
	if passed != 100 || l.len() != 1 {
		t.Fatalf("%d passed with %d buckets, want 100 and 1", passed, l.len())
	}
}

// TestRateLimiterBoundedMap: names beyond the cap never grow the map; they
// share the overflow bucket, active buckets are never dropped (no fresh
// burst for a principal that is being limited), idle ones are swept (at
// most once a second) to make room.
func TestRateLimiterBoundedMap(t *testing.T) {
	const maxB = 64
	l, clk := newFakeLimiter(10, 20, maxB)
	// The limited principal empties its bucket first.
	for range 20 {
		l.allow("hog")
	}
	if ok, _, _ := l.allow("hog"); ok {
		t.Fatal("hog not limited")
	}
	overflowPassed := 0
	for i := range 100_000 {
		ok, _, _ := l.allow(fmt.Sprintf("name-%d", i))
		if i >= maxB-1 && ok {
			overflowPassed++
		}
		if n := l.len(); n > maxB {
			t.Fatalf("after %d names the map holds %d buckets, cap %d", i+1, n, maxB)
		}
	}
	// 63 names got their own bucket; the other 99,937 shared the overflow
	// bucket's burst of 20.
	if overflowPassed != 20 {
		t.Fatalf("%d requests passed through the overflow bucket, want its burst 20", overflowPassed)
	}
	if ok, _, _ := l.allow("hog"); ok {
		t.Fatal("the limited principal got a fresh bucket while the map was full")
	}
	// Two seconds on (a full refill): idle buckets are swept, a new name
	// gets its own bucket again.
	clk.add(2 * time.Second)
	if ok, _, _ := l.allow("newcomer"); !ok || l.len() != 1 {
		t.Fatalf("after the buckets refilled: ok %v, %d buckets, want the newcomer alone", ok, l.len())
	}
}

// TestRateLimiterMemoryBounded: a million distinct names leave the heap
// where it was, give or take the capped map (secondary to the cap above).
func TestRateLimiterMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("a million names")
	}
	l := newRateLimiter(5000, 10_000, maxRateBuckets)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 1_000_000 {
		l.allow("spiffe://appliance.dev/stranger-" + fmt.Sprint(i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if l.len() > maxRateBuckets {
		t.Fatalf("%d buckets, cap %d", l.len(), maxRateBuckets)
	}
	if d := int64(after.HeapInuse) - int64(before.HeapInuse); d > 8<<20 {
		t.Fatalf("heap in use grew by %d bytes for a map capped at %d buckets", d, maxRateBuckets)
	}
	runtime.KeepAlive(l)
}

// TestInFlightBound: max slots, officers a reserve beyond, never more;
// concurrent acquirers never exceed the bound.
func TestInFlightBound(t *testing.T) {
	f := &inFlight{max: 3}
	for i := range 3 {
		if !f.acquire(false) {
			t.Fatalf("slot %d refused", i)
		}
	}
	if f.acquire(false) {
		t.Fatal("a fourth slot was granted")
	}
	for i := range OfficerReserve {
		if !f.acquire(true) {
			t.Fatalf("officer reserve slot %d refused", i)
		}
	}
	if f.acquire(true) || f.n.Load() != 3+OfficerReserve {
		t.Fatalf("beyond the reserve: %d in flight", f.n.Load())
	}
	for range 3 + OfficerReserve {
		f.release()
	}
	if f.n.Load() != 0 || f.peak.Load() != 3+OfficerReserve {
		t.Fatalf("after release: %d in flight, peak %d", f.n.Load(), f.peak.Load())
	}

	g := &inFlight{max: 8}
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 1000 {
				if g.acquire(false) {
					g.release()
				}
			}
		})
	}
	wg.Wait()
	if g.peak.Load() > 8 || g.n.Load() != 0 {
		t.Fatalf("concurrent: peak %d, left %d", g.peak.Load(), g.n.Load())
	}
}
