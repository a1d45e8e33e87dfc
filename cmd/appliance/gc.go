package main

import (
	"os"
	"runtime"
	"runtime/debug"

	"go.uber.org/zap"
)

// The serving process keeps little alive (a few MiB: keys, caches, the
// requests in flight) and allocates some 40 KiB per signature, so with the
// default GOGC=100 it collected every few MiB, several times a second under
// load: 32 µs of CPU per signature at c8, 8 µs with these settings
// (docs/BENCHMARKS.md, "Profile of the signing path, second pass").
// GOGC=400 lets the heap grow to five times what is live before collecting:
// a quarter of the collections, for a heap in the tens of MiB. The soft
// limit keeps a heap that is live beyond what was measured from growing
// fivefold: from 96 MiB the collector runs as often as it must, which is
// never more often than the default GOGC=100 would while less than 48 MiB
// is live.
const (
	serveGCPercent   = 400
	serveMemoryLimit = 96 << 20
)

// tuneGC applies the serving process's GC settings and logs them, unless the
// operator set GOGC or GOMEMLIMIT: the runtime has applied those already,
// and they are logged instead.
func tuneGC(log *zap.Logger) {
	if gogc, limit := os.Getenv("GOGC"), os.Getenv("GOMEMLIMIT"); gogc != "" || limit != "" {
		log.Info("garbage collector settings from the environment", zap.String("GOGC", gogc), zap.String("GOMEMLIMIT", limit))
		return
	}
	debug.SetGCPercent(serveGCPercent)
	debug.SetMemoryLimit(serveMemoryLimit)
	log.Info("garbage collector settings", zap.Int("gogc", serveGCPercent), zap.Int64("memory_limit_bytes", serveMemoryLimit))
}

// tuneProcs gives the Go scheduler one P per HSM session beyond the cores
// it would use (at most four times as many), unless the operator set
// GOMAXPROCS. A C_Sign call runs about half a millisecond in SoftHSM, and
// while it does, its P is held in the cgo call: the goroutines queued on it
// (typically the callers a group commit has just answered) wait until the
// runtime's monitor takes the P back. With all of the cores' Ps inside the
// pool's calls, a trace of the c8 bench showed 2.4 goroutines on average
// runnable but not running, mostly callers the group commit had just woken.
// Extra Ps let that Go work run beside the calls; the kernel still shares
// the same cores between all the threads.
// Measured at c8 (docs/BENCHMARKS.md, "third pass"): +9 % signatures per
// second, −40 µs of CPU per signature, in each of five interleaved pairs.
func tuneProcs(log *zap.Logger, poolSize int) {
	if env := os.Getenv("GOMAXPROCS"); env != "" {
		log.Info("scheduler settings from the environment", zap.String("GOMAXPROCS", env))
		return
	}
	cores := runtime.GOMAXPROCS(0)
	procs := cores + min(max(poolSize, 0), 3*cores)
	runtime.GOMAXPROCS(procs)
	log.Info("scheduler settings", zap.Int("gomaxprocs", procs), zap.Int("cores", cores), zap.Int("hsm_pool_size", poolSize))
}
