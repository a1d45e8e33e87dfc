// Package seal keeps the appliance's two safety states. Sealed: the HSM is
// not logged in, because the PIN exists only while a quorum of officers'
// shares is combined (or, in the explicit auto-unseal mode, in a systemd
// credential). Frozen: one officer stopped all signing; it survives restarts
// and only a quorum proposal lifts it.
//
// Signers pass through a gate (Enter) that they hold across check, HSM
// signature and record. Freeze takes the gate exclusively, so when Freeze
// returns, every signature either was recorded before it or will be refused.
package seal

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/secret"
	"github.com/custodysigner/appliance/internal/store"
)

// Unsealer opens and closes the HSM side of the appliance.
type Unsealer interface {
	// Unseal logs in with pin, checks every key against its pinned public
	// key and makes signing possible. It must not keep pin: the slice is a
	// secret.Buffer that is zeroed and unmapped when Unseal returns (a kept
	// reference would fault); copy what must outlive the call.
	Unseal(ctx context.Context, pin []byte) error
	// Seal logs out and closes every HSM session.
	Seal()
}

// Store is what the manager persists through.
type Store interface {
	GetCeremony(ctx context.Context) (store.Ceremony, error)
	GetFreeze(ctx context.Context) (store.FreezeState, error)
	WriteTx(ctx context.Context, fn func(tx *store.Tx) error) error
	RecordAudit(ctx context.Context, rec audit.Record) error
}

// Options configure a Manager.
type Options struct {
	ProgressTTL time.Duration // unseal progress expires after this; default 10 minutes
	// AutoPIN, when set, supplies the PIN for an unattended unseal at start
	// and after an unfreeze (the systemd-credential mode). AutoSource names
	// it for logs and /v1/status.
	AutoPIN    func() ([]byte, error)
	AutoSource string
	Log        *zap.Logger
	Now        func() time.Time
}

// State is the externally visible state.
type State struct {
	Sealed       bool      `json:"sealed"`
	Frozen       bool      `json:"frozen"`
	FrozenReason string    `json:"frozen_reason,omitempty"`
	FrozenBy     string    `json:"frozen_by,omitempty"`
	FrozenAt     time.Time `json:"frozen_at,omitzero"`
	Progress     int       `json:"progress"`
	Threshold    int       `json:"threshold"`
	Nonce        string    `json:"nonce,omitempty"`
	AutoUnseal   string    `json:"auto_unseal,omitempty"`
}

// Manager owns the sealed and frozen states.
type Manager struct {
	gate sync.RWMutex // signers: RLock across check+sign+record; state changes: Lock
	mu   sync.Mutex   // serialises unseal attempts and state changes
	// stopping is raised, and stopCtx cancelled, the moment a freeze
	// begins: signers still waiting for an HSM session give up at once,
	// and only signatures already under way are waited for.
	stopping atomic.Bool
	stopCtx  context.Context
	stop     context.CancelFunc
	sealed   bool
	freeze   store.FreezeState
	progress *ceremony.Progress
	cer      store.Ceremony
	hasCer   bool

	st   Store
	u    Unsealer
	opts Options
	log  *zap.Logger
}

