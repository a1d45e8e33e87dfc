package app

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/seal"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

// StatusBody is the JSON of GET /v1/status.
type StatusBody struct {
	Version         string         `json:"version"`
	Mode            string         `json:"mode"`
	StartedAt       time.Time      `json:"started_at"`
	UptimeSeconds   int64          `json:"uptime_seconds"`
	Ready           bool           `json:"ready"`
	Sealed          bool           `json:"sealed"`
	Frozen          bool           `json:"frozen"`
	Seal            seal.State     `json:"seal"`
	SchemaVersion   int            `json:"schema_version"`
	Keys            int            `json:"keys"`
	KeysRefused     []KeyRefusal   `json:"keys_refused"`
	PendingRequests int            `json:"pending_requests"`
	HSM             HSMStatus      `json:"hsm"`
	Lists           map[string]any `json:"lists"`
	// Config is the configuration file's hash (as loaded at start or by the
	// last reload) and the changed sections waiting for a restart.
	Config ConfigStatus `json:"config"`
	// CRL is the client CRL in force (tls.crl); {"configured": false, …}
	// without one.
	CRL CRLStatus `json:"crl"`
}

// CRLStatus is the client CRL part of the status: what the CRL in force
// says about itself (counts and dates, never the revoked serials).
type CRLStatus struct {
	Configured bool   `json:"configured"`
	Path       string `json:"path,omitempty"`
	// LoadedAt is when the file in force was read: at start, or by the last
	// reload that accepted it (a refused one leaves it unchanged).
	LoadedAt *time.Time `json:"loaded_at,omitempty"`
	// NextUpdate is the earliest next update of the CRLs in force.
	NextUpdate *time.Time `json:"next_update,omitempty"`
	Revoked    int        `json:"revoked"` // revoked serials, all issuers together
	// Stale: a CRL in force has passed its next update, so every client
	// certificate of its CA is refused at the handshake until a fresh file
	// is loaded (SIGHUP). /v1/health is degraded meanwhile (crl_stale).
	Stale   bool              `json:"stale"`
	Issuers []CRLIssuerStatus `json:"issuers,omitempty"`
}

// CRLIssuerStatus is one CA's CRL in force.
type CRLIssuerStatus struct {
	Issuer     string     `json:"issuer"`
	ThisUpdate time.Time  `json:"this_update"`
	NextUpdate *time.Time `json:"next_update,omitempty"` // absent: the CRL names none
	Revoked    int        `json:"revoked"`
	Stale      bool       `json:"stale"`
}

// ConfigStatus is the configuration part of the status.
type ConfigStatus struct {
	SHA256       string    `json:"sha256"`
	LoadedAt     time.Time `json:"loaded_at"`
	NeedsRestart []string  `json:"needs_restart"`
}

// KeyRefusal says which key cannot sign and why.
type KeyRefusal struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// HSMStatus is the HSM part of the status.
type HSMStatus struct {
	Healthy  bool   `json:"healthy"`
	Reason   string `json:"reason,omitempty"`
	Sessions int    `json:"sessions"`
	InUse    int    `json:"in_use"`
	Waiters  int    `json:"waiters"`
	// TurnWaiters are sign requests' signatures waiting for their
	// principal's turn for the HSM (signing.Service.HSMTurnWaits), from
	// TurnPrincipals principals: under load they queue there, in front of
	// the pool, so Waiters stays near zero.
	TurnWaiters    int    `json:"turn_waiters"`
	TurnPrincipals int    `json:"turn_principals"`
	Rebuilds       uint64 `json:"rebuilds"`
	// UnavailableSince is when the HSM probe started failing, while it
	// fails (see hsm.unavailable_grace).
	UnavailableSince *time.Time `json:"unavailable_since,omitempty"`
}

