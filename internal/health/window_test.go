package health

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestQuantileNearestRank(t *testing.T) {
	var hundred []time.Duration
	for i := 1; i <= 100; i++ {
		hundred = append(hundred, ms(i))
	}
	cases := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{"empty", nil, 0.99, 0},
		{"one", []time.Duration{ms(7)}, 0.99, ms(7)},
		{"one p50", []time.Duration{ms(7)}, 0.5, ms(7)},
		{"p99 of 100", hundred, 0.99, ms(99)},
		{"p50 of 100", hundred, 0.50, ms(50)},
		{"p100 of 100", hundred, 1, ms(100)},
		{"p99 of 10 is the max", hundred[:10], 0.99, ms(10)},
		{"p50 of 4", []time.Duration{ms(1), ms(2), ms(3), ms(4)}, 0.5, ms(2)},
		{"tiny q is the min", hundred, 0.0001, ms(1)},
	}
	for _, tc := range cases {
		if got := Quantile(tc.sorted, tc.q); got != tc.want {
			t.Errorf("%s: Quantile(q=%v) = %s, want %s", tc.name, tc.q, got, tc.want)
		}
	}
}

// fakeClock is a settable now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestWindowPercentilesAndErrorRate(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	w := newWindowAt(1000, time.Minute, clk.now)
	if st := w.Stats(); st.Count != 0 || st.P99 != 0 || st.ErrorRate() != 0 {
		t.Fatalf("empty window: %+v", st)
	}
	// Shuffled order: the window sorts.
	for i := 100; i >= 1; i-- {
		w.Add(ms(i), false)
	}
	for range 5 {
		w.Add(time.Hour, true) // failures: counted for the rate, not the latency
	}
	st := w.Stats()
	if st.Count != 105 || st.Failures != 5 {
		t.Fatalf("counts: %+v", st)
	}
	if st.P99 != ms(99) || st.P50 != ms(50) || st.Max != ms(100) {
		t.Fatalf("percentiles: %+v", st)
	}
	if r := st.ErrorRate(); r < 0.0476 || r > 0.0477 {
		t.Fatalf("error rate %v, want 5/105", r)
	}
}

func TestWindowEvictsByCount(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	w := newWindowAt(10, time.Hour, clk.now)
	for i := 1; i <= 25; i++ { // only 16..25 remain
		w.Add(ms(i), i%5 == 0)
	}
	st := w.Stats()
	if st.Count != 10 || st.Failures != 2 { // 20 and 25 failed
		t.Fatalf("after overflow: %+v", st)
	}
	// Successes held: 16,17,18,19,21,22,23,24 → p50 = 4th = 19ms, p99 = 24ms.
	if st.P50 != ms(19) || st.P99 != ms(24) {
		t.Fatalf("percentiles after overflow: %+v", st)
	}
}

func TestWindowEvictsByAge(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	w := newWindowAt(100, time.Minute, clk.now)
	w.Add(time.Second, false) // slow, old
	w.Add(time.Second, true)
	clk.advance(30 * time.Second)
	w.Add(ms(5), false)
	if st := w.Stats(); st.Count != 3 || st.P99 != time.Second {
		t.Fatalf("within the span: %+v", st)
	}
	clk.advance(31 * time.Second) // the first two are now 61 s old
	st := w.Stats()
	if st.Count != 1 || st.Failures != 0 || st.P99 != ms(5) {
		t.Fatalf("after the span: %+v", st)
	}
	clk.advance(time.Hour)
	if st := w.Stats(); st.Count != 0 || st.P99 != 0 {
		t.Fatalf("all expired: %+v", st)
	}
	// The ring keeps working after wrapping and emptying.
	for i := 1; i <= 150; i++ {
		w.Add(ms(i), false)
	}
	if st := w.Stats(); st.Count != 100 || st.P99 != ms(149) || st.P50 != ms(100) || st.Max != ms(150) {
		t.Fatalf("refilled: %+v", st)
	}
}

