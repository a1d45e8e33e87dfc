package hsm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
)

// generation is everything that belongs to one C_Initialize: the slot the token
// was found in, its sessions, and the object handles found through them. A
// rebuild replaces the whole generation, which is how stale sessions and
// handles are kept from ever being reused.
type generation struct {
	id   uint64
	slot uint
	pool chan pkcs11.SessionHandle // idle sessions; capacity = pool size

	broken    chan struct{} // closed when this generation must no longer be used
	breakOnce sync.Once
	mu        sync.Mutex
	out       int           // sessions currently borrowed
	idle      chan struct{} // signalled when out drops to zero after break
	finalized bool          // C_Finalize has run: handles are meaningless now
	handles   map[string]pkcs11.ObjectHandle
	handlesMu sync.RWMutex
}

func newGeneration(id uint64, slot uint, size int) *generation {
	return &generation{
		id:      id,
		slot:    slot,
		pool:    make(chan pkcs11.SessionHandle, size),
		broken:  make(chan struct{}),
		idle:    make(chan struct{}, 1),
		handles: map[string]pkcs11.ObjectHandle{},
	}
}

func (g *generation) markBroken() bool {
	first := false
	g.breakOnce.Do(func() { close(g.broken); first = true })
	return first
}

func (g *generation) isBroken() bool {
	select {
	case <-g.broken:
		return true
	default:
		return false
	}
}

// waitIdle waits up to d for borrowed sessions to come back, then marks the
// generation finalized so that late returns are dropped instead of re-pooled
// or closed: after C_Finalize a handle number may be reissued to a session of
// the next generation, and closing it would close someone else's session.
func (g *generation) waitIdle(d time.Duration) (stillOut int) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		n := g.out
		if n == 0 {
			g.finalized = true
			g.mu.Unlock()
			return 0
		}
		g.mu.Unlock()
		select {
		case <-g.idle:
		case <-deadline.C:
			g.mu.Lock()
			n = g.out
			g.finalized = true
			g.mu.Unlock()
			return n
		}
	}
}

func (g *generation) handle(key string) (pkcs11.ObjectHandle, bool) {
	g.handlesMu.RLock()
	defer g.handlesMu.RUnlock()
	h, ok := g.handles[key]
	return h, ok
}

func (g *generation) setHandle(key string, h pkcs11.ObjectHandle) {
	g.handlesMu.Lock()
	defer g.handlesMu.Unlock()
	g.handles[key] = h
}

func (g *generation) dropHandle(key string) {
	g.handlesMu.Lock()
	defer g.handlesMu.Unlock()
	delete(g.handles, key)
}

// session is a borrowed session handle together with the generation it came from.
type session struct {
	h   pkcs11.SessionHandle
	gen *generation
}

// acquire borrows a session from the current generation, waiting at most
// AcquireTimeout and never past ctx. It fails fast while the module is unhealthy.
func (m *Module) acquire(ctx context.Context) (*session, error) {
	m.mu.Lock()
	if !m.healthy {
		reason := m.reason
		m.mu.Unlock()
		return nil, fmt.Errorf("hsm: %s: %w", reason, ErrUnavailable)
	}
	g := m.cur
	m.waiters++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.waiters--
		m.mu.Unlock()
	}()

	timer := time.NewTimer(m.opts.AcquireTimeout)
	defer timer.Stop()
	select {
	case h := <-g.pool:
		// select picks at random among ready cases, so a session can be taken
		// from a generation that was broken meanwhile. Refuse it under g.mu so
		// that waitIdle either counts it or we never use it: after C_Finalize
		// its number may be reissued to a session of the next generation.
		g.mu.Lock()
		if g.finalized || g.isBroken() {
			g.mu.Unlock()
			return nil, fmt.Errorf("hsm: token lost while waiting for a session: %w", ErrUnavailable)
		}
		g.out++
		g.mu.Unlock()
		m.mu.Lock()
		m.inUse++
		m.mu.Unlock()
		return &session{h: h, gen: g}, nil
	case <-g.broken:
		return nil, fmt.Errorf("hsm: token lost while waiting for a session: %w", ErrUnavailable)
	case <-timer.C:
		return nil, fmt.Errorf("hsm: no free session within %s: %w", m.opts.AcquireTimeout, ErrUnavailable)
	case <-ctx.Done():
		return nil, fmt.Errorf("hsm: waiting for a session: %w: %w", ErrUnavailable, ctx.Err())
	}
}

