package hsm

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// pinChangeMu serialises SetPIN, the only writer of Module.pin after Open.
// Package-wide for the same reason as dataWriteMu.
var pinChangeMu sync.Mutex

// SetPIN changes the token's user PIN from oldPIN to newPIN with C_SetPIN on a
// pooled, logged-in session. The login is not affected (SoftHSM keeps every
// session of the application logged in, measured by TestSetPIN), so the module
// keeps working, and the Module's own copy of the PIN is replaced so that a
// rebuild after token loss logs in with newPIN. The caller owns oldPIN and
// newPIN and may zero them afterwards; the pin-source or URI given to Open is
// not touched, so the caller must arrange for the next Open to get newPIN.
//
// A wrong oldPIN gives ErrPINIncorrect, a PIN the token will not accept (SoftHSM:
// 4..255 bytes) ErrInvalidInput; neither changes anything. An error wrapping
// ErrUnavailable means the session was lost during the call, so whether the
// token took the new PIN is unknown: the Module keeps the old one, and the
// caller should Close it and Open with newPIN, falling back to oldPIN. Errors
// never contain either PIN (PKCS#11 errors are bare return values).
func (m *Module) SetPIN(ctx context.Context, oldPIN, newPIN []byte) error {
	if len(oldPIN) == 0 || len(newPIN) == 0 {
		return fmt.Errorf("hsm: set PIN: %w", ErrNoPIN)
	}
	next := bytes.Clone(newPIN)
	pinChangeMu.Lock()
	defer pinChangeMu.Unlock()
	err := m.do(ctx, "set PIN", func(s *session) error {
		err := m.p.SetPIN(s.h, string(oldPIN), string(newPIN))
		switch {
		case err == nil:
		case isRV(err, pkcs11.CKR_PIN_INCORRECT):
			return fmt.Errorf("C_SetPIN: %w: %w", ErrPINIncorrect, err)
		case isRV(err, pkcs11.CKR_PIN_LEN_RANGE), isRV(err, pkcs11.CKR_PIN_INVALID):
			return fmt.Errorf("C_SetPIN: new PIN not accepted: %w: %w", ErrInvalidInput, err)
		default:
			return fmt.Errorf("C_SetPIN: %w", err)
		}
		// Replaced while this session is still borrowed. m.pin is read only by
		// connect (in Open, before the Module is shared, and in rebuild after
		// waitIdle has seen every borrowed session returned under g.mu) and
		// cleared by Close, also after waitIdle; so returning the session
		// publishes the new value to both. (If waitIdle gives up after
		// AcquireTimeout while C_SetPIN is still running, the rebuild already
		// finalises under a live call; see the package doc.)
		prev := m.pin
		m.pin = next
		clear(prev)
		return nil
	})
	if err != nil {
		clear(next)
		return err
	}
	m.log.Info("user PIN changed")
	return nil
}
