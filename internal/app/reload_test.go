package app

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/config"
)

// TestConfigReloadOnSIGHUP: the configuration comes from a file; SIGHUP
// applies a new log level and threshold at once, reports a changed listen
// address as needing a restart (and keeps serving where it was), shows the
// new hash in /v1/status, and audits each reload. A file that no longer
// parses changes nothing. A restart with a changed file records
// config_changed.
func TestConfigReloadOnSIGHUP(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(e.dir, "appliance.yaml")
	write := func(extra string) {
		t.Helper()
		if err := os.WriteFile(path, append(e.cfg.Raw(), []byte(extra)...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = cfg
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	e.start()
	e.app.SetLogLevel(level)
	status := func() map[string]any {
		return e.must(e.client("operator"), "GET", "/v1/status", nil).json(t)["config"].(map[string]any)
	}
	if got := status()["sha256"]; got != cfg.Digest() {
		t.Fatalf("status config hash %v, want %s", got, cfg.Digest())
	}

	// Log level and a threshold change; the listen address too.
	if !strings.Contains(string(cfg.Raw()), "log: {level: debug}") {
		t.Fatalf("unexpected test config: %s", cfg.Raw())
	}
	raw := strings.Replace(string(cfg.Raw()), "log: {level: debug}", "log: {level: warn}", 1)
	raw = strings.Replace(raw, "listen: 127.0.0.1:0", "listen: 127.0.0.1:1", 1)
	raw += "health: {pending_approvals_max: 7}\n"
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "reload", func() bool { return level.Level() == zap.WarnLevel })
	st := status()
	if st["sha256"] == cfg.Digest() || fmt.Sprint(st["needs_restart"]) != "[listen]" {
		t.Fatalf("after reload: %v", st)
	}
	if got := e.app.healthCfg().PendingApprovalsMax; got != 7 {
		t.Fatalf("threshold after reload: %d", got)
	}
	if a := e.must(e.client("operator"), "GET", "/v1/health", nil); a.status != http.StatusOK {
		t.Fatalf("still serving on the old address: %d", a.status)
	}

	// A broken file: refused, nothing changes.
	if err := os.WriteFile(path, []byte("mode: [broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.app.Reload(context.Background()); err == nil {
		t.Fatal("a broken configuration was reloaded")
	}
	if level.Level() != zap.WarnLevel || e.app.healthCfg().PendingApprovalsMax != 7 {
		t.Fatal("a refused reload changed something")
	}
	e.stop()
	kinds := strings.Join(auditKinds(t, e.cfg.Store.Path), " ")
	if strings.Count(kinds, "config_reload") != 2 {
		t.Fatalf("reloads audited: %s", kinds)
	}

	// Restart with the changed file: the change is recorded.
	write("health: {pending_approvals_max: 9}\n")
	if e.cfg, err = config.Load(path); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.stop()
	if kinds := strings.Join(auditKinds(t, e.cfg.Store.Path), " "); !strings.Contains(kinds, "config_changed") {
		t.Fatalf("no config_changed after a restart with another file: %s", kinds)
	}
}
