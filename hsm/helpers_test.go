package hsm_test

import (
	"context"
	"testing"
	"time"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
)

// openModule makes a fresh token and opens a Module on it, closed at test end.
func openModule(t *testing.T, tweak func(*hsm.Options)) (*hsm.Module, *hsm.URI) {
	t.Helper()
	uri, _ := softhsmtest.NewToken(t)
	opts := hsm.Options{URI: uri, Logger: zap.NewNop(), AcquireTimeout: 2 * time.Second}
	if tweak != nil {
		tweak(&opts)
	}
	m, err := hsm.Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m, uri
}

// rawSession opens a session through a second handle on the already
// initialised library, for tests that inspect the token behind the Module.
// It shares the Module's login, as PKCS#11 logins are per application.
func rawSession(t *testing.T, uri *hsm.URI, slot uint) (*pkcs11.Ctx, pkcs11.SessionHandle) {
	t.Helper()
	p := pkcs11.New(uri.ModulePath)
	if p == nil {
		t.Fatal("pkcs11.New failed")
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		p.Destroy()
		t.Fatalf("OpenSession: %v", err)
	}
	t.Cleanup(func() {
		_ = p.CloseSession(sh)
		p.Destroy()
	})
	return p, sh
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func nopLogger() *zap.Logger { return zap.NewNop() }
