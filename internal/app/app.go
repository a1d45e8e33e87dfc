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
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/governance"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/screening"
	"github.com/custodysigner/appliance/internal/seal"
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
	keys     *signing.Keyring
	signer   *signing.Service
	access   *access.Registry
	seal     *seal.Manager
	trip     *seal.Tripwire
	screener *screening.Screener // nil without configured lists
	gov      *governance.Service // nil without an officer ceremony
	checker  *health.Checker
	notifier *health.Notifier
	server   *api.Server
	tls      *api.TLS // the API's TLS, whose CRL a reload re-reads
	ready    atomic.Bool

	audit     *checkpointer
	obs       *observability                // metrics, the recent sign outcomes, threshold alerts
	retention retentionFailures             // the retention steps whose last pass failed
	health    atomic.Pointer[config.Health] // thresholds in force (a reload swaps them)
	level     *zap.AtomicLevel              // the logger's level, when the caller gave it (SetLogLevel)
	conf      configState

	// hsmDownSince is when the HSM probe started failing while unsealed
	// (zero while it passes): within hsm.unavailable_grace of it health is
	// degraded, after it down.
	hsmDownSince atomic.Pointer[time.Time]
	// lock is held from the store's opening to Close (lock.go).
	lock *serveLock
	// interpose wraps the PKCS#11 library of the modules Unseal opens
	// (tests inject faults through it); nil in production.
	interpose func(hsm.Cryptoki) hsm.Cryptoki

	mu          sync.RWMutex
	hsm         *hsm.Module  // open while unsealed, nil while sealed
	auditSigner *auditSigner // the audit key while unsealed
	backupAuth  []byte       // the backup manifest MAC key while unsealed
}

