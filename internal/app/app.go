// Package app is the composition root: it wires configuration, logging,
// the store, the HSM, the key registry, the signing service and the API
// server together, in one place, with no globals.
package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

// App is a running appliance.
type App struct {
	cfg      *config.Config
	log      *zap.Logger
	version  string
	started  time.Time
	store    *store.Store
	hsm      *hsm.Module
	keys     *signing.Keyring
	access   *access.Registry
	checker  *health.Checker
	notifier *health.Notifier
	server   *api.Server
	ready    atomic.Bool
}

// New opens the store and the HSM, reconciles the key registry with the
// token and builds the API server. It does not listen yet.
func New(ctx context.Context, cfg *config.Config, log *zap.Logger, version string) (_ *App, err error) {
	a := &App{cfg: cfg, log: log, version: version, started: time.Now(), notifier: health.NewNotifier(log)}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	a.notifier.Status("opening store")
	if a.store, err = store.Open(ctx, cfg.Store.Path, log.Named("store")); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	a.notifier.Status("opening HSM")
	if a.hsm, err = OpenHSM(ctx, cfg, log); err != nil {
		return nil, err
	}
	if a.keys, err = signing.LoadKeyring(ctx, a.store, a.hsm, log.Named("keys")); err != nil {
		return nil, err
	}
	svc, err := signing.New(a.store, a.hsm, a.keys, log.Named("signing"))
	if err != nil {
		return nil, err
	}
	a.access = access.NewRegistry(cfg.Principals)
	a.checker = health.NewChecker(2*time.Second, time.Second,
		health.Check{Name: "hsm", Critical: true, Probe: a.probeHSM},
		health.Check{Name: "store", Critical: true, Probe: a.store.Probe},
		health.Check{Name: "keys", Probe: a.probeKeys},
	)
	tlsCfg, err := api.TLSConfig(cfg.TLS)
	if err != nil {
		return nil, err
	}
	a.server, err = api.New(api.Deps{
		Log: log.Named("api"), Access: a.access, Signer: svc, Keys: a.keys,
		Health: a.checker, Status: a.status, HTTP: cfg.HTTP, TLS: tlsCfg,
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// OpenHSM loads the PKCS#11 module named by the configuration and logs in.
func OpenHSM(ctx context.Context, cfg *config.Config, log *zap.Logger) (*hsm.Module, error) {
	if cfg.HSM.SoftHSM2Conf != "" {
		// SoftHSM reads this at C_Initialize; set it before the module loads.
		if err := os.Setenv("SOFTHSM2_CONF", cfg.HSM.SoftHSM2Conf); err != nil {
			return nil, err
		}
	}
	uri, err := hsm.ParseURI(cfg.HSM.URI)
	if err != nil {
		return nil, fmt.Errorf("hsm.uri: %w", err)
	}
	m, err := hsm.Open(ctx, hsm.Options{
		URI: uri, PoolSize: cfg.HSM.PoolSize, AcquireTimeout: cfg.HSM.AcquireTimeout.D(), Logger: log.Named("hsm"),
	})
	if err != nil {
		return nil, fmt.Errorf("open HSM %s: %w", uri, err)
	}
	return m, nil
}

func (a *App) probeHSM(ctx context.Context) error {
	if h := a.hsm.Health(); !h.Healthy {
		return fmt.Errorf("unhealthy: %s", h.Reason)
	}
	return a.hsm.Probe(ctx)
}

func (a *App) probeKeys(context.Context) error {
	var bad int
	for _, k := range a.keys.List() {
		if a.keys.Usable(k, a.hsm) != nil {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d key(s) refused service; see /v1/status", bad)
	}
	return nil
}

// Serve listens on the configured address and serves until ctx ends, then
// shuts down gracefully: stop accepting, finish in-flight requests within
// the shutdown timeout, close HSM sessions and the store.
func (a *App) Serve(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", a.cfg.Listen, err)
	}
	return a.ServeListener(ctx, ln)
}

// ServeListener is Serve on an existing listener (tests pass 127.0.0.1:0).
func (a *App) ServeListener(ctx context.Context, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- a.server.Serve(ln) }()
	wctx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	go a.notifier.Monitor(wctx, a.checker, health.DefaultMonitorInterval)

	a.ready.Store(true)
	a.notifier.Ready()
	a.notifier.Status("serving on " + ln.Addr().String())
	a.log.Info("appliance serving", zap.String("addr", ln.Addr().String()), zap.String("version", a.version),
		zap.String("mode", string(a.cfg.Mode)), zap.Int("keys", len(a.keys.List())))

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	a.ready.Store(false)
	a.notifier.Stopping()
	a.notifier.Status("shutting down")
	a.log.Info("shutting down: finishing in-flight requests", zap.Duration("bound", a.cfg.HTTP.ShutdownTimeout.D()))
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.HTTP.ShutdownTimeout.D())
	defer cancel()
	if err := a.server.Shutdown(sctx); err != nil {
		a.log.Warn("in-flight requests did not finish in time", zap.Error(err))
	}
	return <-errc
}

// Close releases the HSM and the store. It is safe on a partly built App.
func (a *App) Close() {
	var errs []error
	if a.hsm != nil {
		errs = append(errs, a.hsm.Close())
	}
	if a.store != nil {
		errs = append(errs, a.store.Close())
	}
	if err := errors.Join(errs...); err != nil {
		a.log.Warn("closing", zap.Error(err))
	}
}
