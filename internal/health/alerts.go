package health

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	"go.uber.org/zap"
)

// Alerts remembers which named alerts are raised. Each transition is logged
// exactly once ("alert raised" with the reason, "alert cleared") and handed
// to the change callback (the appliance_alert{name} gauge), however often
// the underlying check runs. It is safe for concurrent use.
type Alerts struct {
	log      *zap.Logger
	onChange func(name string, raised bool)

	mu     sync.Mutex
	known  map[string]bool
	raised map[string]string // name → reason
}

// NewAlerts returns an empty set; onChange may be nil.
func NewAlerts(log *zap.Logger, onChange func(name string, raised bool)) *Alerts {
	if onChange == nil {
		onChange = func(string, bool) {}
	}
	return &Alerts{log: log, onChange: onChange, known: map[string]bool{}, raised: map[string]string{}}
}

// Register makes name known (reported as cleared) before it is first set.
func (a *Alerts) Register(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.known[name] {
		a.known[name] = true
		a.onChange(name, false)
	}
}

// Set raises name with err's text as the reason, or clears it for a nil
// err. It reports whether the state changed.
func (a *Alerts) Set(name string, err error) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.known[name] = true
	_, was := a.raised[name]
	switch {
	case err != nil && !was:
		a.raised[name] = err.Error()
		a.log.Warn("alert raised", zap.String("alert", name), zap.String("reason", err.Error()))
		a.onChange(name, true)
		return true
	case err == nil && was:
		reason := a.raised[name]
		delete(a.raised, name)
		a.log.Info("alert cleared", zap.String("alert", name), zap.String("was", reason))
		a.onChange(name, false)
		return true
	case err != nil:
		a.raised[name] = err.Error() // still raised: keep the latest reason, quietly
	}
	return false
}

// Raised returns the raised alerts and their latest reasons.
func (a *Alerts) Raised() map[string]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.raised)
}

// Names returns every known alert name, sorted.
func (a *Alerts) Names() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Sorted(maps.Keys(a.known))
}

// Check returns a non-critical check named name: while probe fails, the
// report is degraded with the probe's reason and the alert is raised; when
// it passes, the alert clears. A probe cut short because the caller went
// away (shutdown) changes nothing.
func (a *Alerts) Check(name string, probe func(ctx context.Context) error) Check {
	a.Register(name)
	return Check{Name: name, Probe: func(ctx context.Context) error {
		err := probe(ctx)
		if err != nil && errors.Is(ctx.Err(), context.Canceled) {
			return err
		}
		a.Set(name, err)
		return err
	}}
}
