// Package api is the upstream-facing HTTPS server of ../shared/API.md:
// mutual TLS 1.3, principals and roles, JSON shapes and stable error codes.
package api

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/address"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/seal"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

// Signer is what the API needs from the signing service.
type Signer interface {
	Sign(ctx context.Context, p *access.Principal, req signing.Request) (*signing.Result, error)
	Evaluate(ctx context.Context, p *access.Principal, req signing.Request) (*signing.Evaluation, error)
	Get(ctx context.Context, id string) (store.Request, error)
	Approve(ctx context.Context, officer *access.Principal, id string, sig []byte) (store.Request, error)
	Reject(ctx context.Context, officer *access.Principal, id, reason string) (store.Request, error)
	List(ctx context.Context, state string) ([]store.Request, error)
	AddAllowlist(ctx context.Context, officer *access.Principal, keyID, addr string) (*signing.Allowlisted, error)
	Approvals(ctx context.Context, id string) (required int, officers []string, err error)
}

// Keys is what the API needs from the key registry.
type Keys interface {
	List() []*signing.Key
	Get(id string) (*signing.Key, error)
}

// Seal is what the API needs from the seal manager.
type Seal interface {
	SubmitShare(ctx context.Context, officer, share string) (seal.Progress, error)
	Freeze(ctx context.Context, by, reason string) error
	State() seal.State
}

// Governance is what the API needs from the proposal service.
type Governance interface {
	Propose(ctx context.Context, proposer, kind string, params json.RawMessage) (store.Proposal, error)
	Approve(ctx context.Context, officer, id string, sig []byte) (store.Proposal, error)
	Get(ctx context.Context, id string) (store.Proposal, error)
	List(ctx context.Context, state string) ([]store.Proposal, error)
}

// StatusFunc reports /v1/status.
type StatusFunc func(ctx context.Context) any

// Deps are the server's collaborators; all are required.
type Deps struct {
	Log    *zap.Logger
	Access *access.Registry
	Signer Signer
	Keys   Keys
	Health *health.Checker
	Status StatusFunc
	Sealed func() (sealed, frozen bool)
	Seal   Seal
	// Governance is nil on an appliance without an officer ceremony.
	Governance Governance
	// Screener, when set, answers known_risk in address validation.
	Screener address.Screener
	// OnDenied, when set, hears every 403 with the principal (the automatic
	// freeze on a burst of denials).
	OnDenied func(principal, code string)
	// Audit serves GET /v1/audit; nil disables the endpoints.
	Audit AuditLog
	// Backup writes an encrypted backup (POST /v1/backups); nil disables it.
	Backup func(ctx context.Context, by string) (any, error)
	// OnAuthFailure, when set, hears every authentication or authorisation
	// failure: 403 forbidden answers and failed TLS handshakes.
	OnAuthFailure func(ctx context.Context, f AuthFailure)
	// Observe, when set, hears every answered request (metrics, health).
	Observe func(Outcome)
	// Dashboard serves the read-only HTML page GET /dashboard to operators,
	// officers and auditors; nil disables it.
	Dashboard DashboardFunc
	HTTP      config.HTTP
	TLS       *tls.Config
}

// Server is the HTTPS API.
type Server struct {
	deps Deps
	e    *echo.Echo
	http *http.Server

	routesOnce sync.Once
	routes     map[string]bool // "METHOD /path" of every registered route

	rate     *rateLimiter // nil: http.rate_per_principal is off
	inflight inFlight

	// draining is closed when Shutdown begins: long polls answer with the
	// request as it is then, instead of holding the shutdown up to their
	// full wait (and being cut off at its timeout, unanswered).
	draining  chan struct{}
	drainOnce sync.Once
}

