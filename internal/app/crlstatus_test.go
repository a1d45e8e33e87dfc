package app

import (
	"context"
	"encoding/json"
	"maps"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/devpki"
)

// statusCRL reads the crl object of GET /v1/status, as an auditor (a
// client of the development CA).
func (e *env) statusCRL() CRLStatus {
	e.t.Helper()
	a := e.must(e.client("auditor"), "GET", "/v1/status", nil)
	if a.status != http.StatusOK {
		e.t.Fatalf("GET /v1/status: %d %s", a.status, a.body)
	}
	var b struct {
		CRL *CRLStatus `json:"crl"`
	}
	if err := json.Unmarshal(a.body, &b); err != nil || b.CRL == nil {
		e.t.Fatalf("status without a crl object (%v): %s", err, a.body)
	}
	return *b.CRL
}

// healthCRL reads /v1/health (fresh: its 1 s cache is waited out until
// the crl_stale check says ok as want) and returns the status and that
// check's detail.
func (e *env) healthCRL(wantOK bool) (status, detail string) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a := e.must(e.client("auditor"), "GET", "/v1/health", nil)
		var b struct {
			Status string `json:"status"`
			Checks map[string]struct {
				OK     bool   `json:"ok"`
				Detail string `json:"detail"`
			} `json:"checks"`
		}
		if err := json.Unmarshal(a.body, &b); err != nil {
			e.t.Fatalf("GET /v1/health: %d %s: %v", a.status, a.body, err)
		}
		c, ok := b.Checks[alertCRLStale]
		if !ok {
			e.t.Fatalf("/v1/health has no %s check: %s", alertCRLStale, a.body)
		}
		if c.OK == wantOK {
			return b.Status, c.Detail
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("/v1/health %s check ok=%v, want %v: %s", alertCRLStale, c.OK, wantOK, a.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestStatusWithoutCRL: with no tls.crl, /v1/status says so
// ({"configured": false}) and health has nothing to say about it.
func TestStatusWithoutCRL(t *testing.T) {
	e := newEnv(t)
	e.start()
	raw := e.must(e.client("client"), "GET", "/v1/status", nil)
	if !strings.Contains(string(raw.body), `"crl":{"configured":false,"revoked":0,"stale":false}`) {
		t.Fatalf("status without a CRL: %s", raw.body)
	}
	e.healthCRL(true)
	if v := e.app.metricsSnapshot(context.Background()).CRLNextUpdate; v.OK {
		t.Fatalf("crl_next_update_seconds %v without a CRL, want absent", v.V)
	}
}

// TestStatusCRLState: through the real server, /v1/status shows the client
// CRL in force — path, when it was loaded, per issuer (two CAs in the
// bundle, one CRL each) its thisUpdate, nextUpdate and revoked count, the
// totals and the earliest next update — and a reload that accepts a new
// file moves loaded_at. When one CA's CRL passes its next update, status
// marks it and the whole stale (still readable by a client of the other
// CA, while the stale CA's clients are refused at the handshake),
// /v1/health turns degraded with check crl_stale naming the CA, and the
// alert is raised once; a fresh file and a reload clear both.
func TestStatusCRLState(t *testing.T) {
	e := newEnv(t)
	pki := filepath.Join(e.dir, "pki")
	devCA, err := devpki.LoadCA(pki)
	if err != nil {
		t.Fatal(err)
	}
	partner, err := devpki.NewCA("Partner Clients CA")
	if err != nil {
		t.Fatal(err)
	}
	// A client of the partner CA with a registered principal's name.
	partnerOperator, err := partner.ClientCert("operator", testPrincipalPrefix+"operator")
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(pki, "clients-bundle.crt")
	if err := os.WriteFile(bundle, append(append([]byte{}, devCA.PEM...), partner.PEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	crlPath := filepath.Join(pki, "clients.crl")
	writeCRLs := func(devNext, partnerNext time.Time) (this time.Time) {
		t.Helper()
		this = time.Now().Add(-time.Minute).Truncate(time.Second) // CRL times have whole seconds
		a, err := devCA.CRL(this, devNext, big.NewInt(101), big.NewInt(102))
		if err != nil {
			t.Fatal(err)
		}
		b, err := partner.CRL(this, partnerNext, big.NewInt(201))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crlPath, append(a, b...), 0o600); err != nil {
			t.Fatal(err)
		}
		return this
	}
	devNext, partnerNext := time.Now().Add(2*time.Hour).Truncate(time.Second), time.Now().Add(time.Hour).Truncate(time.Second)
	this := writeCRLs(devNext, partnerNext)
	raw := strings.Replace(string(e.cfg.Raw()), "client_ca: "+pki+"/ca.crt}", "client_ca: "+bundle+", crl: "+crlPath+"}", 1)
	cfgPath := filepath.Join(e.dir, "appliance.yaml")
	if err := os.WriteFile(cfgPath, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	if e.cfg, err = config.Load(cfgPath); err != nil || e.cfg.TLS.CRL != crlPath {
		t.Fatalf("config with tls.crl: %v", err)
	}
	before := time.Now()
	e.start()

	devIssuer, partnerIssuer := devCA.Cert.Subject.String(), partner.Cert.Subject.String()
	type issuer struct {
		name       string
		this, next time.Time
		revoked    int
		stale      bool
	}
	check := func(st CRLStatus, loadedAfter time.Time, stale bool, want ...issuer) {
		t.Helper()
		if !st.Configured || st.Path != crlPath || st.Revoked != 3 || st.Stale != stale {
			t.Fatalf("crl status %+v: want configured, path %s, 3 revoked, stale %v", st, crlPath, stale)
		}
		if st.LoadedAt == nil || st.LoadedAt.Before(loadedAfter) || st.LoadedAt.After(time.Now()) || st.LoadedAt.Location() != time.UTC {
			t.Fatalf("loaded_at %v, want in UTC between %v and now", st.LoadedAt, loadedAfter)
		}
		earliest := slices.MinFunc(want, func(a, b issuer) int { return a.next.Compare(b.next) }).next
		if st.NextUpdate == nil || !st.NextUpdate.Equal(earliest) {
			t.Fatalf("next_update %v, want the earliest %v", st.NextUpdate, earliest)
		}
		if len(st.Issuers) != len(want) {
			t.Fatalf("issuers %+v, want %d", st.Issuers, len(want))
		}
		for i, w := range want {
			g := st.Issuers[i]
			if g.Issuer != w.name || !g.ThisUpdate.Equal(w.this) || g.NextUpdate == nil || !g.NextUpdate.Equal(w.next) || g.Revoked != w.revoked || g.Stale != w.stale {
				t.Fatalf("issuer %d: %+v (next %v), want %+v", i, g, g.NextUpdate, w)
			}
		}
	}
	// Sorted by issuer: "CN=Appliance Development CA,…" before "CN=Partner…".
	check(e.statusCRL(), before, false, issuer{devIssuer, this, devNext, 2, false}, issuer{partnerIssuer, this, partnerNext, 1, false})
	e.healthCRL(true)
	// Exactly the documented fields: counts and dates, no serial numbers.
	var shape struct {
		CRL map[string]json.RawMessage `json:"crl"`
	}
	if err := json.Unmarshal(e.must(e.client("auditor"), "GET", "/v1/status", nil).body, &shape); err != nil {
		t.Fatal(err)
	}
	var issuers []map[string]json.RawMessage
	if err := json.Unmarshal(shape.CRL["issuers"], &issuers); err != nil {
		t.Fatal(err)
	}
	keys := func(m map[string]json.RawMessage) string { return strings.Join(slices.Sorted(maps.Keys(m)), ",") }
	if got := keys(shape.CRL); got != "configured,issuers,loaded_at,next_update,path,revoked,stale" {
		t.Fatalf("crl fields: %s", got)
	}
	if got := keys(issuers[0]); got != "issuer,next_update,revoked,stale,this_update" {
		t.Fatalf("crl issuer fields: %s", got)
	}

	// The partner CA's CRL is replaced by one about to pass its next update.
	partnerNext = time.Now().Add(3 * time.Second).Truncate(time.Second) // at least 2s: the reload and a check first
	this = writeCRLs(devNext, partnerNext)
	reloadedAfter := time.Now()
	if rep, err := e.app.Reload(context.Background()); err != nil || !slices.Contains(rep.Applied, "tls.crl (re-read)") {
		t.Fatalf("reload: %v %+v", err, rep)
	}
	check(e.statusCRL(), reloadedAfter, false, issuer{devIssuer, this, devNext, 2, false}, issuer{partnerIssuer, this, partnerNext, 1, false})

	// The metric that warns before it happens: seconds to the earliest next
	// update, then negative once it has passed.
	crlNextMetric := func() float64 {
		t.Helper()
		v := e.app.metricsSnapshot(context.Background()).CRLNextUpdate
		if !v.OK {
			t.Fatal("no crl_next_update_seconds with a CRL in force")
		}
		return v.V
	}
	if got, want := crlNextMetric(), time.Until(partnerNext).Seconds(); got > want+0.5 || got < want-0.5 {
		t.Fatalf("crl_next_update_seconds %.2f, want about %.2f", got, want)
	}

	time.Sleep(time.Until(partnerNext) + 100*time.Millisecond)
	if got := crlNextMetric(); got >= 0 {
		t.Fatalf("crl_next_update_seconds %.2f once the CRL has passed its next update, want negative", got)
	}
	check(e.statusCRL(), reloadedAfter, true, issuer{devIssuer, this, devNext, 2, false}, issuer{partnerIssuer, this, partnerNext, 1, true})
	status, detail := e.healthCRL(false)
	if status != "degraded" || !strings.Contains(detail, partnerIssuer) || !strings.Contains(detail, "has passed its next update") || strings.Contains(detail, devIssuer) {
		t.Fatalf("health while stale: %s, crl_stale %q", status, detail)
	}
	// What stale means: the partner CA's clients are refused at the handshake.
	if resp, _, err := e.getOnce(&partnerOperator, "/v1/status"); err == nil {
		t.Fatalf("a client of the stale CRL's CA was served (%d)", resp.StatusCode)
	}
	e.healthCRL(false) // probed again: still one "alert raised"
	if n := e.logs.FilterMessage("alert raised").FilterField(zap.String("alert", alertCRLStale)).Len(); n != 1 {
		t.Fatalf("%d 'alert raised' lines for %s, want 1", n, alertCRLStale)
	}

	// A fresh file and a reload: in force, no longer stale, health clears.
	partnerNext = time.Now().Add(time.Hour).Truncate(time.Second)
	this = writeCRLs(devNext, partnerNext)
	reloadedAfter = time.Now()
	if rep, err := e.app.Reload(context.Background()); err != nil || len(rep.Refused) != 0 {
		t.Fatalf("reload: %v %+v", err, rep)
	}
	check(e.statusCRL(), reloadedAfter, false, issuer{devIssuer, this, devNext, 2, false}, issuer{partnerIssuer, this, partnerNext, 1, false})
	e.healthCRL(true)
	if n := e.logs.FilterMessage("alert cleared").FilterField(zap.String("alert", alertCRLStale)).Len(); n != 1 {
		t.Fatalf("%d 'alert cleared' lines for %s, want 1", n, alertCRLStale)
	}
	if resp, body, err := e.getOnce(&partnerOperator, "/v1/status"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the partner CA's client after a fresh CRL: %v %v %s", err, resp, body)
	}
}