// acquireIdle borrows up to n more sessions of generation g, only those idle
// right now: for work that one session can do alone but several do sooner.
// It never waits, so two such callers cannot starve each other.
func (m *Module) acquireIdle(g *generation, n int) []*session {
	var out []*session
	for len(out) < n {
		select {
		case h := <-g.pool:
			// As in acquire: never use a session of a broken generation.
			g.mu.Lock()
			if g.finalized || g.isBroken() {
				g.mu.Unlock()
				return out
			}
			g.out++
			g.mu.Unlock()
			m.mu.Lock()
			m.inUse++
			m.mu.Unlock()
			out = append(out, &session{h: h, gen: g})
		default:
			return out
		}
	}
	return out
}

// release returns a session to its generation's pool, or drops it if that
// generation has been broken: C_Finalize in the rebuild closes it, and closing
// it here could race with handle reuse in the next generation.
func (m *Module) release(s *session) {
	m.mu.Lock()
	m.inUse--
	m.mu.Unlock()
	g := s.gen
	g.mu.Lock()
	defer g.mu.Unlock()
	g.out--
	if g.finalized || g.isBroken() {
		if g.out == 0 {
			select {
			case g.idle <- struct{}{}:
			default:
			}
		}
		return
	}
	g.pool <- s.h // cannot block: capacity equals the number of sessions
}

// suspectSession wraps an error after which the session's state is unknown:
// the token may have begun an operation it answered as failed, which
// PKCS#11 2.40 gives no way to end. The session is replaced, not re-pooled.
type suspectSession struct{ error }

func (e suspectSession) Unwrap() error { return e.error }

// replace closes borrowed session s, whose state cannot be trusted, and
// returns a new session of its generation to the pool in its place (the
// login is the application's, so the new session is logged in). If none
// can be opened the generation is lost and rebuilt. s is borrowed until
// the end, so neither call can race a rebuild's C_Finalize.
func (m *Module) replace(s *session) {
	if err := m.p.CloseSession(s.h); err != nil {
		m.log.Warn("closing a session in an unknown state", zap.Error(err))
	}
	h, err := m.p.OpenSession(s.gen.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		m.markLost(s.gen, fmt.Sprintf("reopening a session: %v", err))
		m.release(s) // the generation is broken: dropped, not re-pooled
		return
	}
	s.h = h
	m.release(s)
}

// do runs fn on a borrowed session. A "lost" PKCS#11 error breaks the current
// generation, schedules a rebuild, and comes back wrapping ErrUnavailable.
func (m *Module) do(ctx context.Context, op string, fn func(s *session) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("hsm: %s: %w", op, err)
	}
	s, err := m.acquire(ctx)
	if err != nil {
		return fmt.Errorf("hsm: %s: %w", op, err)
	}
	returned := false
	defer func() {
		if !returned {
			// fn panicked (a bug in a wrapper or in the library's
			// binding): the session may be part-way through an
			// operation PKCS#11 cannot cancel, so it is replaced rather
			// than pooled — and never kept, or the pool would shrink by
			// one with every such panic. The panic goes on up.
			m.replace(s)
		}
	}()
	err = fn(s)
	returned = true
	if err != nil && isLost(err) {
		m.markLost(s.gen, fmt.Sprintf("%s failed: %v", op, err))
		m.release(s)
		return fmt.Errorf("hsm: %s: %w: %w", op, ErrUnavailable, err)
	}
	if _, ok := errors.AsType[suspectSession](err); ok {
		m.replace(s)
	} else {
		m.release(s)
	}
	if err != nil {
		return fmt.Errorf("hsm: %s: %w", op, err)
	}
	return nil
}

// doMany is do for work that can spread over several sessions: it borrows one
// session, waiting as do does, and up to PoolSize-2 more of its generation
// that are idle, and runs fn on them all. It never holds the whole pool: one
// session is left for everyone else (a signer, while a quorum's new key is
// pinned with all the others).
func (m *Module) doMany(ctx context.Context, op string, fn func(ss []*session) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("hsm: %s: %w", op, err)
	}
	s, err := m.acquire(ctx)
	if err != nil {
		return fmt.Errorf("hsm: %s: %w", op, err)
	}
	ss := append([]*session{s}, m.acquireIdle(s.gen, m.opts.PoolSize-2)...)
	returned := false
	defer func() {
		if !returned { // fn panicked: see do
			for _, x := range ss {
				m.replace(x)
			}
		}
	}()
	err = fn(ss)
	returned = true
	lost := err != nil && isLost(err)
	if lost {
		m.markLost(s.gen, fmt.Sprintf("%s failed: %v", op, err))
	}
	for _, x := range ss {
		m.release(x)
	}
	switch {
	case lost:
		return fmt.Errorf("hsm: %s: %w: %w", op, ErrUnavailable, err)
	case err != nil:
		return fmt.Errorf("hsm: %s: %w", op, err)
	}
	return nil
}
