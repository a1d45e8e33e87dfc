package main

import (
	"os"
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
