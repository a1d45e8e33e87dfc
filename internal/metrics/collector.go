package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Value is a reading that may be missing (it failed, or does not apply).
type Value struct {
	V  float64
	OK bool
}

// Some is a present reading.
func Some[T int | int64 | uint64 | float64](v T) Value { return Value{V: float64(v), OK: true} }

// Snapshot is what the appliance reports at scrape time. Missing values
// are left out of the exposition; Failed names the readings that failed.
type Snapshot struct {
	Sealed, Frozen bool

	// HSM: zeros while sealed (no module is open).
	HSMHealthy         bool
	HSMPoolSize        int
	HSMInUse           int
	HSMWaiters         int
	HSMTurnWaiters     int    // signatures waiting for their principal's turn (in front of the pool)
	HSMTurnPrincipals  int    // principals with signatures waiting for a turn
	HSMRebuilds        uint64 // since the process started, across unseals
	HSMRebuildFailures uint64

	PendingApprovals   Value
	AuditLength        Value // sequence number of the chain head
	CheckpointSeq      Value
	CheckpointAge      Value // seconds since the last signed checkpoint
	UncheckpointedAge  Value // seconds the oldest entry not covered by a checkpoint has waited (0: none)
	DBBytes            Value // database file plus -wal
	DiskFreeBytes      Value
	DiskSizeBytes      Value
	SignP99            Value // seconds, over the health window
	HSMErrorRatio      Value // over the health window
	HealthWindowSample Value // outcomes in the health window
	CRLNextUpdate      Value // seconds until the earliest client CRL's next update; negative once passed

	Failed []string
}

// Source produces a snapshot; it must honour ctx's deadline.
type Source func(ctx context.Context) Snapshot

type desc struct {
	d   *prometheus.Desc
	typ prometheus.ValueType
}

func gauge(name, help string) desc {
	return desc{prometheus.NewDesc(Namespace+"_"+name, help, nil, nil), prometheus.GaugeValue}
}

func counter(name, help string) desc {
	return desc{prometheus.NewDesc(Namespace+"_"+name, help, nil, nil), prometheus.CounterValue}
}

// collector reads a Source at every scrape.
type collector struct {
	m       *Metrics
	src     Source
	timeout time.Duration

	sealed, frozen, hsmHealthy, poolSize, inUse, waiters                desc
	turnWaiters, turnPrincipals                                         desc
	rebuilds, rebuildFailures, hsmErrors                                desc
	pending, auditLen, cpSeq, cpAge, uncpAge, dbBytes, diskFree, diskSz desc
	p99, errRatio, windowN, crlNext                                     desc
}

