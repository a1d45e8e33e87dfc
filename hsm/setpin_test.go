package hsm_test

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/miekg/pkcs11"
)

func TestSetPIN(t *testing.T) {
	uri, oldPIN := softhsmtest.NewToken(t)
	newPIN := []byte("new-user-pin-7f3a")
	opts := hsm.Options{URI: uri, Logger: nopLogger(), AcquireTimeout: 2 * time.Second,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond}
	m, err := hsm.Open(ctxT(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			m.Close()
		}
	}()
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "pin")
	if err != nil {
		t.Fatal(err)
	}
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
	sign := func(m *hsm.Module, what string) {
		t.Helper()
		d := sha256.Sum256([]byte(what))
		sig, err := m.Sign(ctxT(t), ref, d[:])
		if err != nil {
			t.Fatalf("Sign %s: %v", what, err)
		}
		verifySecp256k1(t, k.PublicKey, d[:], sig)
	}
	noPIN := func(err error) {
		t.Helper()
		for _, pin := range []string{string(oldPIN), string(newPIN), "wrong-old-pin"} {
			if err != nil && strings.Contains(err.Error(), pin) {
				t.Fatalf("error %q contains a PIN", err)
			}
		}
	}

	err = m.SetPIN(ctxT(t), []byte("wrong-old-pin"), newPIN)
	noPIN(err)
	if !errors.Is(err, hsm.ErrPINIncorrect) {
		t.Fatalf("SetPIN with a wrong old PIN = %v, want ErrPINIncorrect", err)
	}
	err = m.SetPIN(ctxT(t), oldPIN, []byte("ab"))
	noPIN(err)
	if !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("SetPIN to a 2-byte PIN = %v, want ErrInvalidInput", err)
	}
	if err := m.SetPIN(ctxT(t), oldPIN, newPIN); err != nil {
		t.Fatalf("SetPIN: %v", err)
	}
	// Existing sessions stay logged in.
	if err := m.Probe(ctxT(t)); err != nil {
		t.Fatalf("Probe after SetPIN: %v", err)
	}
	sign(m, "after SetPIN")

	// A rebuild logs in again, and must use the new PIN.
	p := pkcs11.New(uri.ModulePath)
	if err := p.CloseAllSessions(m.Slot()); err != nil {
		t.Fatal(err)
	}
	p.Destroy()
	if err := m.Probe(ctxT(t)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Probe with the sessions closed = %v, want ErrUnavailable", err)
	}
	eventually(t, 5*time.Second, "rebuild after SetPIN", func() bool {
		h := m.Health()
		return h.Healthy && h.Rebuilds == 1
	})
	sign(m, "after the rebuild")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true

	// A new Open: the old PIN no longer logs in, the new one does.
	old := *uri
	_, err = hsm.Open(ctxT(t), hsm.Options{URI: &old, Logger: nopLogger()})
	noPIN(err)
	if !isPKCS11(err, pkcs11.CKR_PIN_INCORRECT) {
		t.Fatalf("Open with the old PIN = %v, want CKR_PIN_INCORRECT", err)
	}
	m2, err := hsm.Open(ctxT(t), hsm.Options{URI: uri, PIN: newPIN, Logger: nopLogger()})
	if err != nil {
		t.Fatalf("Open with the new PIN: %v", err)
	}
	defer m2.Close()
	sign(m2, "reopened with the new PIN")
}
