package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/metrics"
	"github.com/custodysigner/appliance/internal/store"
)

// signRoute is the route whose answers feed the sign latency histogram and
// the health window, with each request of a batch.
const signRoute = http.MethodPost + " /v1/sign"

// batchItemRoute is the route label of the requests inside POST
// /v1/sign/batch calls in appliance_requests_total (the calls themselves
// are counted under their own route).
const batchItemRoute = http.MethodPost + " /v1/sign/batch (request)"

// scrapeTimeout bounds the store and HSM readings of one scrape.
const scrapeTimeout = 2 * time.Second

// Alert names (appliance_alert{name}, the checks of /v1/health).
const (
	alertSignLatency      = "sign_latency"
	alertHSMErrorRate     = "hsm_error_rate"
	alertDiskSpace        = "disk_space"
	alertAuditCheckpoint  = "audit_checkpoint"
	alertDBSize           = "db_size"
	alertPendingApprovals = "pending_approvals"
)

// observability is the appliance's metrics, the window of recent sign
// outcomes the thresholds judge, and the alerts they raise.
type observability struct {
	metrics  *metrics.Metrics
	window   *health.Window
	alerts   *health.Alerts
	rebuilds rebuildCounter
}

func newObservability(a *App) *observability {
	o := &observability{
		metrics: metrics.New(a.version, string(a.cfg.Mode)),
		window:  health.NewWindow(a.cfg.Health.WindowRequests, a.cfg.Health.Window.D()),
	}
	o.alerts = health.NewAlerts(a.log.Named("alerts"), o.metrics.SetAlert)
	o.metrics.Collect(a.metricsSnapshot, scrapeTimeout)
	return o
}

// observe hears every answered API request, and every request of a batch.
func (o *observability) observe(out api.Outcome) {
	route, sign := out.Route, out.Route == signRoute
	if out.BatchItem {
		route, sign = batchItemRoute, true
	}
	signed := sign && out.Status == http.StatusOK
	o.metrics.ObserveRequest(metrics.Request{Route: route, Code: out.Code, Chain: out.Chain, Took: out.Took, Signed: signed})
	if !sign {
		return
	}
	switch {
	case signed:
		o.window.Add(out.Took, false)
	case out.Code == metrics.CodeHSMUnavailable:
		o.window.Add(out.Took, true)
	}
}

// rebuildCounter turns the open module's rebuild counts, which restart at
// every unseal, into counters over the life of the process.
type rebuildCounter struct {
	mu                   sync.Mutex
	mod                  *hsm.Module
	lastOK, lastFailed   uint64
	totalOK, totalFailed uint64
}

func (r *rebuildCounter) update(m *hsm.Module, h hsm.Health) (ok, failed uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m != nil {
		if m != r.mod {
			r.mod, r.lastOK, r.lastFailed = m, 0, 0
		}
		if h.Rebuilds >= r.lastOK {
			r.totalOK += h.Rebuilds - r.lastOK
		}
		if h.RebuildFailures >= r.lastFailed {
			r.totalFailed += h.RebuildFailures - r.lastFailed
		}
		r.lastOK, r.lastFailed = h.Rebuilds, h.RebuildFailures
	}
	return r.totalOK, r.totalFailed
}

