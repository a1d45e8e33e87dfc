//go:build !linux

package health

import "errors"

// DiskSpace is only implemented on Linux, the appliance's platform.
func DiskSpace(string) (free, size uint64, err error) {
	return 0, 0, errors.ErrUnsupported
}
