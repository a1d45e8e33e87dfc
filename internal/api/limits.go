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
// clients"): a token bucket per principal (429 throttled), a bound on each
// principal's requests in flight (429 too_many_in_flight) and a global
// bound on requests in flight (503 overloaded). None queues: a request
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
	// CodeTooManyInFlight (429, Retry-After): the principal already has
	// http.max_in_flight_per_principal requests being handled. As with
	// throttled, nothing was read or recorded: the same request may be sent
	// again once one of the principal's others has been answered.
	CodeTooManyInFlight = "too_many_in_flight"
	// CodeRequestTimeout (408): the request body did not arrive within
	// http.read_timeout.
	CodeRequestTimeout = "request_timeout"
)

const (
	// OfficerReserve is how far requests of principals holding the officer
	// role may go beyond http.max_in_flight, and beyond their own
	// http.max_in_flight_per_principal, so that a freeze (or an unseal)
	// still gets through while clients fill the server, or while the
	// officer's own tooling holds its share.
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
	// overloadRetryAfter is the Retry-After of 503 overloaded and of 429
	// too_many_in_flight: a slot is freed whenever a request is answered,
	// which a client cannot predict, so it is told to come back soon.
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
	// now was read before the lock: a caller that read it earlier may get
	// here after one that read it later. Moving last backwards would credit
	// that interval twice, so it only moves forwards.
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(l.burst, b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
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

// inFlight counts the requests being handled against http.max_in_flight,
// and each principal's against http.max_in_flight_per_principal.
type inFlight struct {
	max      int64
	n        atomic.Int64
	peak     atomic.Int64
	lastWarn atomic.Int64 // unix nanoseconds of the last overload warning

	principals principalInFlight
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

// principalInFlight counts each principal's requests being handled. A
// principal has an entry only while it has a request in flight (the entry
// goes when its count returns to zero), so the map never holds more
// entries than there are requests between admission and answer: unlike
// the rate limiter's buckets it needs no cap and no sweep.
type principalInFlight struct {
	mu       sync.Mutex
	n        map[string]int
	lastWarn atomic.Int64 // unix nanoseconds of the last warning
}

// acquire takes one of name's limit slots. It never waits.
func (p *principalInFlight) acquire(name string, limit int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[name] >= limit {
		return false
	}
	if p.n == nil {
		p.n = make(map[string]int)
	}
	p.n[name]++
	return true
}

func (p *principalInFlight) release(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.n[name]; n > 1 {
		p.n[name] = n - 1
	} else {
		delete(p.n, name)
	}
}

// of is name's requests in flight.
func (p *principalInFlight) of(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[name]
}

// len is the number of principals with a request in flight.
func (p *principalInFlight) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.n)
}

// warnOnce reports whether a warning is due now: at most one per
// limitLogEvery for each last (unix nanoseconds of the previous one).
func warnOnce(last *atomic.Int64) bool {
	now := time.Now().UnixNano()
	l := last.Load()
	return now-l >= int64(limitLogEvery) && last.CompareAndSwap(l, now)
}

// LimitStats is what the request bounds hold right now, for tests and
// status.
type LimitStats struct {
	InFlight     int // requests being handled
	PeakInFlight int // the most at once since start
	RateBuckets  int // per-principal token buckets held (at most 4096)
	// Principals is how many principals have a request being handled.
	Principals int
}

// Limits reports the request bounds' state.
func (s *Server) Limits() LimitStats {
	st := LimitStats{InFlight: int(s.inflight.n.Load()), PeakInFlight: int(s.inflight.peak.Load()),
		Principals: s.inflight.principals.len()}
	if s.rate != nil {
		st.RateBuckets = s.rate.len()
	}
	return st
}

// InFlightOf is how many requests of the principal (a certificate's
// principal name) are being handled (0 while its bound is off).
func (s *Server) InFlightOf(principal string) int { return s.inflight.principals.of(principal) }

// admit applies the per-principal rate limit, then the per-principal
// in-flight bound, then the global one, to a request from the
// certificate's principal name (p is its registration, nil if none). It
// returns the release of its in-flight slots, or the refusal. Refusals are
// logged at debug level; a warning is logged at most once a minute per
// principal (rate) or for the server (in flight, per principal or in all).
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
	officer := p.Has(access.RoleOfficer)
	// The principal's own bound comes before the global one, so that a
	// principal holding its share is told so (429) rather than that the
	// server is full, and a refused request never takes a global slot.
	perPrincipal := s.deps.HTTP.MaxInFlightPerPrincipal // <= 0: off
	if perPrincipal > 0 {
		limit := perPrincipal
		if officer {
			limit += OfficerReserve
		}
		if !s.inflight.principals.acquire(name, limit) {
			c.Set("limited", true)
			if warnOnce(&s.inflight.principals.lastWarn) {
				log.Warn("principal at its bound on requests in flight: requests refused (429 too_many_in_flight); further refusals of any principal are logged at debug level for a minute",
					zap.Int("max_in_flight_per_principal", limit))
			}
			return nil, &apierr.Error{Status: http.StatusTooManyRequests, Code: CodeTooManyInFlight,
				Message: "this principal has as many requests in flight as it may; retry when one has been answered", RetryAfter: overloadRetryAfter}
		}
	}
	if !s.inflight.acquire(officer) {
		if perPrincipal > 0 {
			s.inflight.principals.release(name)
		}
		c.Set("limited", true)
		if warnOnce(&s.inflight.lastWarn) {
			log.Warn("server overloaded: requests refused (503 overloaded); further refusals are logged at debug level for a minute",
				zap.Int64("max_in_flight", s.inflight.max))
		}
		return nil, &apierr.Error{Status: http.StatusServiceUnavailable, Code: CodeOverloaded,
			Message: "the appliance is handling as many requests as it may; retry later", RetryAfter: overloadRetryAfter}
	}
	if perPrincipal <= 0 {
		return s.inflight.release, nil
	}
	return func() {
		s.inflight.release()
		s.inflight.principals.release(name)
	}, nil
}