// New loads the ceremony and the persisted freeze state. The appliance
// always starts sealed.
func New(ctx context.Context, st Store, u Unsealer, opts Options) (*Manager, error) {
	if st == nil || u == nil || opts.Log == nil {
		return nil, errors.New("seal: store, unsealer and logger are required")
	}
	if opts.ProgressTTL <= 0 {
		opts.ProgressTTL = 10 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Manager{sealed: true, st: st, u: u, opts: opts, log: opts.Log}
	m.stopCtx, m.stop = context.WithCancel(context.Background())
	f, err := st.GetFreeze(ctx)
	if err != nil {
		return nil, err
	}
	m.freeze = f
	c, err := st.GetCeremony(ctx)
	switch {
	case err == nil:
		m.cer, m.hasCer = c, true
		var id [8]byte
		copy(id[:], c.ID)
		m.progress = ceremony.NewProgress(id, c.Threshold, c.Verifier, opts.ProgressTTL, opts.Now)
	case errors.Is(err, store.ErrNotFound):
		if opts.AutoPIN == nil {
			return nil, errors.New("seal: no unseal ceremony recorded and no auto-unseal configured: run `appliance init` first")
		}
	default:
		return nil, err
	}
	return m, nil
}

// Start performs the unattended unseal when it is configured and the
// appliance is not frozen.
func (m *Manager) Start(ctx context.Context) error {
	if m.opts.AutoPIN == nil {
		m.log.Info("sealed: waiting for officers' unseal shares", zap.Int("threshold", m.cer.Threshold))
		return nil
	}
	if m.Frozen() {
		m.log.Warn("frozen: not auto-unsealing until the quorum unfreezes", zap.String("reason", m.freeze.Reason))
		return nil
	}
	return m.autoUnseal(ctx)
}

func (m *Manager) autoUnseal(ctx context.Context) error {
	m.log.Warn("AUTO-UNSEAL: the HSM PIN is taken without a quorum", zap.String("source", m.opts.AutoSource))
	raw, err := m.opts.AutoPIN()
	if err != nil {
		return fmt.Errorf("auto-unseal: %w", err)
	}
	// Out of the heap slice it arrived in, which Copy zeroes.
	pin := secret.Copy(raw)
	defer pin.Destroy()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.unsealLocked(ctx, pin.Bytes()); err != nil {
		return err
	}
	if err := m.st.RecordAudit(ctx, audit.Record{Kind: "unseal", Detail: "auto-unseal from " + m.opts.AutoSource,
		Fields: map[string]string{"mode": "auto", "source": m.opts.AutoSource}}); err != nil {
		m.sealLocked()
		return auditUnavailable(err)
	}
	return nil
}

// unsealLocked opens the HSM; m.mu is held.
func (m *Manager) unsealLocked(ctx context.Context, pin []byte) error {
	if err := m.u.Unseal(ctx, pin); err != nil {
		return err
	}
	m.gate.Lock()
	m.sealed = false
	m.gate.Unlock()
	m.log.Info("unsealed: ready to sign")
	return nil
}

// sealLocked undoes unsealLocked (an unseal whose audit entry failed);
// m.mu is held.
func (m *Manager) sealLocked() {
	m.gate.Lock()
	m.sealed = true
	m.gate.Unlock()
	m.u.Seal()
	m.log.Error("sealed again: the unseal could not be audited")
}

// Enter admits one signer. The caller signs with the returned context,
// which a freeze cancels, and calls release once the outcome is recorded.
// While frozen or sealed it returns the API error.
func (m *Manager) Enter(ctx context.Context) (context.Context, func(), error) {
	m.gate.RLock()
	if err := m.refusalLocked(); err != nil {
		m.gate.RUnlock()
		return nil, nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	unhook := context.AfterFunc(m.stopCtx, cancel)
	return sctx, func() {
		unhook()
		cancel()
		m.gate.RUnlock()
	}, nil
}

// Refusal returns the API error for the current state, or nil if signing is
// allowed: how a signer whose context was cancelled learns it was a freeze.
// Only for signers between Enter and release: they hold the gate already,
// and taking it again would deadlock behind a waiting Freeze.
func (m *Manager) Refusal() error {
	return m.refusalLocked()
}

func (m *Manager) refusalLocked() error {
	switch {
	case m.freeze.Frozen || m.stopping.Load():
		reason := m.freeze.Reason
		if reason == "" {
			reason = "freeze in progress"
		}
		return apierr.New(http.StatusServiceUnavailable, apierr.CodeFrozen, "the appliance is frozen: %s", reason)
	case m.sealed:
		return apierr.New(http.StatusServiceUnavailable, apierr.CodeSealed, "the appliance is sealed: officers must unseal it")
	}
	return nil
}

// Frozen reports the freeze flag.
func (m *Manager) Frozen() bool {
	m.gate.RLock()
	defer m.gate.RUnlock()
	return m.freeze.Frozen
}

// Sealed reports whether the HSM is locked.
func (m *Manager) Sealed() bool {
	m.gate.RLock()
	defer m.gate.RUnlock()
	return m.sealed
}

// State returns the visible state.
func (m *Manager) State() State {
	m.gate.RLock()
	s := State{Sealed: m.sealed, Frozen: m.freeze.Frozen, FrozenReason: m.freeze.Reason, FrozenBy: m.freeze.By,
		FrozenAt: m.freeze.At, Threshold: m.cer.Threshold, AutoUnseal: m.opts.AutoSource}
	m.gate.RUnlock()
	if m.progress != nil && s.Sealed {
		s.Progress, s.Nonce = m.progress.Have(), m.progress.Nonce()
	}
	return s
}

// Progress is the answer to a share submission.
type Progress struct {
	Sealed    bool   `json:"sealed"`
	Progress  int    `json:"progress"`
	Threshold int    `json:"threshold"`
	Nonce     string `json:"nonce,omitempty"`
}

// SubmitShare adds one officer's share. At the threshold it combines the
// shares, checks the result against the verifier, derives the PIN and
// unseals. The share text never reaches a log, an error or the store.
//
// Memory: shares waiting for the quorum, the combined secret and the PIN
// live in secret.Buffers (outside the Go heap, excluded from core dumps,
// locked where RLIMIT_MEMLOCK allows) and are zeroed as soon as they are
// no longer needed. text itself is a Go string (decoded from the request
// body) and cannot be zeroed.
func (m *Manager) SubmitShare(ctx context.Context, officer, text string) (Progress, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.hasCer {
		return Progress{}, apierr.New(http.StatusConflict, apierr.CodeBadRequest, "this appliance has no unseal ceremony; it unseals automatically")
	}
	if m.Frozen() {
		return Progress{}, apierr.New(http.StatusServiceUnavailable, apierr.CodeFrozen, "the appliance is frozen: the quorum must unfreeze it before it can be unsealed")
	}
	if !m.Sealed() {
		return Progress{Sealed: false, Threshold: m.cer.Threshold}, nil
	}
	idx := shareIndex(text)
	combined, have, err := m.progress.Add(text)
	if err != nil {
		// A refusal changes nothing, so it stands even if it cannot be audited.
		m.event(ctx, audit.Record{Kind: "unseal_share_refused", Principal: officer, Detail: shareRefusal(err),
			Fields: map[string]string{"share_index": idx}})
		m.log.Warn("unseal share refused", zap.String("officer", officer), zap.String("reason", shareRefusal(err)))
		return m.progressNow(), apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeShareInvalid, "share refused: %s", shareRefusal(err))
	}
	if combined == nil {
		rec := audit.Record{Kind: "unseal_share", Principal: officer, Detail: fmt.Sprintf("progress %d of %d", have, m.cer.Threshold),
			Fields: map[string]string{"share_index": idx}}
		if err := m.st.RecordAudit(ctx, rec); err != nil {
			// Fail closed: a share whose acceptance cannot be audited is not
			// accepted. Progress so far is dropped with it.
			m.progress.Reset()
			return m.progressNow(), auditUnavailable(err)
		}
		return m.progressNow(), nil
	}
	// The PIN goes from the combined secret into a secret.Buffer, and the
	// secret is destroyed at once; the buffer is destroyed when the HSM has
	// logged in (or refused). The Unsealer must not keep the slice.
	pin := combined.PINBuffer()
	combined.Destroy()
	defer pin.Destroy()
	quorum := audit.Record{Kind: "unseal", Principal: officer, Detail: fmt.Sprintf("quorum of %d shares", m.cer.Threshold),
		Fields: map[string]string{"share_index": idx, "mode": "quorum"}}
	if err := m.unsealLocked(ctx, pin.Bytes()); err != nil {
		m.event(ctx, audit.Record{Kind: "unseal_failed", Principal: officer, Detail: "the HSM refused the derived PIN or a key failed its check",
			Fields: map[string]string{"share_index": idx}})
		return m.progressNow(), apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable, "shares combined, but the HSM could not be opened: %s", unsealReason(err))
	}
	if err := m.st.RecordAudit(ctx, quorum); err != nil {
		m.sealLocked()
		return m.progressNow(), auditUnavailable(err)
	}
	return Progress{Sealed: false, Progress: 0, Threshold: m.cer.Threshold}, nil
}

