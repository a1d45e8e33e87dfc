package app

import (
	"context"
	"time"

	"github.com/custodysigner/appliance/hsm"
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
	Rebuilds uint64 `json:"rebuilds"`
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
	b.SchemaVersion, _ = a.store.SchemaVersion(ctx)
	b.PendingRequests, _ = a.store.CountRequests(ctx, store.StateSigning)
	return b
}
