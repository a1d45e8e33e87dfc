//go:build !linux

package ceremony

// allocSecret returns an ordinary heap buffer: locking and dump exclusion
// are only wired up for Linux, the appliance's platform.
func allocSecret(size int) ([]byte, func()) { return heapSecret(size) }
