package main

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// gcSettings returns the GC percent and memory limit in effect.
func gcSettings() (int, int64) {
	pct := debug.SetGCPercent(-1)
	debug.SetGCPercent(pct)
	return pct, debug.SetMemoryLimit(-1)
}

// TestTuneGC: serve collects at GOGC=400 under a 96 MiB soft limit, unless
// GOGC or GOMEMLIMIT is in the environment: then the runtime's settings
// from it stay, untouched. Either way the log says which.
func TestTuneGC(t *testing.T) {
	pct0, limit0 := gcSettings()
	t.Cleanup(func() { debug.SetGCPercent(pct0); debug.SetMemoryLimit(limit0) })
	tests := []struct {
		name, env, value string
		// What the runtime applied at start: its defaults, or from env.
		runtimePct   int
		runtimeLimit int64
		wantPct      int
		wantLimit    int64
	}{
		{"defaults", "", "", 100, math.MaxInt64, serveGCPercent, serveMemoryLimit},
		{"GOGC set", "GOGC", "150", 150, math.MaxInt64, 150, math.MaxInt64},
		{"GOMEMLIMIT set", "GOMEMLIMIT", "1GiB", 100, 1 << 30, 100, 1 << 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GOGC", "") // empty: the runtime's default, as if unset
			t.Setenv("GOMEMLIMIT", "")
			if tt.env != "" {
				t.Setenv(tt.env, tt.value)
			}
			debug.SetGCPercent(tt.runtimePct)
			debug.SetMemoryLimit(tt.runtimeLimit)
			core, logs := observer.New(zap.InfoLevel)
			tuneGC(zap.New(core))
			if pct, limit := gcSettings(); pct != tt.wantPct || limit != tt.wantLimit {
				t.Errorf("GOGC %d, limit %d; want %d, %d", pct, limit, tt.wantPct, tt.wantLimit)
			}
			msg := "garbage collector settings"
			if tt.env != "" {
				msg += " from the environment"
			}
			if n := logs.FilterMessage(msg).Len(); n != 1 || logs.Len() != 1 {
				t.Errorf("logged %v, want one %q", logs.All(), msg)
			}
		})
	}
}

// TestTuneProcs: serve runs with one P per HSM session beyond the cores
// (at most three per core), unless GOMAXPROCS is in the environment.
func TestTuneProcs(t *testing.T) {
	procs0 := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(procs0) })
	tests := []struct {
		name, env   string
		cores, pool int
		want        int
		wantMessage string
	}{
		{"pool of 4 on 2 cores", "", 2, 4, 6, "scheduler settings"},
		{"pool of 1024 on 2 cores", "", 2, 1024, 8, "scheduler settings"},
		{"pool of 1 on 8 cores", "", 8, 1, 9, "scheduler settings"},
		{"GOMAXPROCS set", "3", 3, 4, 3, "scheduler settings from the environment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", tt.env)
			runtime.GOMAXPROCS(tt.cores) // what the runtime chose at start
			core, logs := observer.New(zap.InfoLevel)
			tuneProcs(zap.New(core), tt.pool)
			if got := runtime.GOMAXPROCS(0); got != tt.want {
				t.Errorf("GOMAXPROCS %d, want %d", got, tt.want)
			}
			if n := logs.FilterMessage(tt.wantMessage).Len(); n != 1 || logs.Len() != 1 {
				t.Errorf("logged %v, want one %q", logs.All(), tt.wantMessage)
			}
		})
	}
}
