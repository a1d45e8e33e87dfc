package health

import "golang.org/x/sys/unix"

// DiskSpace returns the bytes available to an unprivileged writer and the
// size of the filesystem holding path.
func DiskSpace(path string) (free, size uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}