func (m *Manager) progressNow() Progress {
	return Progress{Sealed: m.Sealed(), Progress: m.progress.Have(), Threshold: m.cer.Threshold, Nonce: m.progress.Nonce()}
}

// shareRefusal is a stable, secret-free reason.
func shareRefusal(err error) string {
	switch {
	case errors.Is(err, ceremony.ErrShareChecksum):
		return "checksum mismatch"
	case errors.Is(err, ceremony.ErrShareFormat), errors.Is(err, ceremony.ErrShareVersion):
		return "not a share of this format"
	case errors.Is(err, ceremony.ErrWrongCeremony):
		return "share belongs to another ceremony"
	case errors.Is(err, ceremony.ErrDuplicateShare):
		return "duplicate share"
	case errors.Is(err, ceremony.ErrProgressExpired):
		return "unseal progress expired; start again"
	case errors.Is(err, ceremony.ErrWrongCombination):
		return "the shares do not combine to this appliance's secret; progress reset"
	default:
		return "invalid share"
	}
}

// Freeze stops all signing at once. It waits for signers inside the gate to
// record or refuse, persists the freeze, closes the HSM sessions, and only
// then returns.
func (m *Manager) Freeze(ctx context.Context, by, reason string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	// First refuse new signers and cancel those still waiting for an HSM
	// session; then wait (the gate) for signatures already under way.
	m.stopping.Store(true)
	m.stop()
	m.gate.Lock()
	defer m.gate.Unlock()
	if m.freeze.Frozen {
		return nil
	}
	f := store.FreezeState{Frozen: true, Reason: reason, By: by, At: m.opts.Now().UTC()}
	err := m.st.WriteTx(ctx, func(tx *store.Tx) error {
		if err := store.SetFreeze(ctx, tx, f); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "freeze", by, reason)
	})
	// Frozen in memory even if the record failed: stopping is always safe.
	m.freeze = f
	if !m.sealed {
		m.u.Seal()
		m.sealed = true
	}
	if m.progress != nil {
		m.progress.Reset()
	}
	m.log.Error("FROZEN: signing stopped", zap.String("by", by), zap.String("reason", reason), zap.NamedError("persist_error", err))
	if err != nil {
		// The freeze holds in memory, but a restart would forget it (a full
		// disk is the usual cause, and the usual trigger of an automatic
		// freeze). Keep trying until it is on record or lifted.
		go m.recordFreezeLater(f, by, reason)
		return fmt.Errorf("frozen, but the freeze could not be recorded (retrying): %w", err)
	}
	return nil
}

