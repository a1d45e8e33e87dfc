package app

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/custodysigner/appliance/internal/store"
)

// ErrAlreadyServing: another appliance process holds the database.
var ErrAlreadyServing = errors.New("another appliance process holds this database")

// serveLock is the exclusive lock one appliance process holds on its
// database, as a lock file beside it (store.path + ".lock"). Two appliances
// on one database would each keep their own seal and freeze state, key
// registry and rate buckets in memory: an officer's freeze of one would not
// stop the other. The kernel releases the lock when the process ends,
// however it ends, so a lock file left behind never blocks anyone; the file
// is never removed (removing it would let two processes lock two files).
type serveLock struct{ f *os.File }

// lockDatabase takes the lock for the database at path to serve it, or
// says which process holds it.
func lockDatabase(path string) (*serveLock, error) {
	return takeLock(path, true, "refusing to start", "stop it first, or give this instance its own store.path and token")
}

// lockOffline takes the same lock for a command that changes an
// installation's database or token without the appliance (init over an
// existing database, keys create, policy set, restore, reshare), so that it
// never runs under a serving appliance: a migration, a replaced file or a
// new PIN under it. It locks wherever the lock file or the database exists
// (a database moved aside leaves the serving appliance's lock file); where
// neither does, no appliance can be serving and it takes nothing, leaving
// the directory as it was.
func lockOffline(path, command string) (*serveLock, error) {
	_, lockErr := os.Lstat(path + ".lock")
	if errors.Is(lockErr, os.ErrNotExist) && store.Existing(path) != nil {
		return nil, nil
	}
	return takeLock(path, false, command+" refused", "stop the appliance first (while it runs, officers make such changes as proposals)")
}

// takeLock takes the lock file's exclusive lock (creating the file when
// create), or explains whose it is.
func takeLock(path string, create bool, refused, advice string) (*serveLock, error) {
	name := path + ".lock"
	flags := os.O_RDONLY
	if create {
		flags |= os.O_CREATE
	}
	// Empty, and only opened for reading: 0644 lets the service's user lock
	// a file that a command run as root created (the database's directory
	// keeps everyone else out).
	f, err := os.OpenFile(name, flags, 0o644)
	if errors.Is(err, os.ErrNotExist) && !create {
		// The database without a lock file: create it after all.
		f, err = os.OpenFile(name, os.O_RDONLY|os.O_CREATE, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := lockHolder("/proc", f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w%s: %s is locked; %s", refused, ErrAlreadyServing, holder, name, advice)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return &serveLock{f: f}, nil
}

// lockHolder names the process holding an flock on f, from the kernel's
// lock table (procfs/locks), as " (pid N: appliance serve)"; empty when it
// cannot tell.
func lockHolder(procfs string, f *os.File) string {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return ""
	}
	dev := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	raw, err := os.ReadFile(filepath.Join(procfs, "locks"))
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(raw)) {
		// "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF"
		fs := strings.Fields(line)
		if len(fs) < 6 || fs[1] != "FLOCK" || fs[5] != dev {
			continue
		}
		pid, err := strconv.Atoi(fs[4])
		if err != nil || pid <= 0 {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join(procfs, strconv.Itoa(pid), "cmdline"))
		args := strings.Fields(string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
		if len(args) > 2 {
			args = args[:2]
		}
		if len(args) > 0 {
			args[0] = filepath.Base(args[0])
			return fmt.Sprintf(" (pid %d: %s)", pid, strings.Join(args, " "))
		}
		return fmt.Sprintf(" (pid %d)", pid)
	}
	return ""
}

// release drops the lock (closing the file is enough; the file stays).
func (l *serveLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
