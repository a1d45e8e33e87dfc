//go:build linux

package secret

import (
	"os"

	"golang.org/x/sys/unix"
)

// alloc maps size bytes (rounded up to whole pages; madvise and mlock work
// on pages) of anonymous private memory, excludes it from core dumps and
// locks it. mlock fails with EPERM or ENOMEM when RLIMIT_MEMLOCK is too
// small (EAGAIN when memory is short): the buffer is then kept unlocked,
// still excluded from dumps and still zeroed on Destroy.
func alloc(size int) allocation {
	if size == 0 {
		return allocation{}
	}
	page := os.Getpagesize()
	length := (size + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return heapAllocation(size)
	}
	a := allocation{mem: mem, mapped: true}
	a.dontDump = unix.Madvise(mem, unix.MADV_DONTDUMP) == nil
	a.locked = unix.Mlock(mem) == nil
	return a
}

// afterWipe, when set by a test, sees the mapping after it is zeroed and
// before it is unmapped: the only moment its contents can be checked.
var afterWipe func(mem []byte)

// free zeroes the memory, then unlocks and unmaps it. Zeroing comes first
// so the bytes are gone even if munmap were to fail.
func (a allocation) free() {
	Wipe(a.mem)
	if !a.mapped {
		return
	}
	if afterWipe != nil {
		afterWipe(a.mem)
	}
	if a.locked {
		_ = unix.Munlock(a.mem)
	}
	_ = unix.Munmap(a.mem)
}
