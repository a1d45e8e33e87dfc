package screening

import (
	"context"
	"os"
	"time"

	"go.uber.org/zap"
)

// defaultWatchInterval is used when Watch is given a non-positive interval.
const defaultWatchInterval = 5 * time.Second

// Watch polls the list files every interval and reloads when one changes,
// until ctx ends. A change is noticed by modification time, size or
// existence; the content hash then decides whether it is a new version,
// so touching a file reloads nothing. Polling rather than inotify keeps
// this working for files replaced by rename, on network mounts and in
// containers; a rewrite that keeps both size and mtime is only picked up
// by SIGHUP (ReloadOnSignal).
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

// ReloadOnSignal reloads every list each time sig delivers, until ctx ends
// or sig is closed. The caller owns the channel (signal.Notify(ch,
// syscall.SIGHUP)), so composition decides which signal means reload.
func (s *Screener) ReloadOnSignal(ctx context.Context, sig <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case got, ok := <-sig:
			if !ok {
				return
			}
			name := "<nil>"
			if got != nil {
				name = got.String()
			}
			s.log.Info("reloading known-risk lists on signal", zap.String("signal", name))
			// Failures are logged by Reload and shown in Versions.
			_ = s.Reload()
		}
	}
}