// New opens the store, loads the key registry and the seal state, and
// builds the API server. The appliance starts sealed: the HSM is opened only
// when a quorum of officers unseals it (or the auto-unseal source does, in
// Serve).
func New(ctx context.Context, cfg *config.Config, log *zap.Logger, version string) (_ *App, err error) {
	a := &App{cfg: cfg, log: log, version: version, started: time.Now(), notifier: health.NewNotifier(log)}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	if cfg.HSM.SoftHSM2Conf != "" {
		// SoftHSM reads this at C_Initialize; set it before the module loads.
		if err := os.Setenv("SOFTHSM2_CONF", cfg.HSM.SoftHSM2Conf); err != nil {
			return nil, err
		}
	}
	a.notifier.Status("opening store")
	// Never a new database here: a missing or emptied one means the
	// installation's state is lost while the token still holds its keys.
	if a.store, err = store.OpenExisting(ctx, cfg.Store.Path, log.Named("store")); err != nil {
		if errors.Is(err, ErrNoDatabase) {
			return nil, fmt.Errorf("refusing to start: %w", noDatabase(err))
		}
		return nil, fmt.Errorf("open store: %w", err)
	}
	// One serving appliance per database: a second would keep its own
	// freeze state, so an officer's freeze would not stop it.
	if a.lock, err = lockDatabase(cfg.Store.Path); err != nil {
		return nil, err
	}
	// Integrity at start: a damaged database is refused with a clear report,
	// never served (and never unsealed).
	if err := a.checkAtStart(ctx, cfg.Store.Path); err != nil {
		return nil, err
	}
	// Fail closed from the first moment: an appliance that cannot write its
	// audit log does not start.
	a.health.Store(&cfg.Health)
	if err := a.recordConfigAtStart(ctx); err != nil {
		return nil, fmt.Errorf("the audit log cannot be written; refusing to start: %w", err)
	}
	a.audit = &checkpointer{a: a, every: int64(cfg.Audit.CheckpointEvery), interval: cfg.Audit.CheckpointInterval.D(), lastAt: time.Now()}
	if a.keys, err = signing.LoadKeyring(ctx, a.store); err != nil {
		return nil, err
	}
	a.access = access.NewRegistry(cfg.Principals)
	if err := a.reloadPrincipals(ctx); err != nil {
		return nil, err
	}
	sopts := seal.Options{ProgressTTL: cfg.Seal.ProgressTTL.D(), Log: log.Named("seal")}
	if cfg.Seal.AutoUnseal {
		sopts.AutoPIN, sopts.AutoSource = a.autoPIN()
	}
	if a.seal, err = seal.New(ctx, a.store, a, sopts); err != nil {
		return nil, err
	}
	if _, err := a.store.GetCeremony(ctx); err == nil {
		if a.gov, err = governance.New(ctx, a.store, a, 0, cfg.Seal.ProposalTTL.D(), log.Named("governance")); err != nil {
			return nil, err
		}
	}
	svc, err := signing.New(a.store, a.seal, a.currentSigner, a.keys, log.Named("signing"))
	if err != nil {
		return nil, err
	}
	a.trip = seal.NewTripwire(a.seal, seal.TripwireOptions{RecordFailures: cfg.Freeze.AfterRecordFailures,
		Denials: cfg.Freeze.AfterDenials, DenialWindow: cfg.Freeze.DenialWindow.D()}, log.Named("tripwire"))
	svc.ObserveRecords(a.trip)
	// Principals take turns for the HSM's sessions: one client's flood
	// queues behind another's lone request, not in front of it.
	svc.FairHSM(cfg.HSM.PoolSize, cfg.HSM.AcquireTimeout.D())
	a.signer = svc
	rules, err := policy.New(log.Named("policy"))
	if err != nil {
		return nil, err
	}
	svc.EnforcePolicy(rules, a.store, cfg.Seal.ProposalTTL.D(), cfg.Seal.RejectionsToEnd)
	if len(cfg.Screening.Lists) > 0 {
		var sources []screening.ListSource
		for _, l := range cfg.Screening.Lists {
			sources = append(sources, screening.ListSource{Name: l.Name, Chain: screening.Chain(l.Chain), Path: l.Path})
		}
		if a.screener, err = screening.New(sources, screeningNormalizers(), log.Named("screening")); err != nil {
			return nil, fmt.Errorf("known-risk lists: %w", err)
		}
		svc.ScreenWith(a.screener)
		a.screener.OnChange(func(v screening.Version) {
			rec := audit.Record{Kind: "config_reload", Detail: "known-risk list " + v.Name + " reloaded",
				Fields: map[string]string{"list": v.Name, "chain": string(v.Chain), "path": v.Path, "sha256": v.SHA256,
					"count": fmt.Sprint(v.Count), "rejected": fmt.Sprint(v.Rejected), "error": v.Error}}
			if err := a.store.RecordAudit(context.Background(), rec); err != nil {
				a.log.Error("recording a list reload", zap.Error(err))
			}
		})
	}
	a.obs = newObservability(a)
	a.checker = health.NewChecker(2*time.Second, time.Second, append([]health.Check{
		{Name: "hsm", Critical: true, Probe: a.probeHSM},
		{Name: "store", Critical: true, Probe: a.store.Probe},
		{Name: "keys", Probe: a.probeKeys},
	}, append(a.thresholdChecks(), a.crlCheck(), a.retentionCheck())...)...)
	if a.tls, err = api.NewTLS(cfg.TLS); err != nil {
		return nil, err
	}
	a.logCRL()
	deps := api.Deps{
		Log: log.Named("api"), Access: a.access, Signer: svc, Keys: a.keys,
		Health: a.checker, Status: a.status, HTTP: cfg.HTTP, TLS: a.tls.Config(),
		Seal: a.seal, Sealed: func() (bool, bool) { st := a.seal.State(); return st.Sealed, st.Frozen },
		OnDenied:      a.trip.Denied,
		Audit:         auditAPI{a},
		Backup:        func(ctx context.Context, by string) (any, error) { return a.Backup(ctx, by) },
		OnAuthFailure: (&authAuditor{a: a, perMinute: cfg.Audit.AuthFailuresPerMinute}).failed,
		Observe:       a.obs.observe,
		Dashboard:     a.dashboard,
	}
	if a.gov != nil {
		deps.Governance = a.gov
	}
	if a.screener != nil {
		deps.Screener = a.screener
	}
	if a.server, err = api.New(deps); err != nil {
		return nil, err
	}
	return a, nil
}

// ErrNoDatabase (store.ErrNoDatabase): where an installation's database
// must be there is none, or an empty one, or not an appliance database. The
// start and every command but init refuse with it, and so does init when
// the token already belongs to an initialised appliance: the token holds
// the keys and the audit key, and a new database beside them would reset
// the registry, the policy windows and the audit chain.
var ErrNoDatabase = store.ErrNoDatabase

