package app

import (
	"context"
	"errors"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/config"
)

// ReloadReport says what a configuration reload did.
type ReloadReport struct {
	ConfigSHA256 string   `json:"config_sha256"`
	Applied      []string `json:"applied"`
	// NeedsRestart lists the changed sections that only a restart applies;
	// until then the running values stay in force.
	NeedsRestart []string `json:"needs_restart"`
	// Refused lists the files that were re-read and refused, with the
	// reason; what was in force before stays.
	Refused []string `json:"refused,omitempty"`
}

// configState is what /v1/status says about the configuration.
type configState struct {
	mu           sync.Mutex
	sha256       string // of the file last loaded (at start or by a reload)
	loadedAt     time.Time
	needsRestart []string
}

// SetLogLevel gives the App the logger's level, so a reload can change it.
func (a *App) SetLogLevel(l zap.AtomicLevel) { a.level = &l }

// Reload re-reads the configuration file and applies what can change
// safely without a restart: the log level, the health thresholds, the
// known-risk list files and the client CRL file tls.crl (both re-read).
// Anything else that changed is reported as needing a restart and left as
// it is. A file that does not parse changes nothing. Every reload is
// audited with the file's hash.
func (a *App) Reload(ctx context.Context) (*ReloadReport, error) {
	path := a.cfg.Path()
	if path == "" {
		return nil, errors.New("reload: the configuration was not loaded from a file")
	}
	next, err := config.Load(path)
	if err != nil {
		a.log.Error("configuration reload refused: the running configuration stays in force", zap.Error(err))
		a.recordReload(ctx, audit.Record{Kind: "config_reload", Detail: "refused: " + err.Error(),
			Fields: map[string]string{"result": "refused", "config_sha256": a.configSHA()}})
		return nil, err
	}
	rep := &ReloadReport{ConfigSHA256: next.Digest(), Applied: []string{}, NeedsRestart: []string{}}
	cur, nv := reflect.ValueOf(*a.cfg), reflect.ValueOf(*next)
	for i := 0; i < cur.NumField(); i++ {
		f := cur.Type().Field(i)
		if !f.IsExported() || reflect.DeepEqual(cur.Field(i).Interface(), nv.Field(i).Interface()) {
			continue
		}
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		switch name {
		case "health":
			h := next.Health
			a.health.Store(&h)
			rep.Applied = append(rep.Applied, "health")
		case "log":
			if next.Log.Format != a.cfg.Log.Format || a.level == nil {
				rep.NeedsRestart = append(rep.NeedsRestart, "log")
				continue
			}
			lvl, _ := zapcore.ParseLevel(next.Log.Level)
			a.level.SetLevel(lvl)
			rep.Applied = append(rep.Applied, "log.level")
		default:
			rep.NeedsRestart = append(rep.NeedsRestart, name)
		}
	}
	if a.screener != nil {
		// The files are re-read whatever the configuration says; a changed
		// set of lists is a restart (above, "screening").
		if err := a.screener.Reload(); err != nil {
			a.log.Error("known-risk list reload", zap.Error(err))
		}
		rep.Applied = append(rep.Applied, "screening (list files re-read)")
	}
	if a.tls != nil {
		// A CRL that is refused (bad signature, expired, unreadable) leaves
		// the one in force; a changed tls section is a restart (above).
		if configured, err := a.tls.ReloadCRL(); err != nil {
			a.log.Error("client CRL reload refused: the CRL in force stays", zap.Error(err))
			rep.Refused = append(rep.Refused, "tls.crl: "+err.Error())
		} else if configured {
			rep.Applied = append(rep.Applied, "tls.crl (re-read)")
			a.logCRL()
		}
	}
	a.conf.mu.Lock()
	a.conf.sha256, a.conf.loadedAt, a.conf.needsRestart = rep.ConfigSHA256, time.Now().UTC(), rep.NeedsRestart
	a.conf.mu.Unlock()
	fields := map[string]string{"result": "reloaded", "config_sha256": rep.ConfigSHA256,
		"applied": strings.Join(rep.Applied, ","), "needs_restart": strings.Join(rep.NeedsRestart, ",")}
	if len(rep.Refused) > 0 {
		fields["refused"] = strings.Join(rep.Refused, "; ")
	}
	a.recordReload(ctx, audit.Record{Kind: "config_reload", Detail: "configuration reloaded", Fields: fields})
	a.log.Info("configuration reloaded", zap.String("config_sha256", rep.ConfigSHA256),
		zap.Strings("applied", rep.Applied), zap.Strings("needs_restart", rep.NeedsRestart))
	if len(rep.NeedsRestart) > 0 {
		a.log.Warn("changed configuration sections need a restart to take effect", zap.Strings("sections", rep.NeedsRestart))
	}
	return rep, nil
}

