//go:build linux

package ceremony

import (
	"os"

	"golang.org/x/sys/unix"
)

// allocSecret returns a size-byte buffer outside the Go heap, locked into
// RAM (never swapped) and excluded from core dumps, plus the function that
// zeroes and unmaps it. The Go heap is avoided because the collector may
// copy or leave stale data behind, and madvise needs page-aligned memory.
// Locking and dump exclusion are best-effort: RLIMIT_MEMLOCK may forbid
// them, and a secret in ordinary memory still beats no unseal at all.
func allocSecret(size int) ([]byte, func()) {
	pageSize := os.Getpagesize()
	length := (size + pageSize - 1) / pageSize * pageSize
	mem, err := unix.Mmap(-1, 0, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return heapSecret(size)
	}
	_ = unix.Mlock(mem)
	_ = unix.Madvise(mem, unix.MADV_DONTDUMP)
	return mem[:size:size], func() {
		clear(mem)
		_ = unix.Munlock(mem)
		_ = unix.Munmap(mem)
	}
}
