package screening

import (
	"context"
	"time"
)

// defaultWatchInterval is used when Watch is given a non-positive interval.
const defaultWatchInterval = 5 * time.Second

// Watch polls the list files every interval and reloads when one changes,
// until ctx ends. A change is noticed by modification time, size or
// existence; the content hash then decides whether it is a new version,
// so touching a file reloads nothing. Polling rather than inotify keeps
// this working for files replaced by rename, on network mounts and in
// containers; a rewrite that keeps both size and mtime is only picked up
// by the appliance on SIGHUP (Reload).
func (s *Screener) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = defaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if s.changed() {
				// Reload logs its own failures; the lists in force stay.
				_ = s.Reload()
			}
		}
	}
}

// changed reports whether any file's stat differs from the one observed at
// its last load attempt.
func (s *Screener) changed() bool {
	snap := s.snap.Load()
	for i, src := range s.sources {
		if statFile(src.Path) != snap.lists[i].seen {
			return true
		}
	}
	return false
}