// Collect registers a collector that calls src at every scrape with a
// context bounded by timeout.
func (m *Metrics) Collect(src Source, timeout time.Duration) {
	c := &collector{m: m, src: src, timeout: timeout,
		sealed:          gauge("sealed", "1 while the appliance is sealed (the HSM PIN is not in memory), else 0."),
		frozen:          gauge("frozen", "1 while the appliance is frozen (signing refused until a quorum lifts it), else 0."),
		hsmHealthy:      gauge("hsm_healthy", "1 while the HSM module is open and healthy, else 0 (0 while sealed)."),
		poolSize:        gauge("hsm_pool_size", "HSM sessions in the pool (0 while sealed)."),
		inUse:           gauge("hsm_sessions_in_use", "HSM sessions currently borrowed."),
		waiters:         gauge("hsm_session_waiters", "Callers waiting for an HSM session."),
		turnWaiters:     gauge("hsm_turn_waiters", "Sign requests' signatures waiting for their principal's turn for the HSM (in front of the session pool)."),
		turnPrincipals:  gauge("hsm_turn_principals", "Principals with signatures waiting for a turn for the HSM."),
		rebuilds:        counter("hsm_rebuilds_total", "Successful rebuilds of the HSM session pool (reconnects) since the process started."),
		rebuildFailures: counter("hsm_rebuild_failures_total", "Failed HSM reconnect attempts since the process started."),
		hsmErrors:       counter("hsm_errors_total", "HSM errors: requests answered hsm_unavailable plus pool rebuilds and failed rebuild attempts."),
		pending:         gauge("pending_approvals", "Sign requests waiting for officers' approvals."),
		auditLen:        gauge("audit_chain_length", "Entries in the audit hash chain (the head's sequence number)."),
		cpSeq:           gauge("audit_checkpoint_seq", "Sequence number covered by the last signed audit checkpoint."),
		cpAge:           gauge("audit_checkpoint_age_seconds", "Seconds since the last signed audit checkpoint (absent before the first)."),
		uncpAge:         gauge("audit_uncheckpointed_age_seconds", "Seconds the oldest audit entry not yet covered by a checkpoint has waited (0 when the head is covered)."),
		dbBytes:         gauge("db_size_bytes", "Size of the SQLite database file plus its write-ahead log."),
		diskFree:        gauge("disk_free_bytes", "Bytes available on the database's filesystem."),
		diskSz:          gauge("disk_size_bytes", "Size of the database's filesystem."),
		p99:             gauge("sign_latency_p99_seconds", "99th percentile of signed answers' latency over the health window (see health.window)."),
		errRatio:        gauge("hsm_error_ratio", "Fraction of sign requests in the health window answered hsm_unavailable."),
		windowN:         gauge("health_window_requests", "Sign outcomes currently in the health window."),
		crlNext: gauge("crl_next_update_seconds", "Seconds until the earliest next update of the client CRLs in force; negative once it has passed "+
			"(that CA's clients are then refused at the handshake). Absent without tls.crl, or when no CRL gives a next update."),
	}
	m.reg.MustRegister(c)
}

func (c *collector) all() []desc {
	return []desc{c.sealed, c.frozen, c.hsmHealthy, c.poolSize, c.inUse, c.waiters, c.turnWaiters, c.turnPrincipals, c.rebuilds, c.rebuildFailures, c.hsmErrors,
		c.pending, c.auditLen, c.cpSeq, c.cpAge, c.uncpAge, c.dbBytes, c.diskFree, c.diskSz, c.p99, c.errRatio, c.windowN, c.crlNext}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.all() {
		ch <- d.d
	}
	c.m.scrapeErrors.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	s := c.src(ctx)
	for _, part := range s.Failed {
		c.m.scrapeErrors.WithLabelValues(part).Inc()
	}
	emit := func(d desc, v Value) {
		if v.OK {
			ch <- prometheus.MustNewConstMetric(d.d, d.typ, v.V)
		}
	}
	emit(c.sealed, Some(b2f(s.Sealed)))
	emit(c.frozen, Some(b2f(s.Frozen)))
	emit(c.hsmHealthy, Some(b2f(s.HSMHealthy)))
	emit(c.poolSize, Some(s.HSMPoolSize))
	emit(c.inUse, Some(s.HSMInUse))
	emit(c.waiters, Some(s.HSMWaiters))
	emit(c.turnWaiters, Some(s.HSMTurnWaiters))
	emit(c.turnPrincipals, Some(s.HSMTurnPrincipals))
	emit(c.rebuilds, Some(s.HSMRebuilds))
	emit(c.rebuildFailures, Some(s.HSMRebuildFailures))
	emit(c.hsmErrors, Some(c.m.HSMUnavailable()+s.HSMRebuilds+s.HSMRebuildFailures))
	emit(c.pending, s.PendingApprovals)
	emit(c.auditLen, s.AuditLength)
	emit(c.cpSeq, s.CheckpointSeq)
	emit(c.cpAge, s.CheckpointAge)
	emit(c.uncpAge, s.UncheckpointedAge)
	emit(c.dbBytes, s.DBBytes)
	emit(c.diskFree, s.DiskFreeBytes)
	emit(c.diskSz, s.DiskSizeBytes)
	emit(c.p99, s.SignP99)
	emit(c.errRatio, s.HSMErrorRatio)
	emit(c.windowN, s.HealthWindowSample)
	emit(c.crlNext, s.CRLNextUpdate)
	c.m.scrapeErrors.Collect(ch)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
