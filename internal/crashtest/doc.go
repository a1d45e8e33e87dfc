// Package crashtest holds the crash consistency harness (issue 9;
// docs/RECOVERY.md, "Crash consistency"): TestCrashConsistency builds the
// real appliance, provisions an instance as scripts/dev.sh does, drives
// concurrent signing with idempotency keys over mutual TLS (the load
// generator's connections and bodies, internal/loadgen), kills the process
// with SIGKILL at random moments, restarts and unseals it, and checks after
// every kill that every answer a client received is committed with its
// audit entries, that replays return the same signed transaction, that the
// policy counters match the records, that the audit chain verifies offline
// and that SQLite's integrity_check is ok.
//
// The package has no code outside its tests; `go test ./internal/crashtest`
// runs the short version (20 kills, part of `make test`), `make soak` the
// long one. The test's options are environment variables:
//
//	CRASH_KILLS     number of SIGKILLs (default 20)
//	CRASH_DURATION  keep killing until this much time has passed (e.g. 10m)
//	CRASH_SEED      the seed of every random choice (default: the time); printed on failure
//	CRASH_CLIENTS   concurrent client connections (default 8)
//	CRASH_RACE      1: build the appliance with -race and fail on a reported data race
//	CRASH_DIR       work directory to use and keep (default: a temporary one, removed)
package crashtest