// noDatabase adds what to do to a refusal wrapping ErrNoDatabase. The
// section named is the runbook in docs/RECOVERY.md.
func noDatabase(err error) error {
	return fmt.Errorf("%w; the appliance creates its database only at `appliance init`: if it was initialised before, "+
		"its database is lost: restore it from a backup, do not initialise it again "+
		`(docs/RECOVERY.md, "Database missing or empty")`, err)
}

// RequireDatabase refuses, before anything opens it, a database that is
// missing or empty: the commands that work on an installation (keys create
// and list, policy set) call it because the store they open would otherwise
// start a new one.
func RequireDatabase(cfg *config.Config) error {
	err := store.Existing(cfg.Store.Path)
	if errors.Is(err, ErrNoDatabase) {
		return noDatabase(err)
	}
	return err
}

// InitAppliance is `appliance init`: the key ceremony with spec, else the
// auto-unseal form (Init). It is the one command that starts a database,
// and only beside a token that belongs to no appliance yet: the ceremony
// initialises its token itself and fails on an existing one, and the
// auto-unseal form refuses a token that holds an audit head (an appliance
// checkpointed its audit chain there) or the backup wrapping key (put there
// by a ceremony or a restore). When init fails where there was no database,
// the database's files are left as they were found (removed, or the file
// empty again), so that the next start cannot take a half-made database for
// an installation.
func InitAppliance(ctx context.Context, cfg *config.Config, log *zap.Logger, soPIN []byte, spec *CeremonySpec) (err error) {
	path := cfg.Store.Path
	lk, err := lockOffline(path, "init")
	if err != nil {
		return err
	}
	defer lk.release()
	noDB := store.Existing(path)
	if !errors.Is(noDB, ErrNoDatabase) {
		// An installation (or not a file at all): init opens it as it is.
		if spec != nil {
			return InitCeremony(ctx, cfg, log, soPIN, *spec)
		}
		return Init(ctx, cfg, log, soPIN)
	}
	existed := map[string]bool{}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		_, statErr := os.Lstat(p)
		existed[p] = statErr == nil
	}
	if existed[path+"-wal"] {
		return noDatabase(noDB) // the lost database's log, which the store refuses to build on
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, restoreNoDatabase(path, existed))
		}
	}()
	if spec != nil {
		err = InitCeremony(ctx, cfg, log, soPIN, *spec)
		if errors.Is(err, hsm.ErrTokenExists) {
			return fmt.Errorf("%w (the ceremony initialises the token itself); %w", err, noDatabase(noDB))
		}
		return err
	}
	if err := checkTokenUnused(ctx, cfg, log, noDB); err != nil {
		return err
	}
	return Init(ctx, cfg, log, soPIN)
}

