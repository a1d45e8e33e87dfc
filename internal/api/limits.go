package api

import (
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/apierr"
)

// Bounds on hostile or runaway clients, applied to every request before
// any handler, body read or store work (docs/SECURITY.md, "Hostile
// clients"): a token bucket per principal (429 throttled) and a global
// bound on requests in flight (503 overloaded). Neither queues: a request
// over a bound is answered at once.

// Codes of the refusals this file adds; like apierr's, clients match on
// them and they are never renamed.
const (
	// CodeOverloaded (503, Retry-After): http.max_in_flight requests are
	// already being handled.
	CodeOverloaded = "overloaded"
	// CodeThrottled (429, Retry-After): the principal's http.rate_per_principal
	// is spent. Nothing was read or recorded, so the same request (with the
	// same idempotency key) may simply be sent again later — unlike the
	// policy's rate_limited, which records the request as denied.
	CodeThrottled = "throttled"
	// CodeRequestTimeout (408): the request body did not arrive within
	// http.read_timeout.
	CodeRequestTimeout = "request_timeout"
)

const (
	// OfficerReserve is how far requests of principals holding the officer
	// role may go beyond http.max_in_flight, so that a freeze (or an
	// unseal) still gets through while clients fill the server.
	OfficerReserve = 16
	// maxRateBuckets bounds the per-principal buckets kept in memory.
	// Principals beyond it (only possible with that many distinct
	// certificates from the client CA) share one overflow bucket.
	maxRateBuckets = 4096
	// sweepEvery is the most often a full bucket map is swept for idle
	// buckets, so a stream of new names cannot make every request pay a
	// sweep of the whole map.
	sweepEvery = time.Second
	// limitLogEvery bounds the warnings about a principal being rate
	// limited, and about the server being overloaded: the refused requests
	// themselves are logged at debug level and counted in the metrics.
	limitLogEvery = time.Minute
	// overloadRetryAfter is the Retry-After of 503 overloaded.
	overloadRetryAfter = time.Second
)

// bucket is one principal's token bucket.
type bucket struct {
	tokens float64
	last   time.Time // when tokens was last brought up to date
	warned time.Time // last warning logged for this principal
}

// rateLimiter is a token bucket per principal name, in a map of at most
// max buckets. A bucket that has refilled completely is the same as a new
// one, so idle buckets are dropped when the map is full; an active bucket
// is never dropped (that would hand its owner a fresh burst). Names that
// find the map full of active buckets share the overflow bucket.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64
	max   int
	now   func() time.Time

	mu        sync.Mutex
	buckets   map[string]*bucket
	overflow  bucket
	lastSweep time.Time
}

func newRateLimiter(rate float64, burst, maxBuckets int) *rateLimiter {
	if burst < 1 {
		burst = 1
	}
	return &rateLimiter{rate: rate, burst: float64(burst), max: maxBuckets, now: time.Now,
		buckets: make(map[string]*bucket), overflow: bucket{tokens: float64(burst)}}
}

// allow takes one token from name's bucket. When there is none it returns
// false and how long until there is one, and warn is true at most once per
// limitLogEvery per bucket.
func (l *rateLimiter) allow(name string) (ok bool, retry time.Duration, warn bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[name]
	if b == nil {
		if len(l.buckets) >= l.max && now.Sub(l.lastSweep) >= sweepEvery {
			l.sweep(now)
		}
		if len(l.buckets) < l.max {
			b = &bucket{tokens: l.burst, last: now}
			l.buckets[name] = b
		} else {
			b = &l.overflow
		}
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(l.burst, b.tokens+el.Seconds()*l.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0, false
	}
	retry = time.Duration(math.Ceil((1 - b.tokens) / l.rate * float64(time.Second)))
	if now.Sub(b.warned) >= limitLogEvery {
		b.warned, warn = now, true
	}
	return false, retry, warn
}

// sweep drops the buckets that have refilled completely.
func (l *rateLimiter) sweep(now time.Time) {
	l.lastSweep = now
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for name, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, name)
		}
	}
}

// len is the number of buckets held (not counting the overflow bucket).
func (l *rateLimiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// inFlight counts the requests being handled against http.max_in_flight.
type inFlight struct {
	max      int64
	n        atomic.Int64
	peak     atomic.Int64
	lastWarn atomic.Int64 // unix nanoseconds of the last overload warning
}

// acquire takes a slot, beyond max by OfficerReserve for officers. It
// never waits.
func (f *inFlight) acquire(officer bool) bool {
	limit := f.max
	if officer {
		limit += OfficerReserve
	}
	n := f.n.Add(1)
	if n > limit {
		f.n.Add(-1)
		return false
	}
	for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
	}
	return true
}

func (f *inFlight) release() { f.n.Add(-1) }

// LimitStats is what the request bounds hold right now, for tests and
// status.
type LimitStats struct {
	InFlight     int // requests being handled
	PeakInFlight int // the most at once since start
	RateBuckets  int // per-principal token buckets held (at most 4096)
}

// Limits reports the request bounds' state.
func (s *Server) Limits() LimitStats {
	st := LimitStats{InFlight: int(s.inflight.n.Load()), PeakInFlight: int(s.inflight.peak.Load())}
	if s.rate != nil {
		st.RateBuckets = s.rate.len()
	}
	return st
}

// admit applies the per-principal rate limit, then the in-flight bound, to
// a request from the certificate's principal name (p is its registration,
// nil if none). It returns the release of its in-flight slot, or the
// refusal. Refusals are logged at debug level; a warning is logged at most
// once a minute per principal (rate) or for the server (overload).
func (s *Server) admit(c echo.Context, name string, p *access.Principal, log *zap.Logger) (func(), error) {
	if s.rate != nil {
		ok, retry, warn := s.rate.allow(name)
		if !ok {
			c.Set("limited", true)
			if warn {
				log.Warn("principal rate limited at the API: further refusals are logged at debug level for a minute",
					zap.Float64("rate_per_second", s.rate.rate), zap.Float64("burst", s.rate.burst))
			}
			return nil, &apierr.Error{Status: http.StatusTooManyRequests, Code: CodeThrottled,
				Message: "too many requests from this principal; retry later", RetryAfter: retry}
		}
	}
	if !s.inflight.acquire(p.Has(access.RoleOfficer)) {
		c.Set("limited", true)
		now := time.Now().UnixNano()
		if last := s.inflight.lastWarn.Load(); now-last >= int64(limitLogEvery) && s.inflight.lastWarn.CompareAndSwap(last, now) {
			log.Warn("server overloaded: requests refused (503 overloaded); further refusals are logged at debug level for a minute",
				zap.Int64("max_in_flight", s.inflight.max))
		}
		return nil, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodeOverloaded,
			Message: "the appliance is handling as many requests as it may; retry later", RetryAfter: overloadRetryAfter}
	}
	return s.inflight.release, nil
}
