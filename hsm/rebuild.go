package hsm

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
)

// rebuildLoop is the single goroutine that restores the module after token
// loss. Having exactly one rebuilder means C_Finalize/C_Initialize are never
// called concurrently by this package.
func (m *Module) rebuildLoop() {
	defer close(m.done)
	for {
		select {
		case <-m.stop:
			return
		case <-m.trigger:
		}
		delay := m.opts.ReconnectMin
		for attempt := 1; ; attempt++ {
			err := m.rebuild()
			if err == nil {
				break
			}
			m.mu.Lock()
			m.failures++
			m.reason = fmt.Sprintf("rebuild attempt %d failed: %v", attempt, err)
			m.mu.Unlock()
			// Jitter keeps several appliances sharing one HSM from retrying in step.
			wait := delay/2 + rand.N(delay/2+1)
			m.log.Warn("hsm rebuild failed; will retry", zap.Int("attempt", attempt),
				zap.Duration("retry_in", wait), zap.Error(err))
			select {
			case <-m.stop:
				return
			case <-time.After(wait):
			}
			delay = min(delay*2, m.opts.ReconnectMax)
		}
	}
}

// rebuild runs one attempt: abandon the broken generation, re-initialise the
// library (which makes SoftHSM re-scan its token directory), reconnect, re-check
// the pinned keys and publish the new generation.
func (m *Module) rebuild() error {
	m.mu.Lock()
	old := m.cur
	m.mu.Unlock()
	if old != nil {
		old.markBroken()
		if n := old.waitIdle(m.opts.AcquireTimeout); n > 0 {
			m.log.Warn("finalising with sessions still borrowed", zap.Int("borrowed", n))
		}
	}
	if err := m.p.Finalize(); err != nil && !isRV(err, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
		// The library may still be initialised with the old sessions open:
		// close them, or every failed C_Finalize would leak a pool's worth.
		m.log.Warn("C_Finalize during rebuild failed; closing the old sessions and re-initialising anyway", zap.Error(err))
		if old != nil {
			if cerr := m.p.CloseAllSessions(old.slot); cerr != nil {
				m.log.Warn("C_CloseAllSessions after a failed C_Finalize", zap.Error(cerr))
			}
		}
	}
	if err := m.p.Initialize(); err != nil && !isRV(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return fmt.Errorf("C_Initialize: %w", err)
	}
	g, err := m.connect()
	if err != nil {
		return err
	}
	// Check pins on a session of the new generation before anyone else can
	// use it, so that no signature is made with a key that failed its check.
	h := <-g.pool
	s := &session{h: h, gen: g}
	err = m.recheckPins(s)
	g.pool <- h
	if err != nil {
		return err
	}

	m.mu.Lock()
	m.cur = g
	if !m.closing {
		m.healthy = true
		m.reason = ""
	}
	m.rebuilds++
	n := m.rebuilds
	m.mu.Unlock()
	m.log.Info("hsm rebuilt", zap.Uint64("generation", g.id), zap.Uint64("rebuilds", n), zap.Uint("slot", g.slot))
	return nil
}