// New builds the server and its routes.
func New(d Deps) (*Server, error) {
	if d.Log == nil || d.Access == nil || d.Signer == nil || d.Keys == nil || d.Health == nil || d.Status == nil || d.TLS == nil || d.Seal == nil {
		return nil, errors.New("api: every dependency is required")
	}
	if d.Sealed == nil {
		d.Sealed = func() (bool, bool) { return false, false }
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(d.Log, d.OnDenied)
	s := &Server{deps: d, e: e, draining: make(chan struct{})}
	if d.HTTP.RatePerPrincipal > 0 {
		s.rate = newRateLimiter(d.HTTP.RatePerPrincipal, d.HTTP.RateBurst, maxRateBuckets)
	}
	s.inflight.max = math.MaxInt64 - OfficerReserve // off unless configured
	if d.HTTP.MaxInFlight > 0 {
		s.inflight.max = int64(d.HTTP.MaxInFlight)
	}
	e.Use(s.recoverer, s.requestContext, s.limitBody())

	v1 := e.Group("/v1")
	v1.GET("/health", s.health)
	v1.GET("/status", s.status, s.registered)
	v1.GET("/keys", s.listKeys, s.requireAny(access.RoleClient, access.RoleOfficer, access.RoleAuditor))
	v1.GET("/keys/:id", s.getKey, s.requireAny(access.RoleClient, access.RoleOfficer, access.RoleAuditor))
	v1.POST("/sign", s.sign, s.requireAny(access.RoleClient))
	v1.POST("/sign/batch", s.signBatch, s.requireAny(access.RoleClient))
	v1.GET("/requests", s.listRequests, s.requireAny(access.RoleOfficer, access.RoleAuditor))
	v1.GET("/requests/:id", s.getRequest, s.registered)
	v1.POST("/requests/:id/approvals", s.approveRequest, s.requireAny(access.RoleOfficer))
	v1.POST("/requests/:id/rejections", s.rejectRequest, s.requireAny(access.RoleOfficer))
	v1.POST("/allowlist", s.addAllowlist, s.requireAny(access.RoleOfficer))
	v1.POST("/policy/evaluate", s.evaluate, s.requireAny(access.RoleClient, access.RoleOfficer))
	v1.POST("/addresses/validate", s.validateAddress, s.requireAny(access.RoleClient, access.RoleOfficer))
	officer := s.requireAny(access.RoleOfficer)
	v1.POST("/unseal", s.unseal, officer)
	v1.POST("/freeze", s.freeze, officer)
	v1.POST("/proposals", s.propose, officer)
	v1.GET("/proposals", s.listProposals, s.requireAny(access.RoleOfficer, access.RoleAuditor))
	v1.GET("/proposals/:id", s.getProposal, s.requireAny(access.RoleOfficer, access.RoleAuditor))
	v1.POST("/proposals/:id/approvals", s.approveProposal, officer)
	if d.Backup != nil {
		v1.POST("/backups", s.backup, s.requireAny(access.RoleOperator, access.RoleOfficer))
	}
	if d.Audit != nil {
		auditor := s.requireAny(access.RoleAuditor)
		v1.GET("/audit", s.auditPage, auditor)
		v1.GET("/audit/keys", s.auditKeys, s.requireAny(access.RoleAuditor, access.RoleOfficer))
	}
	if d.Dashboard != nil {
		e.GET(DashboardPath, s.dashboard, s.requireAny(DashboardRoles...))
	}

	readHeader := d.HTTP.ReadHeaderTimeout.D()
	if readHeader <= 0 {
		readHeader = d.HTTP.ReadTimeout.D()
	}
	// HTTP/1.1 only: one request at a time per connection, so the
	// in-flight bound is also a bound on connections doing work, and the
	// header and body timeouts mean what they say. HTTP/2 is not offered
	// (ALPN "http/1.1"): its multiplexing adds attack surface (stream
	// floods, rapid reset, CONTINUATION and HPACK floods) that the API's
	// clients gain nothing from.
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	s.http = &http.Server{
		Handler:           e,
		TLSConfig:         d.TLS,
		Protocols:         &protocols,
		ReadHeaderTimeout: readHeader,
		ReadTimeout:       d.HTTP.ReadTimeout.D(),
		WriteTimeout:      d.HTTP.WriteTimeout.D(),
		IdleTimeout:       d.HTTP.IdleTimeout.D(),
		MaxHeaderBytes:    d.HTTP.MaxHeaderBytes,
		ErrorLog:          log.New(errorLog{log: d.Log.Named("http"), onFail: d.OnAuthFailure}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return context.Background() },
	}
	return s, nil
}

// Serve accepts TLS connections on ln until Shutdown. It returns nil after
// a clean shutdown.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http.ServeTLS(ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, ends the waits of long polls (each answers
// with its request's state at that moment) and waits for in-flight
// requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.drainOnce.Do(func() { close(s.draining) })
	return s.http.Shutdown(ctx)
}

