package loadgen

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i + 1)
	}
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one", []time.Duration{7}, 0.99, 7},
		{"p50 of 1..100", hundred, 0.50, 50},
		{"p99 of 1..100", hundred, 0.99, 99},
		{"p100 of 1..100", hundred, 1, 100},
		{"tiny q is the minimum", hundred, 0.001, 1},
		{"p50 of four is the second", []time.Duration{1, 2, 3, 4}, 0.5, 2},
		{"p99 of four is the maximum", []time.Duration{1, 2, 3, 4}, 0.99, 4},
		{"p50 of three", []time.Duration{10, 20, 30}, 0.5, 20},
	} {
		if got := Percentile(tc.sorted, tc.q); got != tc.want {
			t.Errorf("%s: Percentile(q=%v) = %v, want %v", tc.name, tc.q, got, tc.want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
		want float64
	}{
		{"one", []float64{3}, 3},
		{"odd, unsorted", []float64{9, 1, 5}, 5},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"outlier does not move it", []float64{100, 101, 1e9}, 101},
		{"negative values", []float64{-3, -1, -2}, -2},
	} {
		in := slices.Clone(tc.xs)
		if got := Median(tc.xs); got != tc.want {
			t.Errorf("%s: Median(%v) = %v, want %v", tc.name, tc.xs, got, tc.want)
		}
		if !slices.Equal(in, tc.xs) {
			t.Errorf("%s: Median reordered its input", tc.name)
		}
	}
	if got := Median(nil); !math.IsNaN(got) {
		t.Errorf("Median(nil) = %v, want NaN", got)
	}
	if got := Median([]float64{1, math.NaN(), 3}); !math.IsNaN(got) {
		t.Errorf("Median with a NaN = %v, want NaN", got)
	}
}

func TestWindowKeepsCompletionsInsideBounds(t *testing.T) {
	samples := [][]sample{
		{{start: 0, end: 9}, {start: 5, end: 10}, {start: 10, end: 30}},    // ends before, at the start, inside
		{{start: 12, end: 50}, {start: 40, end: 51}, {start: 45, end: 49}}, // at the end, after, inside
	}
	got := window(samples, 10, 50)
	want := []time.Duration{4, 5, 20, 38} // 10-5, 49-45, 30-10, 50-12, ascending
	if !slices.Equal(got, want) {
		t.Fatalf("window = %v, want %v", got, want)
	}
}