func TestWindowConcurrent(t *testing.T) {
	w := NewWindow(64, time.Minute)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				w.Add(ms(i%10), i%50 == 0)
				if i%100 == 0 {
					_ = w.Stats()
				}
			}
		}()
	}
	wg.Wait()
	if st := w.Stats(); st.Count != 64 {
		t.Fatalf("count %d, want the bound 64", st.Count)
	}
}

// TestAlertsTransitionsOnce: an alert is logged and reported once when
// raised and once when cleared, however often its check runs, and the
// check makes the report degraded, never down.
func TestAlertsTransitionsOnce(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	changes := map[string][]bool{}
	al := NewAlerts(zap.New(core), func(name string, raised bool) { changes[name] = append(changes[name], raised) })
	var failing error
	check := al.Check("latency", func(context.Context) error { return failing })
	if got := changes["latency"]; len(got) != 1 || got[0] {
		t.Fatalf("registration reports the alert cleared once: %v", got)
	}
	c := NewChecker(time.Second, 0, Check{Name: "hsm", Critical: true, Probe: func(context.Context) error { return nil }}, check)
	for i := 0; i < 5; i++ {
		if r := c.Run(context.Background()); r.Status != StatusOK {
			t.Fatalf("passing: %+v", r)
		}
	}
	for i := 0; i < 5; i++ {
		failing = errors.New("p99 too slow: " + ms(i+1).String()) // the reason may change while raised
		r := c.Run(context.Background())
		if r.Status != StatusDegraded || !r.Healthy() || r.Checks["latency"].OK || r.Checks["latency"].Detail != failing.Error() {
			t.Fatalf("failing: %+v", r)
		}
	}
	if raised := al.Raised(); raised["latency"] != "p99 too slow: 5ms" {
		t.Fatalf("raised: %v", raised)
	}
	failing = nil
	for i := 0; i < 3; i++ {
		c.Run(context.Background())
	}
	if got := changes["latency"]; len(got) != 3 || got[1] != true || got[2] != false {
		t.Fatalf("changes %v, want cleared, raised, cleared", got)
	}
	if n := logs.FilterMessage("alert raised").Len(); n != 1 {
		t.Fatalf("%d 'alert raised' lines, want 1", n)
	}
	raised := logs.FilterMessage("alert raised").All()[0].ContextMap()
	if raised["alert"] != "latency" || raised["reason"] != "p99 too slow: 1ms" {
		t.Fatalf("alert raised fields: %v", raised)
	}
	if n := logs.FilterMessage("alert cleared").Len(); n != 1 {
		t.Fatalf("%d 'alert cleared' lines, want 1", n)
	}
	if names := al.Names(); len(names) != 1 || names[0] != "latency" {
		t.Fatalf("names %v", names)
	}
}

// A probe cut short by the caller going away does not raise an alert.
func TestAlertsIgnoreCancellation(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	al := NewAlerts(zap.New(core), nil)
	check := al.Check("disk", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := check.Probe(ctx); err == nil {
		t.Fatal("a cancelled probe passed")
	}
	if len(al.Raised()) != 0 || logs.FilterMessage("alert raised").Len() != 0 {
		t.Fatal("cancellation raised an alert")
	}
	// A timeout is a real failure.
	tctx, tcancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer tcancel()
	_ = check.Probe(tctx)
	if _, ok := al.Raised()["disk"]; !ok {
		t.Fatal("a timed-out probe did not raise its alert")
	}
}

func TestDiskSpace(t *testing.T) {
	free, size, err := DiskSpace(t.TempDir())
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil || size == 0 || free > size {
		t.Fatalf("free %d, size %d, err %v", free, size, err)
	}
	if _, _, err := DiskSpace("/nonexistent/definitely"); err == nil {
		t.Fatal("no error for a missing path")
	}
}
