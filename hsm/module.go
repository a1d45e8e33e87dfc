package hsm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
)

// Options configures Open.
type Options struct {
	URI            *URI
	PIN            []byte        // user PIN; if nil, URI.ReadPIN() is used. Open copies it.
	PoolSize       int           // sessions kept open; default 4
	AcquireTimeout time.Duration // max wait for a free session; default 5s
	ReconnectMin   time.Duration // first rebuild backoff after token loss; default 100ms
	ReconnectMax   time.Duration // backoff cap; default 5s
	Logger         *zap.Logger   // required

	// Interpose, if set, wraps the loaded library; every PKCS#11 call the
	// Module makes goes through what it returns. It exists for fault
	// injection in tests (hsm/hsmfault) and is nil in production.
	Interpose func(Cryptoki) Cryptoki
}

// Health is a snapshot of the module's state for readiness checks and metrics.
type Health struct {
	Healthy         bool
	Reason          string // why it is unhealthy; empty when healthy
	PoolSize        int
	InUse           int    // sessions currently borrowed
	Waiters         int    // callers waiting for a session
	Rebuilds        uint64 // successful rebuilds since Open
	RebuildFailures uint64 // failed rebuild attempts since Open
}

// Info describes the PKCS#11 library and the token.
type Info struct {
	LibraryDescription  string
	LibraryManufacturer string
	LibraryVersion      string
	CryptokiVersion     string
	TokenLabel          string
	TokenManufacturer   string
	TokenModel          string
	TokenSerial         string
	TokenFirmware       string
	TokenHardware       string
}

// Module is one loaded, logged-in PKCS#11 token with a session pool. It is safe
// for concurrent use.
type Module struct {
	opts Options
	log  *zap.Logger
	p    Cryptoki
	pin  []byte

	mu       sync.Mutex
	cur      *generation
	nextGen  uint64
	healthy  bool
	reason   string
	closing  bool
	inUse    int
	waiters  int
	rebuilds uint64
	failures uint64

	pinMu      sync.Mutex
	pins       []PinnedKey
	pinVersion uint64
	keyErrs    map[string]error

	trigger chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func (o *Options) withDefaults() (Options, error) {
	c := *o
	if c.Logger == nil {
		return c, errors.New("hsm: Options.Logger is required")
	}
	if c.URI == nil {
		return c, errors.New("hsm: Options.URI is required")
	}
	if err := c.URI.validate(); err != nil {
		return c, err
	}
	if c.PoolSize <= 0 {
		c.PoolSize = 4
	}
	if c.AcquireTimeout <= 0 {
		c.AcquireTimeout = 5 * time.Second
	}
	if c.ReconnectMin <= 0 {
		c.ReconnectMin = 100 * time.Millisecond
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = 5 * time.Second
	}
	if c.ReconnectMax < c.ReconnectMin {
		c.ReconnectMax = c.ReconnectMin
	}
	return c, nil
}

// Open loads the PKCS#11 module once, initialises it, finds the token by label,
// logs in as the user and fills the session pool. See the package doc for the
// one-Module-per-library-per-process rule.
func Open(ctx context.Context, opts Options) (*Module, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("hsm: open: %w", err)
	}
	var pin []byte
	if o.PIN != nil {
		pin = append([]byte(nil), o.PIN...)
	} else if pin, err = o.URI.ReadPIN(); err != nil {
		return nil, err
	}
	o.PIN = nil // the Module keeps its own copy only
	log := o.Logger.With(zap.String("hsm_token", o.URI.Token), zap.String("hsm_module", o.URI.ModulePath))
	if strings.Contains(o.URI.ModulePath, "softhsm") && os.Getenv("SOFTHSM2_CONF") == "" {
		log.Warn("SOFTHSM2_CONF is not set; SoftHSM will use its compiled-in default configuration")
	}

	lib := pkcs11.New(o.URI.ModulePath)
	if lib == nil {
		clear(pin)
		return nil, fmt.Errorf("hsm: cannot load PKCS#11 module %s", o.URI.ModulePath)
	}
	var p Cryptoki = lib
	if o.Interpose != nil {
		p = o.Interpose(lib)
	}
	if err := p.Initialize(); err != nil {
		p.Destroy()
		clear(pin)
		if isRV(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			return nil, fmt.Errorf("hsm: open %s: %w", o.URI.ModulePath, ErrAlreadyInitialized)
		}
		return nil, fmt.Errorf("hsm: C_Initialize: %w", err)
	}
	m := &Module{
		opts:    o,
		log:     log,
		p:       p,
		pin:     pin,
		keyErrs: map[string]error{},
		trigger: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	g, err := m.connect()
	if err != nil {
		_ = p.Finalize()
		p.Destroy()
		clear(pin)
		return nil, err
	}
	m.cur = g
	m.healthy = true
	go m.rebuildLoop()
	log.Info("hsm module open", zap.Int("pool_size", o.PoolSize), zap.Uint("slot", g.slot))
	return m, nil
}

// findSlot returns the slot holding the initialised token with the given label.
// Slot ids are not stable (SoftHSM derives them from the token serial and
// renumbers on every C_Initialize), so the label is the only identity used.
func findSlot(p Cryptoki, label string) (uint, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("hsm: C_GetSlotList: %w", err)
	}
	found := []uint{}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue // a slot whose token vanished between the two calls
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 && ti.Label == label {
			found = append(found, s)
		}
	}
	switch len(found) {
	case 0:
		return 0, fmt.Errorf("hsm: label %q: %w", label, ErrTokenNotFound)
	case 1:
		return found[0], nil
	default:
		return 0, fmt.Errorf("hsm: %d tokens are labelled %q; refusing to guess", len(found), label)
	}
}

