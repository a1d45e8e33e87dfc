package secret

import (
	"fmt"
	"strings"
)

// Hardening is what Harden did and found, for the one log line at start.
// It holds no secret.
type Hardening struct {
	// CoreLimitZero: RLIMIT_CORE is 0, soft and hard; no core file can be
	// written and the process cannot raise the limit again.
	CoreLimitZero bool
	// NotDumpable: PR_GET_DUMPABLE is 0. The kernel writes no core dump
	// (not through a core_pattern pipe either), other processes of the same
	// user cannot ptrace the process or read /proc/<pid>/mem or environ,
	// and /proc/<pid> belongs to root.
	NotDumpable bool
	// MemlockLimit is RLIMIT_MEMLOCK (soft) in bytes; ^uint64(0) for unlimited.
	MemlockLimit uint64
	// LockWorks: a probe Buffer could be locked into RAM.
	LockWorks bool
	// Supported is false on platforms where none of this is wired up.
	Supported bool
}

// Complete reports whether core dumps are off by both means.
func (h Hardening) Complete() bool { return h.CoreLimitZero && h.NotDumpable }

// String summarises the hardening for a log line.
func (h Hardening) String() string {
	if !h.Supported {
		return "process hardening is not supported on this platform"
	}
	var parts []string
	if h.CoreLimitZero {
		parts = append(parts, "core dumps off (RLIMIT_CORE 0)")
	} else {
		parts = append(parts, "RLIMIT_CORE NOT zero")
	}
	if h.NotDumpable {
		parts = append(parts, "not dumpable (PR_SET_DUMPABLE 0)")
	} else {
		parts = append(parts, "STILL dumpable")
	}
	limit := "unlimited"
	if h.MemlockLimit != ^uint64(0) {
		limit = fmt.Sprintf("%d KiB", h.MemlockLimit/1024)
	}
	if h.LockWorks {
		parts = append(parts, "secret memory locked (RLIMIT_MEMLOCK "+limit+")")
	} else {
		parts = append(parts, "secret memory NOT locked: raise RLIMIT_MEMLOCK (now "+limit+"); still excluded from dumps and zeroed")
	}
	return strings.Join(parts, ", ")
}