// Handler exposes the routes (for tests that bring their own transport).
func (s *Server) Handler() http.Handler { return s.e }

// Route is one registered endpoint.
type Route struct{ Method, Path string }

// Routes lists every registered endpoint (the RBAC matrix test walks them,
// so an endpoint without an entry there fails it).
func (s *Server) Routes() []Route {
	var out []Route
	for _, r := range s.e.Routes() {
		out = append(out, Route{Method: r.Method, Path: r.Path})
	}
	return out
}

func bodyLimit(n int64) string { return fmt.Sprintf("%dB", n) }

// requestContext names the request, finds the principal from the verified
// client certificate and attaches a logger carrying both, then logs the
// outcome once.
func (s *Server) requestContext(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		req := c.Request()
		rid := newRequestID()
		c.Response().Header().Set(echo.HeaderXRequestID, rid)
		fields := []zap.Field{zap.String("http_request_id", rid), zap.String("method", req.Method), zap.String("path", req.URL.Path)}
		var p *access.Principal
		var name string
		if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
			name = access.PrincipalName(req.TLS.PeerCertificates[0])
			fields = append(fields, zap.String("principal", name))
			p = s.deps.Access.Lookup(name)
		}
		log := s.deps.Log.With(fields...)
		c.Set("log", log)
		c.Set("principal", p)
		// The bounds come first: a refused request costs no body read, no
		// handler and no store work.
		release, err := s.admit(c, name, p, log)
		if err == nil {
			defer release()
			err = next(c)
		}
		if err != nil {
			c.Error(err)
		}
		status := c.Response().Status
		lf := []zap.Field{zap.Int("status", status), zap.Duration("took", time.Since(start))}
		if k, ok := c.Get("key_id").(string); ok {
			lf = append(lf, zap.String("key_id", k))
		}
		if r, ok := c.Get("request_id").(string); ok {
			lf = append(lf, zap.String("request_id", r))
		}
		if ae, ok := c.Get("apierr").(*apierr.Error); ok {
			s.authFailed(c, ae)
			lf = append(lf, zap.String("code", ae.Code))
			if ae.Cause != nil {
				lf = append(lf, zap.NamedError("cause", ae.Cause))
			}
		}
		if s.deps.Observe != nil {
			s.deps.Observe(s.outcome(c, status, time.Since(start)))
		}
		switch {
		case c.Get("limited") != nil:
			// Refused by a bound (rate, in flight): a flood of these must not
			// flood the log too; admit warns once a minute, metrics count them.
			log.Debug("request", lf...)
		case status >= 500:
			log.Error("request", lf...)
		case status >= 400:
			log.Warn("request", lf...)
		default:
			log.Info("request", lf...)
		}
		return nil
	}
}

// Outcome is one answered request, as Deps.Observe hears it: every HTTP
// request, and each sign request of a POST /v1/sign/batch on its own.
type Outcome struct {
	Route  string // "POST /v1/sign": a registered route, or "other"
	Code   string // "ok" (status below 400) or the stable error code
	Status int
	Chain  string        // the chain of the request's key, when it names one that exists
	Took   time.Duration // from the request's start to its answer
	// BatchItem: one sign request of the batch call (Route is that of
	// POST /v1/sign/batch), heard once its own answer is known; the call
	// itself is heard too, without it.
	BatchItem bool
}