// connect builds a new generation on an initialised library: find the token,
// open the sessions, log in once (the login is shared by all sessions of the
// application). On error the caller finalises, which closes anything opened.
func (m *Module) connect() (*generation, error) {
	slot, err := findSlot(m.p, m.opts.URI.Token)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.nextGen++
	g := newGeneration(m.nextGen, slot, m.opts.PoolSize)
	m.mu.Unlock()
	for i := 0; i < m.opts.PoolSize; i++ {
		h, err := m.p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return nil, fmt.Errorf("hsm: C_OpenSession: %w", err)
		}
		if i == 0 {
			if err := m.p.Login(h, pkcs11.CKU_USER, string(m.pin)); err != nil && !isRV(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
				// The error is a bare return value; it cannot carry the PIN.
				return nil, fmt.Errorf("hsm: C_Login: %w", err)
			}
		}
		g.pool <- h
	}
	return g, nil
}

// markLost breaks generation g (if it is still current and not yet broken),
// marks the module unhealthy and wakes the rebuild goroutine.
func (m *Module) markLost(g *generation, reason string) {
	m.mu.Lock()
	if g != m.cur || !g.markBroken() {
		m.mu.Unlock()
		return
	}
	m.healthy = false
	m.reason = "token lost: " + reason
	m.mu.Unlock()
	m.log.Warn("hsm token lost; rebuilding", zap.Uint64("generation", g.id), zap.String("reason", reason))
	select {
	case m.trigger <- struct{}{}:
	default:
	}
}

// Health returns a snapshot of the module's state.
func (m *Module) Health() Health {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := Health{
		Healthy:         m.healthy,
		PoolSize:        m.opts.PoolSize,
		InUse:           m.inUse,
		Waiters:         m.waiters,
		Rebuilds:        m.rebuilds,
		RebuildFailures: m.failures,
	}
	if !m.healthy {
		h.Reason = m.reason
	}
	return h
}

// Probe borrows a session and asks the token about it and about itself, proving
// the library, token, session and login are all alive. It is cheap enough for a
// watchdog, and it is how an idle module notices token loss.
func (m *Module) Probe(ctx context.Context) error {
	return m.do(ctx, "probe", func(s *session) error {
		if err := m.checkLoggedIn(s); err != nil {
			return err
		}
		// Sessions survive SoftHSM losing its token directory; token info does not.
		if _, err := m.p.GetTokenInfo(s.gen.slot); err != nil {
			return fmt.Errorf("C_GetTokenInfo: %w", err)
		}
		return nil
	})
}