func (a *App) status(ctx context.Context) any {
	st := a.seal.State()
	var h hsm.Health
	m := a.currentModule()
	if m != nil {
		h = m.Health()
	} else {
		h.Reason = "sealed: the HSM is not open"
	}
	b := StatusBody{Sealed: st.Sealed, Frozen: st.Frozen, Seal: st,
		Version: a.version, Mode: string(a.cfg.Mode), StartedAt: a.started.UTC(),
		UptimeSeconds: int64(time.Since(a.started).Seconds()), Ready: a.ready.Load(),
		KeysRefused: []KeyRefusal{}, Lists: map[string]any{},
		HSM: HSMStatus{Healthy: h.Healthy, Reason: h.Reason, Sessions: h.PoolSize, InUse: h.InUse, Waiters: h.Waiters, Rebuilds: h.Rebuilds},
	}
	b.HSM.TurnWaiters, b.HSM.TurnPrincipals = a.signer.HSMTurnWaits()
	if since := a.hsmDownSince.Load(); since != nil && m != nil {
		t := since.UTC()
		b.HSM.UnavailableSince = &t
	}
	keys := a.keys.List()
	b.Keys = len(keys)
	for _, k := range keys {
		if m == nil {
			break // keys are checked against the token at unseal
		}
		err := a.keys.Refused(k.ID)
		if err == nil {
			err = m.KeyError(k.CKAID)
		}
		if err != nil {
			b.KeysRefused = append(b.KeysRefused, KeyRefusal{ID: k.ID, Reason: signing.RefusalText(err)})
		}
	}
	if a.screener != nil {
		for _, v := range a.screener.Versions() {
			b.Lists[v.Name] = v
		}
	}
	b.Config.SHA256, b.Config.LoadedAt, b.Config.NeedsRestart = a.configStatus()
	b.CRL = a.crlStatus()
	b.SchemaVersion, _ = a.store.SchemaVersion(ctx)
	b.PendingRequests, _ = a.store.CountRequests(ctx, store.StateSigning)
	return b
}

// crlStatus describes the client CRL in force.
func (a *App) crlStatus() CRLStatus {
	var st *api.CRLState
	if a.tls != nil {
		st = a.tls.CRL()
	}
	if st == nil {
		return CRLStatus{}
	}
	utc := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	c := CRLStatus{Configured: true, Path: st.Path, LoadedAt: utc(st.LoadedAt), NextUpdate: utc(st.NextUpdate),
		Revoked: st.Revoked, Stale: st.Stale, Issuers: []CRLIssuerStatus{}}
	for _, l := range st.Lists {
		c.Issuers = append(c.Issuers, CRLIssuerStatus{Issuer: l.Issuer, ThisUpdate: l.ThisUpdate.UTC(),
			NextUpdate: utc(l.NextUpdate), Revoked: l.Revoked, Stale: l.Stale})
	}
	return c
}

// alertCRLStale is the alert, and the /v1/health check, raised while a
// client CRL in force has passed its next update.
const alertCRLStale = "crl_stale"

// crlCheck makes /v1/health degraded, and raises crl_stale, while a client
// CRL in force is stale: every client of its CA is being refused at the
// handshake, so for them the appliance is as good as down, and /v1/status
// may be out of their reach — the alert also shows on the metrics
// listener, which needs no certificate. Degraded, never down: a restart
// would not help (the start refuses an expired CRL), and stopping the
// watchdog would take down the clients of the other CAs too. A fresh file
// and SIGHUP clear it.
func (a *App) crlCheck() health.Check {
	return a.obs.alerts.Check(alertCRLStale, func(context.Context) error {
		if a.tls == nil {
			return nil
		}
		st := a.tls.CRL()
		if st == nil || !st.Stale {
			return nil
		}
		var stale []string
		for _, l := range st.Lists {
			if l.Stale {
				stale = append(stale, fmt.Sprintf("%q (next update %s)", l.Issuer, l.NextUpdate.UTC().Format(time.RFC3339)))
			}
		}
		return fmt.Errorf("client CRL %s: the CRL of %s has passed its next update: every client certificate of that CA is refused until a fresh CRL is loaded (SIGHUP)",
			st.Path, strings.Join(stale, ", "))
	})
}