func (s *Server) outcome(c echo.Context, status int, took time.Duration) Outcome {
	s.routesOnce.Do(func() {
		s.routes = map[string]bool{}
		for _, r := range s.e.Routes() {
			s.routes[r.Method+" "+r.Path] = true
		}
	})
	o := Outcome{Route: "other", Code: "ok", Status: status, Took: took}
	if r := c.Request().Method + " " + c.Path(); s.routes[r] {
		o.Route = r
	}
	if ae, ok := c.Get("apierr").(*apierr.Error); ok {
		o.Code = ae.Code
	} else if status >= 400 {
		o.Code = "http_" + strconv.Itoa(status)
	}
	if id, ok := c.Get("key_id").(string); ok {
		o.Chain = s.chainOf(id)
	}
	return o
}

// chainOf is the chain of key id, "" when no such key exists.
func (s *Server) chainOf(id string) string {
	if id == "" {
		return ""
	}
	if k, err := s.deps.Keys.Get(id); err == nil {
		return k.Chain
	}
	return ""
}

// recoverer turns a panic in a handler into a 500 instead of a dead connection.
func (s *Server) recoverer(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				// The request's logger, when there is one, so the line
				// names the request id and principal.
				log := s.deps.Log
				if l, ok := c.Get("log").(*zap.Logger); ok {
					log = l
				}
				log.Error("panic in handler", zap.Any("panic", r), zap.Stack("stack"))
				err = apierr.Internal(fmt.Errorf("panic: %v", r))
			}
		}()
		return next(c)
	}
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func principalOf(c echo.Context) *access.Principal {
	p, _ := c.Get("principal").(*access.Principal)
	return p
}

func logOf(c echo.Context) *zap.Logger {
	if l, ok := c.Get("log").(*zap.Logger); ok {
		return l
	}
	return zap.NewNop()
}

// registered refuses principals that are not in the registry.
func (s *Server) registered(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if principalOf(c) == nil {
			return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "principal is not registered")
		}
		return next(c)
	}
}

// requireAny refuses principals holding none of roles.
func (s *Server) requireAny(roles ...access.Role) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			p := principalOf(c)
			if p == nil {
				return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "principal is not registered")
			}
			if !p.HasAny(roles...) {
				return apierr.New(http.StatusForbidden, apierr.CodeForbidden, "role %v required", roles)
			}
			return next(c)
		}
	}
}

// errorHandler writes every error as the API's JSON envelope.
func errorHandler(log *zap.Logger, onDenied func(principal, code string)) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		ae := toAPIError(err)
		c.Set("apierr", ae)
		if p := principalOf(c); ae.Status == http.StatusForbidden && p != nil && onDenied != nil {
			onDenied(p.Name, ae.Code)
		}
		if ae.Code == apierr.CodeRateLimited || ae.RetryAfter > 0 {
			secs := int(math.Ceil(ae.RetryAfter.Seconds()))
			c.Response().Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
		}
		if werr := c.JSON(ae.Status, ae.Body()); werr != nil {
			log.Debug("writing error response", zap.Error(werr))
		}
	}
}

func toAPIError(err error) *apierr.Error {
	var he *echo.HTTPError
	if errors.As(err, &he) {
		switch he.Code {
		case http.StatusRequestEntityTooLarge:
			return apierr.New(he.Code, apierr.CodeTooLarge, "request body is too large")
		case http.StatusNotFound:
			return apierr.New(he.Code, apierr.CodeNotFound, "no such endpoint")
		case http.StatusMethodNotAllowed:
			return apierr.New(he.Code, apierr.CodeMethodNotAllowed, "method not allowed")
		default:
			return apierr.New(he.Code, apierr.CodeBadRequest, "%v", he.Message)
		}
	}
	return apierr.From(err)
}
