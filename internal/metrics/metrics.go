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
}

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
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
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