// checkLoggedIn fails with a lost-login error (CKR_USER_NOT_LOGGED_IN, which
// isLost takes for a lost token) if s is no longer in a user session state:
// someone logged the token out underneath us.
func (m *Module) checkLoggedIn(s *session) error {
	si, err := m.p.GetSessionInfo(s.h)
	if err != nil {
		return fmt.Errorf("C_GetSessionInfo: %w", err)
	}
	if si.State != pkcs11.CKS_RW_USER_FUNCTIONS && si.State != pkcs11.CKS_RO_USER_FUNCTIONS {
		return fmt.Errorf("session state %d: %w", si.State, pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN))
	}
	return nil
}

// Info describes the library (C_GetInfo) and the token (C_GetTokenInfo).
func (m *Module) Info(ctx context.Context) (Info, error) {
	var info Info
	err := m.do(ctx, "info", func(s *session) error {
		li, err := m.p.GetInfo()
		if err != nil {
			return fmt.Errorf("C_GetInfo: %w", err)
		}
		ti, err := m.p.GetTokenInfo(s.gen.slot)
		if err != nil {
			return fmt.Errorf("C_GetTokenInfo: %w", err)
		}
		info = Info{
			LibraryDescription:  strings.TrimRight(li.LibraryDescription, " \x00"),
			LibraryManufacturer: strings.TrimRight(li.ManufacturerID, " \x00"),
			LibraryVersion:      fmt.Sprintf("%d.%d", li.LibraryVersion.Major, li.LibraryVersion.Minor),
			CryptokiVersion:     fmt.Sprintf("%d.%d", li.CryptokiVersion.Major, li.CryptokiVersion.Minor),
			TokenLabel:          ti.Label,
			TokenManufacturer:   ti.ManufacturerID,
			TokenModel:          ti.Model,
			TokenSerial:         ti.SerialNumber,
			TokenFirmware:       fmt.Sprintf("%d.%d", ti.FirmwareVersion.Major, ti.FirmwareVersion.Minor),
			TokenHardware:       fmt.Sprintf("%d.%d", ti.HardwareVersion.Major, ti.HardwareVersion.Minor),
		}
		return nil
	})
	return info, err
}

// Close stops the rebuild goroutine, closes every session, logs out, finalises
// and unloads the library, and zeroes the PIN. Sessions still borrowed after
// AcquireTimeout are abandoned to C_Finalize.
func (m *Module) Close() error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return nil
	}
	m.closing = true
	m.healthy = false
	m.reason = "module closed"
	m.mu.Unlock()

	close(m.stop)
	<-m.done

	m.mu.Lock()
	g := m.cur
	m.mu.Unlock()
	var errs []error
	if g != nil {
		// A generation that was already broken belongs to a lost token or a
		// finalised library: its handles are stale, so only C_Finalize is left.
		wasBroken := !g.markBroken()
		// Wait even then: SoftHSM crashes if sessions are freed under a call
		// still running on them.
		if n := g.waitIdle(m.opts.AcquireTimeout); n > 0 {
			m.log.Warn("closing with sessions still borrowed", zap.Int("borrowed", n))
		}
		if !wasBroken {
			// Logout is best effort: C_Finalize ends the login regardless.
			select {
			case h := <-g.pool:
				_ = m.p.Logout(h)
			default:
			}
			if err := m.p.CloseAllSessions(g.slot); err != nil && !isLost(err) {
				errs = append(errs, fmt.Errorf("hsm: C_CloseAllSessions: %w", err))
			}
		}
	}
	if err := m.p.Finalize(); err != nil && !isRV(err, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
		errs = append(errs, fmt.Errorf("hsm: C_Finalize: %w", err))
	}
	m.p.Destroy()
	clear(m.pin)
	m.log.Info("hsm module closed")
	return errors.Join(errs...)
}
