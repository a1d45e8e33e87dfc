//go:build linux

// Package secrettest looks at a process from outside, through /proc, as the
// hardening tests of internal/secret and cmd/appliance do on a child
// process, and copies a test binary where another user may run it. Only
// tests import it.
package secrettest

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// CoreLimits reads "Max core file size" (soft, hard) from /proc/<pid>/limits.
func CoreLimits(t testing.TB, pid string) (soft, hard string) {
	t.Helper()
	raw, err := os.ReadFile("/proc/" + pid + "/limits")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max core file size"); ok {
			if f := strings.Fields(rest); len(f) >= 2 {
				return f[0], f[1]
			}
		}
	}
	t.Fatalf("no core limit in /proc/%s/limits", pid)
	return "", ""
}

// ProcOwner is the owner of /proc/<pid>: root for a process that is not
// dumpable, whoever runs it.
func ProcOwner(t testing.TB, pid string) uint32 {
	t.Helper()
	fi, err := os.Stat("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Uid
}

// CopyForOthers copies the executable src to name in a fresh directory
// (os.MkdirTemp with pattern) that other users may enter, and returns the
// copy's path. Removing the directory is the caller's job.
func CopyForOthers(t testing.TB, src, pattern, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	err = os.Chmod(dir, 0o755)
	var raw []byte
	if err == nil {
		raw, err = os.ReadFile(src)
	}
	if err == nil {
		err = os.WriteFile(bin, raw, 0o755)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatal(err)
	}
	return bin
}