// freezeRetry bounds the wait between attempts to record a freeze.
var freezeRetry = [2]time.Duration{250 * time.Millisecond, 10 * time.Second}

// recordFreezeLater retries recording freeze f until it succeeds or f is no
// longer the freeze in force.
func (m *Manager) recordFreezeLater(f store.FreezeState, by, reason string) {
	wait := freezeRetry[0]
	for attempt := 2; ; attempt++ {
		time.Sleep(wait)
		wait = min(2*wait, freezeRetry[1])
		m.mu.Lock()
		if !m.freeze.Frozen || !m.freeze.At.Equal(f.At) {
			m.mu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := m.st.WriteTx(ctx, func(tx *store.Tx) error {
			if err := store.SetFreeze(ctx, tx, f); err != nil {
				return err
			}
			return store.AppendEvent(ctx, tx, "freeze", by, reason+" (recorded late)")
		})
		cancel()
		m.mu.Unlock()
		if err == nil {
			m.log.Warn("freeze recorded", zap.Int("attempt", attempt))
			return
		}
		if attempt%20 == 0 {
			m.log.Error("the freeze is still not recorded; a restart now would start unfrozen", zap.Int("attempt", attempt), zap.Error(err))
		}
	}
}

// Unfreeze lifts the freeze inside tx (a quorum proposal's transaction).
// The appliance stays sealed; officers unseal it again (or the auto-unseal
// source does, through AfterUnfreeze).
func (m *Manager) Unfreeze(ctx context.Context, tx *store.Tx, by string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := store.SetFreeze(ctx, tx, store.FreezeState{}); err != nil {
		return err
	}
	if err := store.AppendEvent(ctx, tx, "unfreeze", by, "by quorum"); err != nil {
		return err
	}
	m.gate.Lock()
	m.freeze = store.FreezeState{}
	m.stopCtx, m.stop = context.WithCancel(context.Background())
	m.stopping.Store(false)
	m.gate.Unlock()
	m.log.Warn("unfrozen by quorum; sealed until unsealed", zap.String("proposal", by))
	return nil
}

// AfterUnfreeze runs the unattended unseal when one is configured.
func (m *Manager) AfterUnfreeze(ctx context.Context) {
	if m.opts.AutoPIN != nil && !m.Frozen() && m.Sealed() {
		if err := m.autoUnseal(ctx); err != nil {
			m.log.Error("auto-unseal after unfreeze failed", zap.Error(err))
		}
	}
}

// event audits something that has already happened and cannot be undone
// (a refusal); failing to record it is logged.
func (m *Manager) event(ctx context.Context, rec audit.Record) {
	if err := m.st.RecordAudit(ctx, rec); err != nil {
		m.log.Error("recording audit entry", zap.String("kind", rec.Kind), zap.Error(err))
	}
}

// auditUnavailable is the refusal of an operation whose audit entry could
// not be committed.
func auditUnavailable(err error) error {
	return apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeUnavailable, "the audit log cannot be written; nothing was done")
}

// shareIndex is the index of a share for the audit ("?" if it does not
// parse). The index is not secret; the share is, and is never recorded.
func shareIndex(text string) string {
	sh, err := ceremony.ParseShare(text)
	if err != nil {
		return "?"
	}
	clear(sh.Data)
	return strconv.Itoa(int(sh.Index))
}

// unsealReason names why an unseal failed without leaking anything: the
// integrity checks' reports are meant for officers.
func unsealReason(err error) string {
	var ie *IntegrityError
	if errors.As(err, &ie) {
		return ie.Error()
	}
	return "the HSM refused the derived PIN or a key failed its check"
}

// IntegrityError is returned by an Unsealer that refuses to unseal because
// the appliance's state does not match the HSM's (audit head, key registry).
// Its text is a report for officers and holds no secret.
type IntegrityError struct{ Report string }

func (e *IntegrityError) Error() string { return "integrity check failed: " + e.Report }
