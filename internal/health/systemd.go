package health

import (
	"context"
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

// Watchdog pets the systemd watchdog at half its interval, but only after a
// fresh health run passes: a hung HSM or a read-only store stops the petting
// and lets systemd restart the service. It returns when ctx ends, at once
// when the watchdog is not enabled for this process.
func (n *Notifier) Watchdog(ctx context.Context, c *Checker) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	lastState := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := c.Fresh(ctx)
		if r.Healthy() {
			n.send(daemon.SdNotifyWatchdog)
		} else {
			n.log.Error("health check failed: not petting the watchdog", zap.Any("checks", r.Checks))
		}
		if r.Status != lastState {
			n.Status("health " + r.Status)
			lastState = r.Status
		}
	}
}
