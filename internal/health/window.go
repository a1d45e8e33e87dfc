package health

import (
	"math"
	"slices"
	"sync"
	"time"
)

// Window keeps the latest sign outcomes that needed the HSM, bounded both
// by count and by age, to judge latency and the HSM error rate "over the
// last N requests within the last T". It is safe for concurrent use; Add
// is O(1) and never blocks on anything but a short mutex.
type Window struct {
	max  int
	span time.Duration
	now  func() time.Time

	mu    sync.Mutex
	buf   []sample // ring of capacity max
	start int      // index of the oldest sample
	n     int      // samples held
}

type sample struct {
	at     time.Time
	took   time.Duration
	failed bool
}

// WindowStats summarises a window.
type WindowStats struct {
	Count    int           // outcomes held (successes and failures)
	Failures int           // outcomes that failed because of the HSM
	P50      time.Duration // over successes; 0 when there are none
	P99      time.Duration
	Max      time.Duration
}

// ErrorRate is Failures/Count, 0 for an empty window.
func (s WindowStats) ErrorRate() float64 {
	if s.Count == 0 {
		return 0
	}
	return float64(s.Failures) / float64(s.Count)
}

// NewWindow keeps at most maxSamples outcomes, none older than span.
func NewWindow(maxSamples int, span time.Duration) *Window {
	return newWindowAt(maxSamples, span, time.Now)
}

func newWindowAt(maxSamples int, span time.Duration, now func() time.Time) *Window {
	maxSamples = max(maxSamples, 1)
	return &Window{max: maxSamples, span: span, now: now, buf: make([]sample, maxSamples)}
}

// Add records one outcome: how long it took and whether it failed because
// of the HSM. Failures do not count towards latency.
func (w *Window) Add(took time.Duration, failed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	w.expireLocked(now)
	s := sample{at: now, took: took, failed: failed}
	if w.n == w.max {
		w.buf[w.start] = s
		w.start = (w.start + 1) % w.max
		return
	}
	w.buf[(w.start+w.n)%w.max] = s
	w.n++
}

func (w *Window) expireLocked(now time.Time) {
	cut := now.Add(-w.span)
	for w.n > 0 && w.buf[w.start].at.Before(cut) {
		w.buf[w.start] = sample{}
		w.start = (w.start + 1) % w.max
		w.n--
	}
}

// Stats summarises the outcomes still in the window.
func (w *Window) Stats() WindowStats {
	w.mu.Lock()
	w.expireLocked(w.now())
	st := WindowStats{Count: w.n}
	took := make([]time.Duration, 0, w.n)
	for i := 0; i < w.n; i++ {
		s := w.buf[(w.start+i)%w.max]
		if s.failed {
			st.Failures++
			continue
		}
		took = append(took, s.took)
	}
	w.mu.Unlock()
	slices.Sort(took)
	st.P50, st.P99 = Quantile(took, 0.50), Quantile(took, 0.99)
	if len(took) > 0 {
		st.Max = took[len(took)-1]
	}
	return st
}

// Quantile returns the q-quantile (0 < q <= 1) of sorted by the
// nearest-rank method: the smallest value with at least q of the values at
// or below it. It is 0 for an empty slice.
func Quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}
