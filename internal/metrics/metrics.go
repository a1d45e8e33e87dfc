// Package metrics is the appliance's Prometheus exposition: request
// outcomes and sign latency counted as requests are answered, and gauges
// read from the store and the HSM only when scraped (a Collector with a
// short timeout, so a scrape never holds up signing). It is served in plain
// HTTP on a listener of its own (Listen, Serve), apart from the mTLS API.
package metrics

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every appliance metric.
const Namespace = "appliance"

// SignBuckets are the sign latency histogram's upper bounds, in seconds:
// from a local HSM's few milliseconds to a network HSM's worst case.
var SignBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// Codes counted as rate-limit hits.
const (
	CodeRateLimited    = "rate_limited"
	CodeLimitExceeded  = "limit_exceeded"
	CodeHSMUnavailable = "hsm_unavailable"
)

// Request is one answered API request.
type Request struct {
	Route string        // "POST /v1/sign"
	Code  string        // "ok" or the API's stable error code
	Chain string        // for signatures: the key's chain
	Took  time.Duration // from the request's start to its answer
	// Signed: the answer carried a signature (POST /v1/sign answered 200).
	// Only those are observed in the sign latency histogram.
	Signed bool
}

// Metrics owns a registry with the appliance's metrics and the process
// and Go runtime collectors.
type Metrics struct {
	reg *prometheus.Registry

	signDuration   *prometheus.HistogramVec
	requests       *prometheus.CounterVec
	rateLimitHits  *prometheus.CounterVec
	alerts         *prometheus.GaugeVec
	scrapeErrors   *prometheus.CounterVec // exposed by the scrape-time collector, after its readings
	hsmUnavailable atomic.Uint64

	retentionDeleted *prometheus.CounterVec
	retentionErrors  *prometheus.CounterVec
	retentionLastOK  *prometheus.GaugeVec
}

// Retention steps, the "what" label of the retention metrics.
var RetentionSteps = []string{"policy_usage", "requests", "audit_entries", "audit_checkpoints"}

// New returns the metrics of one appliance.
func New(version, mode string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.signDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "sign_duration_seconds",
		Help:    "Time from the start of a POST /v1/sign request to its signed answer, per chain.",
		Buckets: SignBuckets,
	}, []string{"chain"})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "requests_total",
		Help: `API requests answered, by route ("METHOD /path", "other" for unknown paths) and outcome code ("ok" or the stable error code).`,
	}, []string{"route", "code"})
	m.rateLimitHits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "rate_limit_hits_total",
		Help: "Requests refused by a rate limit (rate_limited) or a value limit (limit_exceeded).",
	}, []string{"code"})
	m.alerts = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "alert",
		Help: "1 while the named health threshold is exceeded (/v1/health is degraded), else 0.",
	}, []string{"name"})
	m.scrapeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "scrape_errors_total",
		Help: "Scrape-time readings that failed or timed out (their metrics are left out of that scrape).",
	}, []string{"part"})
	m.retentionDeleted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "retention_deleted_total",
		Help: "Rows deleted by retention since the process started: policy usage older than every window, finished requests past retention.requests, audit entries archived past retention.audit.",
	}, []string{"what"})
	m.retentionErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "retention_errors_total",
		Help: "Retention passes that failed (the log says why; the next pass, an hour later, tries again).",
	}, []string{"what"})
	m.retentionLastOK = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "retention_last_success_timestamp_seconds",
		Help: "Unix time of the last retention pass that completed without error (absent before the first).",
	}, []string{"what"})
	for _, w := range RetentionSteps {
		m.retentionDeleted.WithLabelValues(w)
		m.retentionErrors.WithLabelValues(w)
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Always 1; the version and mode of the running appliance.",
		ConstLabels: prometheus.Labels{"version": version, "mode": mode},
	})
	info.Set(1)
	for _, code := range []string{CodeRateLimited, CodeLimitExceeded} {
		m.rateLimitHits.WithLabelValues(code)
	}
	m.reg.MustRegister(m.signDuration, m.requests, m.rateLimitHits, m.alerts, info,
		m.retentionDeleted, m.retentionErrors, m.retentionLastOK,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// ObserveRetention records one pass of a retention step (one of
// RetentionSteps): the rows it deleted, and whether it completed.
func (m *Metrics) ObserveRetention(what string, deleted int64, err error, at time.Time) {
	if deleted > 0 {
		m.retentionDeleted.WithLabelValues(what).Add(float64(deleted))
	}
	if err != nil {
		m.retentionErrors.WithLabelValues(what).Inc()
		return
	}
	m.retentionLastOK.WithLabelValues(what).Set(float64(at.UnixNano()) / 1e9)
}

// Registry is where the metrics live (for tests and extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveRequest counts one answered request.
func (m *Metrics) ObserveRequest(r Request) {
	m.requests.WithLabelValues(r.Route, r.Code).Inc()
	switch r.Code {
	case CodeRateLimited, CodeLimitExceeded:
		m.rateLimitHits.WithLabelValues(r.Code).Inc()
	case CodeHSMUnavailable:
		m.hsmUnavailable.Add(1)
	}
	if r.Signed {
		chain := r.Chain
		if chain == "" {
			chain = "unknown"
		}
		m.signDuration.WithLabelValues(chain).Observe(r.Took.Seconds())
	}
}

// HSMUnavailable is how many requests were answered hsm_unavailable.
func (m *Metrics) HSMUnavailable() uint64 { return m.hsmUnavailable.Load() }

// SetAlert sets appliance_alert{name}.
func (m *Metrics) SetAlert(name string, raised bool) {
	v := 0.0
	if raised {
		v = 1
	}
	m.alerts.WithLabelValues(name).Set(v)
}

// Handler serves the exposition in the Prometheus text format (or
// whatever the scraper negotiates). Errors of single collectors are logged
// by errorLog and the rest is still served.
func (m *Metrics) Handler(errorLog promhttp.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            errorLog,
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}
