package health

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// Notifier speaks the sd_notify protocol. Outside systemd (no
// NOTIFY_SOCKET) every call is a no-op.
type Notifier struct {
	log *zap.Logger
}

// NewNotifier returns a notifier that logs failures to log.
func NewNotifier(log *zap.Logger) *Notifier { return &Notifier{log: log} }

func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify failed", zap.String("state", state), zap.Error(err))
	}
}

// Ready tells systemd the service is listening.
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Stopping tells systemd shutdown has begun.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Status sets the one-line status shown by systemctl status.
func (n *Notifier) Status(s string) { n.send("STATUS=" + s) }

// During runs fn, a long step of start-up (the database's integrity check,
// which reads the whole file: minutes for a large one read from disk), and
// while it runs tells systemd every interval that start is still
// progressing: a STATUS line with the time so far, and EXTEND_TIMEOUT_USEC
// of three intervals, so a large database is not killed by TimeoutStartSec
// and restarted into the same check over and over. It returns fn's error
// and how long fn took.
func (n *Notifier) During(what string, every time.Duration, fn func() error) (time.Duration, error) {
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return time.Since(start), err
		case <-tick.C:
			so := time.Since(start).Round(time.Second)
			n.send(fmt.Sprintf("STATUS=%s (%s so far)\nEXTEND_TIMEOUT_USEC=%d", what, so, (3 * every).Microseconds()))
			n.log.Info("start-up step still running", zap.String("step", what), zap.Duration("so_far", so))
		}
	}
}

// DefaultMonitorInterval is how often health is probed when systemd's
// watchdog does not ask for more often. Probing matters even without a
// watchdog: an idle HSM module only notices a lost token when probed.
const DefaultMonitorInterval = 5 * time.Second

// Monitor runs a fresh health check every interval (at most half the
// systemd watchdog interval when one is set) until ctx ends. It pets the
// watchdog only after a passing run, so a hung HSM or a read-only store stops
// the petting and lets systemd restart the service; it logs and reports
// every change of state.
func (n *Notifier) Monitor(ctx context.Context, c *Checker, interval time.Duration) {
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("reading the watchdog interval", zap.Error(err))
	}
	if wd > 0 && wd/2 < interval {
		interval = wd / 2
	}
	if wd > 0 {
		n.log.Info("systemd watchdog enabled", zap.Duration("watchdog", wd), zap.Duration("probe_interval", interval))
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	last := StatusOK
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := c.Fresh(ctx)
		if ctx.Err() != nil {
			return
		}
		if wd > 0 && r.Healthy() {
			n.send(daemon.SdNotifyWatchdog)
		}
		if r.Status != last {
			fields := []zap.Field{zap.String("from", last), zap.String("to", r.Status), zap.Any("checks", r.Checks)}
			if r.Healthy() {
				n.log.Info("health changed", fields...)
			} else {
				n.log.Error("health changed: not petting the watchdog", fields...)
			}
			n.Status("health " + r.Status)
			last = r.Status
		}
	}
}
