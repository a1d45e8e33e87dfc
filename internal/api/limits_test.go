package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/health"
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

// TestRateLimiterOutOfOrderClock: callers read the clock before taking the
// lock, so one may arrive with an earlier time than the last; that must
// not move the bucket's time back and credit the same interval twice.
func TestRateLimiterOutOfOrderClock(t *testing.T) {
	l, clk := newFakeLimiter(1, 1, 16)
	if ok, _, _ := l.allow("p"); !ok {
		t.Fatal("the burst was refused")
	}
	clk.add(-time.Second) // a caller that read the clock a second earlier
	if ok, _, _ := l.allow("p"); ok {
		t.Fatal("an out-of-order caller got a token")
	}
	clk.add(1500 * time.Millisecond) // half a second after the first
	if ok, retry, _ := l.allow("p"); ok || retry != 500*time.Millisecond {
		t.Fatalf("half a second after the burst: ok %v retry %v, want refused for 500ms more", ok, retry)
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

// TestPrincipalInFlightBound: each name has limit slots of its own, a
// release gives one back and drops the entry at zero (the map holds only
// principals with requests in flight), and concurrent acquirers never take
// more than limit of one name.
func TestPrincipalInFlightBound(t *testing.T) {
	var p principalInFlight
	for i := range 2 {
		if !p.acquire("a", 2) {
			t.Fatalf("slot %d of a refused", i)
		}
	}
	if p.acquire("a", 2) {
		t.Fatal("a third slot of a was granted")
	}
	if !p.acquire("b", 2) {
		t.Fatal("b refused while a is at its bound")
	}
	if p.of("a") != 2 || p.of("b") != 1 || p.len() != 2 {
		t.Fatalf("a %d, b %d, %d principals", p.of("a"), p.of("b"), p.len())
	}
	p.release("a")
	if !p.acquire("a", 2) {
		t.Fatal("a released slot was not given back")
	}
	p.release("a")
	p.release("a")
	p.release("b")
	if p.len() != 0 {
		t.Fatalf("%d entries left after every release", p.len())
	}

	var q principalInFlight
	const limit = 3
	var held [4]atomic.Int64
	var peak [4]atomic.Int64
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			i := g % len(held)
			name := fmt.Sprint("p", i)
			for range 500 {
				if !q.acquire(name, limit) {
					continue
				}
				n := held[i].Add(1)
				for m := peak[i].Load(); n > m && !peak[i].CompareAndSwap(m, n); m = peak[i].Load() {
				}
				held[i].Add(-1)
				q.release(name)
			}
		})
	}
	wg.Wait()
	for i := range peak {
		if peak[i].Load() > limit {
			t.Errorf("p%d: %d in flight at once, limit %d", i, peak[i].Load(), limit)
		}
	}
	if q.len() != 0 {
		t.Fatalf("concurrent: %d entries left", q.len())
	}
}

// limitsServer is a Server whose GET /v1/status does what the test says:
// wait until released or the caller goes away ("hold"), panic, or answer.
// Principals: a and b (clients), o (officer).
type limitsServer struct {
	*Server
	mode    atomic.Value // "hold", "panic" or "" (answer at once)
	holding atomic.Int64 // handlers holding now
	release chan struct{}
}