// metricsSnapshot reads, at scrape time, what the gauges show. Store
// readings go to the read pool (WAL: they never wait for the writer) and
// are bounded by ctx; the HSM is asked only for its pool counters.
func (a *App) metricsSnapshot(ctx context.Context) metrics.Snapshot {
	st := a.seal.State()
	s := metrics.Snapshot{Sealed: st.Sealed, Frozen: st.Frozen}
	m := a.currentModule()
	var h hsm.Health
	if m != nil {
		h = m.Health()
		s.HSMHealthy, s.HSMPoolSize, s.HSMInUse, s.HSMWaiters = h.Healthy, h.PoolSize, h.InUse, h.Waiters
	}
	s.HSMTurnWaiters, s.HSMTurnPrincipals = a.signer.HSMTurnWaits()
	s.HSMRebuilds, s.HSMRebuildFailures = a.obs.rebuilds.update(m, h)
	fail := func(part string, err error) {
		s.Failed = append(s.Failed, part)
		a.log.Debug("metrics: reading failed", zap.String("part", part), zap.Error(err))
	}
	if n, err := a.store.CountRequests(ctx, store.StatePendingApproval); err == nil {
		s.PendingApprovals = metrics.Some(n)
	} else {
		fail("pending_approvals", err)
	}
	cp, err := a.checkpointState(ctx)
	if err == nil {
		s.AuditLength = metrics.Some(cp.head)
		s.CheckpointSeq = metrics.Some(cp.seq)
		if !cp.at.IsZero() {
			s.CheckpointAge = metrics.Some(time.Since(cp.at).Seconds())
		}
		s.UncheckpointedAge = metrics.Some(cp.waiting.Seconds())
	} else {
		fail("audit", err)
	}
	if n, err := a.dbSize(); err == nil {
		s.DBBytes = metrics.Some(n)
	} else {
		fail("db_size", err)
	}
	if free, size, err := health.DiskSpace(filepath.Dir(a.cfg.Store.Path)); err == nil {
		s.DiskFreeBytes, s.DiskSizeBytes = metrics.Some(free), metrics.Some(size)
	} else {
		fail("disk", err)
	}
	if crl := a.crlStatus(); crl.NextUpdate != nil {
		s.CRLNextUpdate = metrics.Some(time.Until(*crl.NextUpdate).Seconds())
	}
	ws := a.obs.window.Stats()
	s.HealthWindowSample = metrics.Some(ws.Count)
	s.HSMErrorRatio = metrics.Some(ws.ErrorRate())
	if ws.Count > ws.Failures {
		s.SignP99 = metrics.Some(ws.P99.Seconds())
	}
	return s
}

// checkpointView is the audit chain as the checkpoint threshold sees it.
type checkpointView struct {
	head    int64         // sequence number of the chain head
	seq     int64         // covered by the last checkpoint (0: none yet)
	at      time.Time     // of the last checkpoint (zero: none yet)
	waiting time.Duration // how long the oldest uncovered entry has waited; 0 if none
}

func (a *App) checkpointState(ctx context.Context) (checkpointView, error) {
	var v checkpointView
	head, _, err := a.store.AuditHead(ctx)
	if err != nil {
		return v, err
	}
	v.head = head
	cp, err := a.store.LastCheckpoint(ctx)
	switch {
	case err == nil:
		v.seq, v.at = cp.Seq, time.Unix(0, cp.At)
	case !errors.Is(err, store.ErrNotFound):
		return v, err
	}
	if head > v.seq {
		err := a.store.AuditEntries(ctx, v.seq, 1, func(e *audit.Entry) error {
			v.waiting = max(time.Since(time.Unix(0, e.At)), 0)
			return nil
		})
		if err != nil {
			return v, err
		}
	}
	return v, nil
}

// dbSize is the database file plus its write-ahead log.
func (a *App) dbSize() (int64, error) {
	fi, err := os.Stat(a.cfg.Store.Path)
	if err != nil {
		return 0, err
	}
	n := fi.Size()
	if wal, err := os.Stat(a.cfg.Store.Path + "-wal"); err == nil {
		n += wal.Size()
	}
	return n, nil
}

