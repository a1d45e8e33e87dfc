package hsm_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
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

// signerLoad is n goroutines signing distinct digests with one key until
// stopped, each signature checked against the key's public key.
type signerLoad struct {
	ok, unavailable, other atomic.Int64
	stop                   chan struct{}
	wg                     sync.WaitGroup
	unexpected             chan error
}

// startSigners starts the load. gate, if set, is read-locked around every
// Sign (a test pauses the signers with its write lock). accept says which
// errors other than ErrUnavailable are expected (counted in other); any
// other error, a bad signature or a Sign over 3 s is unexpected.
func startSigners(m *hsm.Module, ref hsm.KeyRef, pub []byte, n int, gate *sync.RWMutex, accept func(error) bool) *signerLoad {
	l := &signerLoad{stop: make(chan struct{}), unexpected: make(chan error, 64)}
	for g := range n {
		l.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				d := sha256.Sum256(fmt.Appendf(nil, "%d/%d", g, i))
				start := time.Now()
				if gate != nil {
					gate.RLock()
				}
				sig, err := m.Sign(context.Background(), ref, d[:])
				if gate != nil {
					gate.RUnlock()
				}
				if took := time.Since(start); took > 3*time.Second {
					l.report(fmt.Errorf("Sign took %s", took))
				}
				switch {
				case err == nil:
					if err := checkSecp256k1(pub, d[:], sig); err != nil {
						l.report(err)
					}
					l.ok.Add(1)
				case errors.Is(err, hsm.ErrUnavailable):
					l.unavailable.Add(1)
					time.Sleep(time.Millisecond) // fail-fast callers would spin otherwise
				case accept != nil && accept(err):
					l.other.Add(1)
				default:
					l.report(fmt.Errorf("signer: %w", err))
				}
			}
		})
	}
	return l
}

func (l *signerLoad) report(err error) {
	select {
	case l.unexpected <- err:
	default:
	}
}

// stopAndWait stops the signers and returns what they did not expect.
func (l *signerLoad) stopAndWait() []error {
	close(l.stop)
	l.wg.Wait()
	close(l.unexpected)
	var errs []error
	for err := range l.unexpected {
		errs = append(errs, err)
	}
	return errs
}
