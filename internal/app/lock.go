package app

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrAlreadyServing: another appliance process holds the database.
var ErrAlreadyServing = errors.New("another appliance is serving this database")

// serveLock is the exclusive lock one serving appliance holds on its
// database, as a lock file beside it (store.path + ".lock"). Two appliances
// on one database would each keep their own seal and freeze state, key
// registry and rate buckets in memory: an officer's freeze of one would not
// stop the other. The kernel releases the lock when the process ends,
// however it ends, so a lock file left behind never blocks a start.
type serveLock struct{ f *os.File }

// lockDatabase takes the lock for the database at path, or says which
// process holds it.
func lockDatabase(path string) (*serveLock, error) {
	name := path + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := ""
		if raw, rerr := os.ReadFile(name); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(raw))); perr == nil && pid > 0 {
				holder = fmt.Sprintf(" (pid %d)", pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("refusing to start: %w%s: %s is locked; stop it first, "+
				"or give this instance its own store.path and token", ErrAlreadyServing, holder, name)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	// The holder's pid, for the message above; the lock is what counts.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &serveLock{f: f}, nil
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
