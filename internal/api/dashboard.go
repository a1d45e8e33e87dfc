package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/seal"
)

// DashboardPath is where the read-only operator dashboard is served.
const DashboardPath = "/dashboard"

// DashboardRoles may read the dashboard; clients and unregistered
// principals get 403 forbidden.
var DashboardRoles = []access.Role{access.RoleOperator, access.RoleOfficer, access.RoleAuditor}

// DashboardFunc gathers what the dashboard shows, for viewer.
type DashboardFunc func(ctx context.Context, viewer *access.Principal) (*DashboardView, error)

// DashboardView is what GET /dashboard renders. It carries no secret: no
// share, PIN, idempotency key or payload. Every string is escaped by
// html/template on output, whatever its origin.
type DashboardView struct {
	Viewer      string
	Roles       []string
	GeneratedAt time.Time
	// RefreshSeconds > 0 adds <meta http-equiv="refresh">.
	RefreshSeconds int

	Version   string
	Mode      string
	GoVersion string
	StartedAt time.Time
	Uptime    time.Duration
	Ready     bool

	Seal   seal.State
	Health health.Report

	Keys    []DashboardKey
	Pending []DashboardPending
	Recent  []DashboardRequest
	Lists   []DashboardList

	SchemaVersion int
	// HSM is the PKCS#11 library and token, nil while sealed (HSMNote says why).
	HSM     *hsm.Info
	HSMNote string

	Audit DashboardAudit
	// Problems lists parts of the page that could not be read.
	Problems []string
}

// DashboardKey is one registered key.
type DashboardKey struct {
	ID, Label, Algorithm, Chain, Network, Address string
	State                                         string // "in service", "refused" or "unchecked"
	Reason                                        string // why refused or unchecked
}

// DashboardField is one line of a decoded intent.
type DashboardField struct{ Name, Value string }

// DashboardPending is a request waiting for officers' approvals.
type DashboardPending struct {
	ID, KeyID, Chain, Network, Principal string
	CreatedAt, ExpiresAt                 time.Time
	Summary                              []DashboardField
	IntentJSON                           string // the stored intent, indented
	Required                             int
	Approvals                            []string // officers who approved
	Digest                               string   // hex of what officers sign
}

// DashboardRequest is one recent request.
type DashboardRequest struct {
	ID, KeyID, Chain, State, Code, Message, Principal, Summary string
	CreatedAt, UpdatedAt                                       time.Time
}

// DashboardList is one known-risk list in force.
type DashboardList struct {
	Name, Chain, SHA256, Error string
	Count, Rejected            int
	LoadedAt                   time.Time
}

// DashboardAudit is the audit chain's head and last signed checkpoint.
type DashboardAudit struct {
	HeadSeq  int64
	HeadHash string
	// CheckpointSeq is 0 when no checkpoint has been signed yet.
	CheckpointSeq   int64
	CheckpointAt    time.Time
	CheckpointKeyID string
	CheckpointHash  string
}

var (
	//go:embed dashboard/dashboard.html
	dashboardHTML string
	//go:embed dashboard/dashboard.css
	dashboardCSS string

	dashboardTmpl = template.Must(template.New("dashboard").Funcs(template.FuncMap{
		"when":  dashboardTime,
		"short": shorten,
		"dur":   func(d time.Duration) string { return d.Truncate(time.Second).String() },
		"sub":   func(a, b int64) int64 { return a - b },
	}).Parse(dashboardHTML))

	// dashboardCSP allows nothing but the one inline stylesheet, by hash:
	// no script, no image, no frame, no form target, no base.
	dashboardCSP = func() string {
		h := sha256.Sum256([]byte(dashboardCSS))
		return "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(h[:]) +
			"'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	}()
)

func dashboardTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05")
}

func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}

// dashboard renders the read-only status page. It changes nothing: the page
// has no form, no script and no link that acts.
func (s *Server) dashboard(c echo.Context) error {
	p := principalOf(c)
	v, err := s.deps.Dashboard(c.Request().Context(), p)
	if err != nil {
		return apierr.Internal(fmt.Errorf("dashboard: %w", err))
	}
	v.Viewer = p.Name
	v.Roles = v.Roles[:0]
	for _, r := range p.Roles {
		v.Roles = append(v.Roles, string(r))
	}
	var buf bytes.Buffer
	if err := dashboardTmpl.Execute(&buf, struct {
		*DashboardView
		CSS template.CSS
	}{v, template.CSS(dashboardCSS)}); err != nil {
		return apierr.Internal(fmt.Errorf("dashboard: render: %w", err))
	}
	h := c.Response().Header()
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	return c.HTMLBlob(http.StatusOK, buf.Bytes())
}
