//go:build linux

package secret

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Harden turns core dumps off for the whole process: RLIMIT_CORE 0, soft and
// hard, and PR_SET_DUMPABLE 0. Both are process-wide (every thread) and
// inherited by nothing that matters: the appliance executes no programs
// (an execve resets dumpability; RLIMIT_CORE 0 would be inherited).
// Lowering a limit and clearing the flag need no privilege, so an error
// means a sandbox (seccomp) refused them; each step is still attempted and
// the report says what holds.
//
// What PR_SET_DUMPABLE 0 changes besides dumps, checked against what the
// appliance needs: the process still reads its own /proc/self files (the
// kernel always lets a thread group read its own); /proc/<pid>/stat, status,
// cmdline and cgroup stay world-readable, so systemd (which maps
// sd_notify's sender to the unit through /proc/<pid>/cgroup, as root),
// ps, pgrep, kill -HUP $MAINPID and the load generator's CPU and memory
// readings work; /proc/<pid>/fd, environ, mem, maps, smaps and io are
// refused to other unprivileged processes, and ptrace by them too. Root
// with CAP_SYS_PTRACE is not stopped.
func Harden() (Hardening, error) {
	h := Hardening{Supported: true}
	var errs []error
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		errs = append(errs, fmt.Errorf("setrlimit(RLIMIT_CORE, 0): %w", err))
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		errs = append(errs, fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err))
	}
	var core unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &core); err != nil {
		errs = append(errs, fmt.Errorf("getrlimit(RLIMIT_CORE): %w", err))
	} else {
		h.CoreLimitZero = core.Cur == 0 && core.Max == 0
	}
	dumpable, err := Dumpable()
	if err != nil {
		errs = append(errs, err)
	} else {
		h.NotDumpable = !dumpable
	}
	var memlock unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &memlock); err == nil {
		h.MemlockLimit = memlock.Cur
	}
	probe := New(1)
	h.LockWorks = probe.Locked()
	probe.Destroy()
	if len(errs) == 0 && !h.Complete() {
		errs = append(errs, errors.New("core dumps are still possible after hardening"))
	}
	return h, errors.Join(errs...)
}

// Dumpable reports the process's PR_GET_DUMPABLE flag.
func Dumpable() (bool, error) {
	v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		return false, fmt.Errorf("prctl(PR_GET_DUMPABLE): %w", err)
	}
	return v != 0, nil
}