// recordReload audits a reload; a reload that changed something has
// already happened, so a failure to record it is logged (and counted by
// the tripwire's record failures through the next request, not here).
func (a *App) recordReload(ctx context.Context, rec audit.Record) {
	if err := a.store.RecordAudit(ctx, rec); err != nil {
		a.log.Error("recording a configuration reload", zap.Error(err))
	}
}

// reloadOnSignal reloads on every delivery of sig until ctx ends.
func (a *App) reloadOnSignal(ctx context.Context, sig <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sig:
			a.log.Info("reloading the configuration on signal", zap.String("signal", s.String()))
			_, _ = a.Reload(ctx)
		}
	}
}

func (a *App) configSHA() string {
	a.conf.mu.Lock()
	defer a.conf.mu.Unlock()
	return a.conf.sha256
}

// recordConfigAtStart audits the start with the configuration's hash, and
// a config_changed entry when it differs from the one the chain last saw.
func (a *App) recordConfigAtStart(ctx context.Context) error {
	prev, err := a.store.LastConfigSHA(ctx)
	if err != nil {
		return err
	}
	sha := a.cfg.Digest()
	a.conf.sha256, a.conf.loadedAt = sha, time.Now().UTC()
	err = a.store.RecordAudit(ctx, audit.Record{Kind: "start", Detail: "appliance starting",
		Fields: map[string]string{"version": a.version, "mode": string(a.cfg.Mode), "config_sha256": sha}})
	if err != nil {
		return err
	}
	if prev != "" && prev != sha {
		return a.store.RecordAudit(ctx, audit.Record{Kind: "config_changed", Detail: "the configuration differs from the one last recorded",
			Fields: map[string]string{"previous_config_sha256": prev, "config_sha256": sha}})
	}
	return nil
}

// configStatus is the configuration part of /v1/status.
func (a *App) configStatus() (sha string, loaded time.Time, restart []string) {
	a.conf.mu.Lock()
	defer a.conf.mu.Unlock()
	return a.conf.sha256, a.conf.loadedAt, append([]string{}, a.conf.needsRestart...)
}

// logCRL logs the client CRL in force, with a warning when its next update
// is less than a day away: past it, every client certificate of its CA is
// refused until a fresh CRL is loaded.
func (a *App) logCRL() {
	st := a.tls.CRL()
	if st == nil {
		return
	}
	fields := []zap.Field{zap.String("path", st.Path), zap.Strings("issuers", st.Issuers), zap.Int("revoked", st.Revoked)}
	if st.NextUpdate.IsZero() {
		a.log.Info("client CRL loaded (no next update)", fields...)
		return
	}
	fields = append(fields, zap.Time("next_update", st.NextUpdate))
	if time.Until(st.NextUpdate) < 24*time.Hour {
		a.log.Warn("client CRL loaded: its next update is less than a day away; past it every client of its CA is refused until a fresh CRL is loaded (SIGHUP)", fields...)
		return
	}
	a.log.Info("client CRL loaded", fields...)
}
