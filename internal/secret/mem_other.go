//go:build !linux

package secret

// alloc returns heap memory: mapping, locking and dump exclusion are only
// wired up for Linux, the appliance's platform. Destroy still zeroes it.
func alloc(size int) allocation {
	if size == 0 {
		return allocation{}
	}
	return heapAllocation(size)
}

func (a allocation) free() { Wipe(a.mem) }
