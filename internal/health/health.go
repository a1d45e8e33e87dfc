// Package health judges whether the appliance can do its job, for
// /v1/health, for /v1/status and for the systemd watchdog. The watchdog is
// petted only while the appliance could actually sign: an HSM session is
// usable and the store accepts a write.
package health

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Status values of /v1/health.
const (
	StatusOK       = "ok"
	StatusDegraded = "degraded"
	StatusDown     = "down"
)

// Degraded wraps err so that even a critical check counts only as degraded:
// for intended states such as "sealed" or "frozen", in which the appliance
// is working as designed and must not be restarted by the watchdog.
func Degraded(err error) error { return degradedError{err} }

type degradedError struct{ error }

func (d degradedError) Unwrap() error { return d.error }

// Check is one named probe. Critical probes failing make the appliance
// "down"; others make it "degraded".
type Check struct {
	Name     string
	Critical bool
	Probe    func(ctx context.Context) error
}

// Result of one check.
type Result struct {
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Report is the answer of Checker.Run.
type Report struct {
	Status string            `json:"status"`
	Checks map[string]Result `json:"checks"`
	At     time.Time         `json:"-"`
}

// Healthy reports whether every critical check passed.
func (r Report) Healthy() bool { return r.Status != StatusDown }

// Checker runs checks, caching the last report briefly so a flood of
// health requests cannot turn into a flood of HSM and store probes.
type Checker struct {
	checks  []Check
	timeout time.Duration
	maxAge  time.Duration

	mu   sync.Mutex
	last Report
}

// NewChecker returns a checker; each probe gets timeout, and a report is
// reused for maxAge.
func NewChecker(timeout, maxAge time.Duration, checks ...Check) *Checker {
	return &Checker{checks: checks, timeout: timeout, maxAge: maxAge}
}

// Run returns a report no older than maxAge.
func (c *Checker) Run(ctx context.Context) Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.last.At.IsZero() && time.Since(c.last.At) < c.maxAge {
		return c.last
	}
	c.last = c.runLocked(ctx)
	return c.last
}

// Fresh runs every check now, bypassing the cache.
func (c *Checker) Fresh(ctx context.Context) Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = c.runLocked(ctx)
	return c.last
}

func (c *Checker) runLocked(ctx context.Context) Report {
	r := Report{Status: StatusOK, Checks: make(map[string]Result, len(c.checks)), At: time.Now()}
	for _, ch := range c.checks {
		pctx, cancel := context.WithTimeout(ctx, c.timeout)
		err := ch.Probe(pctx)
		cancel()
		if err == nil {
			r.Checks[ch.Name] = Result{OK: true}
			continue
		}
		r.Checks[ch.Name] = Result{OK: false, Detail: err.Error()}
		var d degradedError
		if ch.Critical && !errors.As(err, &d) {
			r.Status = StatusDown
		} else if r.Status == StatusOK {
			r.Status = StatusDegraded
		}
	}
	return r
}
