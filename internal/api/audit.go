package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/audit"
)

// AuditLog serves auditors.
type AuditLog interface {
	// Page returns entries after seq after (at most limit), the checkpoints
	// that cover them, and the chain head.
	Page(ctx context.Context, after int64, limit int) (AuditPage, error)
	// PublicKeys returns every audit key, PEM.
	PublicKeys(ctx context.Context) ([]AuditKey, error)
}

// AuditPage is the body of GET /v1/audit.
type AuditPage struct {
	Entries     []audit.Line `json:"entries"`
	Checkpoints []audit.Line `json:"checkpoints"`
	HeadSeq     int64        `json:"head_seq"`
	// Next is the after= of the following page; equal to HeadSeq at the end.
	Next int64 `json:"next"`
}

// AuditKey is one audit public key.
type AuditKey struct {
	KeyID     string `json:"key_id"`
	PublicKey string `json:"public_key_pem"`
	CreatedAt string `json:"created_at"`
	Active    bool   `json:"active"`
}

// AuthFailure is an authentication or authorisation failure, for the audit.
type AuthFailure struct {
	Principal string // "" when no registered principal (or no certificate)
	Remote    string
	Method    string
	Path      string
	Code      string
	Message   string
}

const maxAuditPage = 1000

func (s *Server) auditPage(c echo.Context) error {
	after, err := queryInt(c, "after", 0)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 100)
	if err != nil {
		return err
	}
	if after < 0 || limit < 1 || limit > maxAuditPage {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "after must be ≥ 0 and limit 1..%d", maxAuditPage)
	}
	page, err := s.deps.Audit.Page(c.Request().Context(), after, int(limit))
	if err != nil {
		return apierr.Internal(err)
	}
	return c.JSON(http.StatusOK, page)
}

func (s *Server) auditKeys(c echo.Context) error {
	keys, err := s.deps.Audit.PublicKeys(c.Request().Context())
	if err != nil {
		return apierr.Internal(err)
	}
	return c.JSON(http.StatusOK, map[string]any{"keys": keys})
}

func queryInt(c echo.Context, name string, def int64) (int64, error) {
	v := c.QueryParam(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "%s must be an integer", name)
	}
	return n, nil
}

// authFailed reports a 403 forbidden (role or key not granted, principal
// not registered) to the audit hook.
func (s *Server) authFailed(c echo.Context, ae *apierr.Error) {
	if s.deps.OnAuthFailure == nil || ae == nil || ae.Code != apierr.CodeForbidden {
		return
	}
	req := c.Request()
	f := AuthFailure{Remote: req.RemoteAddr, Method: req.Method, Path: req.URL.Path, Code: ae.Code, Message: ae.Message}
	if p := principalOf(c); p != nil {
		f.Principal = p.Name
	} else if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
		f.Message += " (certificate subject " + req.TLS.PeerCertificates[0].Subject.String() + ")"
	}
	s.deps.OnAuthFailure(req.Context(), f)
}

// errorLog is the http.Server's error log: it goes to zap, and TLS
// handshake failures (no client certificate, a foreign CA, an old protocol)
// are also reported as authentication failures.
type errorLog struct {
	log    *zap.Logger
	onFail func(context.Context, AuthFailure)
}

func (w errorLog) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	w.log.Warn(msg)
	const prefix = "http: TLS handshake error from "
	if w.onFail != nil && strings.HasPrefix(msg, prefix) {
		rest := strings.TrimPrefix(msg, prefix)
		remote, reason, _ := strings.Cut(rest, ": ")
		w.onFail(context.Background(), AuthFailure{Remote: remote, Code: "tls_handshake", Message: reason})
	}
	return len(p), nil
}

func (s *Server) backup(c echo.Context) error {
	res, err := s.deps.Backup(c.Request().Context(), principalOf(c).Name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, res)
}
