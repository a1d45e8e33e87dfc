package loadgen

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the q-quantile (0 < q ≤ 1) of sorted, an ascending
// slice, by the nearest-rank method: the smallest value with at least q of
// the values at or below it. It returns 0 for an empty slice.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Median returns the median of xs (the mean of the two middle values for an
// even count), or NaN when xs is empty or holds a NaN. xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	for _, x := range s {
		if math.IsNaN(x) {
			return math.NaN()
		}
	}
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// epoch is the origin of the monotonic clock readings the runs record.
var epoch = time.Now()

// now reads the monotonic clock as an offset from epoch: 8 bytes a reading
// instead of a time.Time's 24.
func now() time.Duration { return time.Since(epoch) }

// sample is one completed operation: when it started and when it ended.
type sample struct{ start, end time.Duration }

// window keeps the samples that ended inside [from, to] and returns their
// latencies, ascending.
func window(samples [][]sample, from, to time.Duration) []time.Duration {
	var n int
	for _, w := range samples {
		n += len(w)
	}
	lat := make([]time.Duration, 0, n)
	for _, w := range samples {
		for _, s := range w {
			if s.end >= from && s.end <= to {
				lat = append(lat, s.end-s.start)
			}
		}
	}
	slices.Sort(lat)
	return lat
}