// checkTokenUnused refuses an existing token that holds the objects of an
// initialised appliance (an audit head, the backup wrapping key, any private
// key), for the auto-unseal init of a new database. A token that does not
// exist yet is for Init to create.
func checkTokenUnused(ctx context.Context, cfg *config.Config, log *zap.Logger, noDB error) error {
	m, err := OpenHSM(ctx, cfg, log, nil)
	if errors.Is(err, hsm.ErrTokenNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer m.Close()
	var holds []string
	raw, err := m.ReadData(ctx, auditHeadLabel)
	switch {
	case err == nil:
		what := "an audit head"
		if cp, err := decodeHead(raw); err == nil {
			what = fmt.Sprintf("an audit head (the checkpoint of audit entry %d)", cp.Seq)
		}
		holds = append(holds, what)
	case !errors.Is(err, hsm.ErrDataNotFound):
		return fmt.Errorf("read the token's audit head: %w", err)
	}
	wrap, err := m.HasWrappingKey(ctx, backupWrapLabel)
	if err != nil {
		return fmt.Errorf("look for the backup wrapping key on the token: %w", err)
	}
	if wrap {
		holds = append(holds, "the backup wrapping key")
	}
	// Keys made before the first checkpoint (or by another application)
	// would otherwise be orphaned beside an empty registry.
	keys, err := m.CountPrivateKeys(ctx)
	if err != nil {
		return fmt.Errorf("look for private keys on the token: %w", err)
	}
	if keys > 0 {
		holds = append(holds, fmt.Sprintf("%d private key(s)", keys))
	}
	if len(holds) == 0 {
		return nil
	}
	return fmt.Errorf("init: the token holds %s of an initialised appliance; %w", strings.Join(holds, " and "), noDatabase(noDB))
}

// restoreNoDatabase puts the database's files back as a failed init found
// them: the ones it created removed, a file that was empty emptied again.
func restoreNoDatabase(path string, existed map[string]bool) error {
	var errs []error
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if !existed[p] {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if existed[path] {
		if err := os.Truncate(path, 0); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// OpenHSM loads the PKCS#11 module named by the configuration and logs in
// with pin (nil: the URI's pin-source).
func OpenHSM(ctx context.Context, cfg *config.Config, log *zap.Logger, pin []byte) (*hsm.Module, error) {
	return openHSM(ctx, cfg, log, pin, nil)
}

// openHSM is OpenHSM with the library wrapped by interpose (nil: not).
func openHSM(ctx context.Context, cfg *config.Config, log *zap.Logger, pin []byte, interpose func(hsm.Cryptoki) hsm.Cryptoki) (*hsm.Module, error) {
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
		URI: uri, PIN: pin, PoolSize: cfg.HSM.PoolSize, AcquireTimeout: cfg.HSM.AcquireTimeout.D(), Logger: log.Named("hsm"),
		Interpose: interpose,
	})
	if err != nil {
		return nil, fmt.Errorf("open HSM %s: %w", uri, err)
	}
	return m, nil
}

func (a *App) probeHSM(ctx context.Context) error {
	st := a.seal.State()
	m := a.currentModule()
	switch {
	case st.Frozen:
		return health.Degraded(errors.New("frozen: " + st.FrozenReason))
	case st.Sealed || m == nil:
		a.hsmDownSince.Store(nil)
		return health.Degraded(fmt.Errorf("sealed: %d of %d unseal shares", st.Progress, st.Threshold))
	}
	var err error
	if h := m.Health(); h.Healthy {
		err = m.Probe(ctx)
	} else {
		err = fmt.Errorf("unhealthy: %s", h.Reason)
	}
	return a.withinHSMGrace(err, time.Now())
}

// withinHSMGrace judges a failing HSM probe: degraded while the HSM has been
// unusable for less than hsm.unavailable_grace (the module rebuilds by
// itself; a restart would come back sealed), down after it, which stops
// the watchdog. A passing probe (err nil) ends the spell.
func (a *App) withinHSMGrace(err error, now time.Time) error {
	if err == nil {
		a.hsmDownSince.Store(nil)
		return nil
	}
	since := a.hsmDownSince.Load()
	if since == nil {
		since = &now
		if !a.hsmDownSince.CompareAndSwap(nil, since) {
			since = a.hsmDownSince.Load()
		}
	}
	grace := a.cfg.HSM.UnavailableGrace.D()
	if down := now.Sub(*since); down < grace {
		return health.Degraded(fmt.Errorf("%w (unavailable for %s; down after %s)", err, down.Round(time.Millisecond), grace))
	}
	return fmt.Errorf("%w (unavailable for %s, beyond hsm.unavailable_grace %s)", err, now.Sub(*since).Round(time.Millisecond), grace)
}

func (a *App) probeKeys(context.Context) error {
	m := a.currentModule()
	if m == nil {
		return nil // keys are checked at unseal
	}
	var bad int
	for _, k := range a.keys.List() {
		if a.keys.Usable(k, m) != nil {
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
	mln, err := a.listenMetrics()
	if err != nil {
		ln.Close()
		return err
	}
	return a.ServeListeners(ctx, ln, mln)
}

// ServeListener is Serve on an existing listener (tests pass 127.0.0.1:0),
// without a metrics listener.
func (a *App) ServeListener(ctx context.Context, ln net.Listener) error {
	return a.ServeListeners(ctx, ln, nil)
}

// ServeListeners is Serve on existing listeners: the API on ln and, when
// metricsLn is not nil, the Prometheus exposition on metricsLn.
func (a *App) ServeListeners(ctx context.Context, ln, metricsLn net.Listener) error {
	stopMetrics := a.serveMetrics(metricsLn)
	defer func() {
		mctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopMetrics(mctx)
	}()
	// Unattended unseal (auto mode, or dev shares) before the first request
	// is served; connections queue on the bound listener meanwhile.
	if err := a.startSeal(ctx); err != nil {
		a.log.Error("automatic unseal failed; staying sealed", zap.Error(err))
	}
	errc := make(chan error, 1)
	go func() { errc <- a.server.Serve(ln) }()
	wctx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	go a.notifier.Monitor(wctx, a.checker, health.DefaultMonitorInterval)
	go a.audit.run(wctx)
	go a.maintain(wctx)
	// SIGHUP reloads what can change safely (log level, thresholds, list
	// files) and says what needs a restart.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go a.reloadOnSignal(wctx, hup)
	if a.screener != nil {
		// Lists also reload when their files change.
		go a.screener.Watch(wctx, a.cfg.Screening.WatchInterval.D())
	}

	a.ready.Store(true)
	a.notifier.Ready()
	a.notifier.Status("serving on " + ln.Addr().String())
	a.log.Info("appliance serving", zap.String("addr", ln.Addr().String()), zap.String("version", a.version),
		zap.String("mode", string(a.cfg.Mode)), zap.Int("keys", len(a.keys.List())), zap.Bool("sealed", a.seal.Sealed()),
		zap.Bool("frozen", a.seal.Frozen()))

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
	a.stopAudit(sctx)
	return <-errc
}

// stopAudit records the stop and signs a last checkpoint covering it.
func (a *App) stopAudit(ctx context.Context) {
	if err := a.store.RecordAudit(ctx, audit.Record{Kind: "stop", Detail: "appliance stopping"}); err != nil {
		a.log.Error("recording the stop", zap.Error(err))
	}
	if err := a.audit.Checkpoint(ctx); err != nil && !errors.Is(err, errSealedNoCheckpoint) {
		a.log.Error("final audit checkpoint", zap.Error(err))
	}
}

// Ready reports whether the appliance is serving (sealed or not).
func (a *App) Ready() bool { return a.ready.Load() }

// Close releases the HSM and the store. It is safe on a partly built App.
func (a *App) Close() {
	var errs []error
	a.mu.Lock()
	if a.hsm != nil {
		errs = append(errs, a.hsm.Close())
		a.hsm = nil
	}
	a.mu.Unlock()
	if a.store != nil {
		errs = append(errs, a.store.Close())
	}
	errs = append(errs, a.lock.release())
	if err := errors.Join(errs...); err != nil {
		a.log.Warn("closing", zap.Error(err))
	}
}

// integrityProgressEvery is how often a long start-up integrity check tells
// systemd it is still going (and extends the start timeout).
const integrityProgressEvery = 10 * time.Second

// checkAtStart runs the database's quick_check, which reads every page,
// after reading the file sequentially into the page cache when it fits
// (store.WarmCache: the check's own reads are random, about 16 s per GB from
// disk on the development machines, against about 2 s per GB for both). On a
// large database it keeps systemd's start timeout extended while it runs.
// A check that was interrupted (the appliance was told to stop) says so: it
// found nothing wrong, and restoring a backup would be the wrong advice.
func (a *App) checkAtStart(ctx context.Context, path string) error {
	size := int64(-1)
	if fi, err := os.Stat(path); err == nil {
		size = fi.Size()
	}
	a.notifier.Status("checking database integrity")
	var warmed store.Warmed
	took, err := a.notifier.During("checking database integrity", integrityProgressEvery, func() error {
		// A sequential read first: quick_check's own reads are random.
		var err error
		if warmed, err = store.WarmCache(ctx, path, store.CacheBudget()); err != nil {
			return err
		}
		return a.store.QuickCheck(ctx)
	})
	switch {
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("the integrity check of database %s was interrupted after %s: %w", path, took.Round(time.Millisecond), ctx.Err())
	case err != nil:
		return fmt.Errorf("database %s failed its integrity check; restore it from a backup: %w", path, err)
	}
	fields := []zap.Field{zap.String("path", path), zap.Int64("bytes", size), zap.Duration("took", took),
		zap.Int64("warmed_bytes", warmed.Bytes), zap.Duration("warm_took", warmed.Took)}
	if warmed.Skipped != "" {
		fields = append(fields, zap.String("warm_skipped", warmed.Skipped))
	}
	a.log.Info("database integrity checked", fields...)
	return nil
}