func newLimitsServer(t *testing.T, h config.HTTP) *limitsServer {
	t.Helper()
	ls := &limitsServer{release: make(chan struct{})}
	ls.mode.Store("")
	reg := access.NewRegistry([]config.Principal{
		{Name: "a", Roles: []string{"client"}}, {Name: "b", Roles: []string{"client"}}, {Name: "o", Roles: []string{"officer"}},
	})
	srv, err := New(Deps{Log: zap.NewNop(), Access: reg, Signer: struct{ Signer }{}, Keys: struct{ Keys }{},
		Health: health.NewChecker(time.Second, time.Second), Seal: struct{ Seal }{}, TLS: &tls.Config{}, HTTP: h,
		Status: func(ctx context.Context) any {
			switch ls.mode.Load() {
			case "hold":
				ls.holding.Add(1)
				defer ls.holding.Add(-1)
				select {
				case <-ls.release:
				case <-ctx.Done():
				}
			case "panic":
				panic("handler bug")
			}
			return map[string]bool{"ok": true}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ls.Server = srv
	return ls
}

// call sends one request as principal (the subject CN of its verified
// certificate) through the whole middleware chain.
func (ls *limitsServer) call(ctx context.Context, principal, path string) *httptest.ResponseRecorder {
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{Subject: pkix.Name{CommonName: principal}}}}
	w := httptest.NewRecorder()
	ls.Handler().ServeHTTP(w, r)
	return w
}

func errCode(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var b struct {
		Error struct{ Code string } `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
		t.Fatalf("%d %q: %v", w.Code, w.Body, err)
	}
	return b.Error.Code
}

// hold starts n requests of principal that stay in the handler until
// ls.release is closed or their context is cancelled, and waits until
// they are in flight. done is closed when all have been answered.
func (ls *limitsServer) hold(t *testing.T, ctx context.Context, principal string, n int) (done chan struct{}) {
	t.Helper()
	ls.mode.Store("hold")
	holding := ls.holding.Load()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { ls.call(ctx, principal, "/v1/status") })
	}
	done = make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for ls.holding.Load() != holding+int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d held in the handler, want %d", principal, ls.holding.Load(), holding+int64(n))
		}
		time.Sleep(time.Millisecond)
	}
	ls.mode.Store("")
	return done
}

func waitClosed(t *testing.T, done chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("held requests not answered")
	}
}

// TestPerPrincipalInFlight: through the server's middleware, a principal at
// http.max_in_flight_per_principal is refused 429 too_many_in_flight with
// Retry-After at once while another principal is served; its slots come
// back on every path — an answer, an error, a panic recovered, the caller
// gone — and exactly: afterwards it holds its bound again, no more.
// Officers have the reserve above their own bound too.
func TestPerPrincipalInFlight(t *testing.T) {
	ls := newLimitsServer(t, config.HTTP{MaxInFlight: 64, MaxInFlightPerPrincipal: 2})
	ctx := context.Background()
	gone, leave := context.WithCancel(ctx)
	leftEarly := ls.hold(t, gone, "a", 1)
	answered := ls.hold(t, ctx, "a", 1)

	start := time.Now()
	w := ls.call(ctx, "a", "/v1/status")
	if w.Code != http.StatusTooManyRequests || errCode(t, w) != CodeTooManyInFlight || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("a beyond its bound: %d %s Retry-After %q", w.Code, w.Body, w.Header().Get("Retry-After"))
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the refusal took %v: it must not queue", took)
	}
	if w := ls.call(ctx, "b", "/v1/status"); w.Code != http.StatusOK {
		t.Fatalf("b while a is at its bound: %d %s", w.Code, w.Body)
	}

	released := func(path string) {
		t.Helper()
		if n, st := ls.InFlightOf("a"), ls.Limits(); n != 0 || st.InFlight != 0 || st.Principals != 0 {
			t.Fatalf("after %s: a has %d in flight, %+v", path, n, st)
		}
	}
	leave() // the caller goes away
	waitClosed(t, leftEarly)
	if n := ls.InFlightOf("a"); n != 1 {
		t.Fatalf("after the caller left: a has %d in flight, want 1", n)
	}
	close(ls.release) // the other is answered
	waitClosed(t, answered)
	released("an answer and a caller gone")

	if w := ls.call(ctx, "a", "/v1/nowhere"); w.Code != http.StatusNotFound {
		t.Fatalf("error path: %d %s", w.Code, w.Body)
	}
	released("an error")
	ls.mode.Store("panic")
	if w := ls.call(ctx, "a", "/v1/status"); w.Code != http.StatusInternalServerError || errCode(t, w) != "internal" {
		t.Fatalf("panic path: %d %s", w.Code, w.Body)
	}
	released("a panic")
	ls.mode.Store("")

	// Exactly the bound again: nothing leaked, nothing given back twice.
	ls.release = make(chan struct{})
	again := ls.hold(t, ctx, "a", 2)
	if w := ls.call(ctx, "a", "/v1/status"); w.Code != http.StatusTooManyRequests {
		t.Fatalf("a beyond its bound after every path: %d %s", w.Code, w.Body)
	}
	close(ls.release)
	waitClosed(t, again)
	released("the second round")

	// An officer may go OfficerReserve beyond its own bound, no further.
	ls.release = make(chan struct{})
	officer := ls.hold(t, ctx, "o", 2+OfficerReserve)
	if w := ls.call(ctx, "o", "/v1/status"); w.Code != http.StatusTooManyRequests || errCode(t, w) != CodeTooManyInFlight {
		t.Fatalf("officer beyond bound and reserve: %d %s", w.Code, w.Body)
	}
	close(ls.release)
	waitClosed(t, officer)
}

// TestPerPrincipalInFlightOffAndGlobal: a negative bound is off (one
// principal may take every global slot, the old behaviour); with both
// bounds, a principal refused its own bound takes no global slot, and the
// global bound still answers 503 overloaded to a principal under its own.
func TestPerPrincipalInFlightOffAndGlobal(t *testing.T) {
	ctx := context.Background()
	off := newLimitsServer(t, config.HTTP{MaxInFlight: 3, MaxInFlightPerPrincipal: -1})
	held := off.hold(t, ctx, "a", 3)
	if w := off.call(ctx, "a", "/v1/status"); w.Code != http.StatusServiceUnavailable || errCode(t, w) != CodeOverloaded {
		t.Fatalf("bound off, server full: %d %s", w.Code, w.Body)
	}
	if st := off.Limits(); st.Principals != 0 {
		t.Fatalf("bound off, yet %d principals counted", st.Principals)
	}
	close(off.release)
	waitClosed(t, held)

	both := newLimitsServer(t, config.HTTP{MaxInFlight: 3, MaxInFlightPerPrincipal: 2})
	heldA := both.hold(t, ctx, "a", 2)
	heldB := both.hold(t, ctx, "b", 1)
	if w := both.call(ctx, "a", "/v1/status"); w.Code != http.StatusTooManyRequests || errCode(t, w) != CodeTooManyInFlight {
		t.Fatalf("a at its bound, server full: %d %s", w.Code, w.Body)
	}
	if w := both.call(ctx, "b", "/v1/status"); w.Code != http.StatusServiceUnavailable || errCode(t, w) != CodeOverloaded {
		t.Fatalf("b under its bound, server full: %d %s", w.Code, w.Body)
	}
	if w := both.call(ctx, "o", "/v1/health"); w.Code != http.StatusOK {
		t.Fatalf("officer on the reserve: %d %s", w.Code, w.Body)
	}
	if st := both.Limits(); st.InFlight != 3 || st.PeakInFlight != 4 || both.InFlightOf("b") != 1 {
		t.Fatalf("refusals left slots taken: %+v, b %d", st, both.InFlightOf("b"))
	}
	close(both.release)
	waitClosed(t, heldA)
	waitClosed(t, heldB)
	if st := both.Limits(); st.InFlight != 0 || st.Principals != 0 {
		t.Fatalf("after all answered: %+v", st)
	}
}