// thresholdChecks are the configured health thresholds as non-critical
// checks: exceeding one makes /v1/health "degraded" with the reason and
// raises its alert, never "down" (the watchdog keeps being petted while
// the appliance can sign).
func (a *App) thresholdChecks() []health.Check {
	al := a.obs.alerts
	// Thresholds are read at every check from the current configuration,
	// so a reload (SIGHUP) changes them in place; zero or negative is off.
	return []health.Check{
		al.Check(alertSignLatency, func(context.Context) error {
			cfg := a.healthCfg()
			maxP99 := cfg.SignP99Max.D()
			ws := a.obs.window.Stats()
			if ok := ws.Count - ws.Failures; maxP99 <= 0 || ok < cfg.MinSamples || ws.P99 <= maxP99 {
				return nil
			}
			return fmt.Errorf("p99 sign latency %s over the last %d signatures exceeds %s", ws.P99, ws.Count-ws.Failures, maxP99)
		}),
		al.Check(alertHSMErrorRate, func(context.Context) error {
			cfg := a.healthCfg()
			maxRate := cfg.HSMErrorRateMax
			ws := a.obs.window.Stats()
			if maxRate <= 0 || ws.Count < cfg.MinSamples || ws.ErrorRate() <= maxRate {
				return nil
			}
			return fmt.Errorf("%d of the last %d sign requests failed for the HSM (%.3f > %.3f)", ws.Failures, ws.Count, ws.ErrorRate(), maxRate)
		}),
		al.Check(alertDiskSpace, func(context.Context) error {
			cfg := a.healthCfg()
			if cfg.MinFreeDiskBytes <= 0 && cfg.MinFreeDiskPercent <= 0 {
				return nil
			}
			dir := filepath.Dir(a.cfg.Store.Path)
			free, size, err := health.DiskSpace(dir)
			if errors.Is(err, errors.ErrUnsupported) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("free disk space of %s: %w", dir, err)
			}
			if cfg.MinFreeDiskBytes > 0 && free < uint64(cfg.MinFreeDiskBytes) {
				return fmt.Errorf("%d bytes free on the database's filesystem (%s), below %d", free, dir, cfg.MinFreeDiskBytes)
			}
			if pct := 100 * float64(free) / float64(max(size, 1)); cfg.MinFreeDiskPercent > 0 && pct < cfg.MinFreeDiskPercent {
				return fmt.Errorf("%.1f%% free on the database's filesystem (%s), below %.1f%%", pct, dir, cfg.MinFreeDiskPercent)
			}
			return nil
		}),
		al.Check(alertAuditCheckpoint, func(ctx context.Context) error {
			maxAge := a.healthCfg().CheckpointAgeMax.D()
			if maxAge <= 0 {
				return nil
			}
			if _, signer := a.currentAudit(); signer == nil {
				return nil // sealed: no checkpoint can be signed, by design
			}
			v, err := a.checkpointState(ctx)
			if err != nil {
				return fmt.Errorf("reading the audit chain: %w", err)
			}
			if v.waiting > maxAge {
				return fmt.Errorf("audit entries %d..%d have waited %s for a signed checkpoint (max %s)",
					v.seq+1, v.head, v.waiting.Round(time.Second), maxAge)
			}
			return nil
		}),
		al.Check(alertDBSize, func(context.Context) error {
			maxSize := a.healthCfg().DBSizeMaxBytes
			if maxSize <= 0 {
				return nil
			}
			n, err := a.dbSize()
			if err != nil {
				return fmt.Errorf("database size: %w", err)
			}
			if n > maxSize {
				return fmt.Errorf("the database and its WAL take %d bytes, above %d", n, maxSize)
			}
			return nil
		}),
		al.Check(alertPendingApprovals, func(ctx context.Context) error {
			maxPending := a.healthCfg().PendingApprovalsMax
			if maxPending <= 0 {
				return nil
			}
			n, err := a.store.CountRequests(ctx, store.StatePendingApproval)
			if err != nil {
				return fmt.Errorf("counting pending approvals: %w", err)
			}
			if n > maxPending {
				return fmt.Errorf("%d sign requests wait for approvals, above %d", n, maxPending)
			}
			return nil
		}),
	}
}

// healthCfg is the health thresholds in force.
func (a *App) healthCfg() *config.Health { return a.health.Load() }

// listenMetrics opens the configured metrics listener; nil when disabled.
func (a *App) listenMetrics() (net.Listener, error) {
	addr := a.cfg.Metrics.Address()
	if addr == "" {
		return nil, nil
	}
	return metrics.Listen(addr, a.cfg.Metrics.AllowRemote)
}

// serveMetrics serves the exposition on ln (nil: nothing) and returns the
// function that stops it. A failing metrics server is logged; it never
// stops signing.
func (a *App) serveMetrics(ln net.Listener) (stop func(context.Context)) {
	if ln == nil {
		return func(context.Context) {}
	}
	log := a.log.Named("metrics")
	srv := metrics.NewServer(a.obs.metrics.Handler(promLogger{log}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil {
			log.Error("metrics listener failed; signing continues without metrics", zap.Error(err))
		}
	}()
	log.Info("metrics listening", zap.String("addr", ln.Addr().Network()+":"+ln.Addr().String()))
	return func(ctx context.Context) {
		if err := srv.Shutdown(ctx); err != nil {
			log.Warn("metrics listener shutdown", zap.Error(err))
		}
		<-done
	}
}

// promLogger is promhttp's error log on zap.
type promLogger struct{ log *zap.Logger }

func (l promLogger) Println(v ...any) { l.log.Warn(fmt.Sprint(v...)) }
