package hsm_test

import (
	"crypto/sha256"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
)

// panicOnce is the token's library with a planted bug: while armed, the
// next C_SignInit or C_Sign panics instead of answering.
type panicOnce struct {
	hsm.Cryptoki
	armed *atomic.Int32 // 1: SignInit panics; 2: Sign panics (after SignInit began an operation)
}

func (p panicOnce) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if p.armed.CompareAndSwap(1, 0) {
		panic("injected: C_SignInit panicked")
	}
	return p.Cryptoki.SignInit(sh, m, o)
}

func (p panicOnce) Sign(sh pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	if p.armed.CompareAndSwap(2, 0) {
		panic("injected: C_Sign panicked")
	}
	return p.Cryptoki.Sign(sh, msg)
}

// TestPanicInACallKeepsThePool: a panic inside a PKCS#11 call reaches the
// caller as a panic, and the session it happened on is replaced, not lost:
// afterwards no session is borrowed, every session of the pool signs (the
// one whose C_Sign panicked had an operation active, which would fail its
// next C_SignInit had it been pooled as it was), and the token holds
// exactly the pool's sessions. Before, each such panic kept a session
// borrowed for ever, and a pool of two was empty after two.
func TestPanicInACallKeepsThePool(t *testing.T) {
	const pool = 2
	var armed atomic.Int32
	m, uri := openModule(t, func(o *hsm.Options) {
		o.PoolSize = pool
		o.AcquireTimeout = time.Second
		o.Interpose = func(c hsm.Cryptoki) hsm.Cryptoki { return panicOnce{Cryptoki: c, armed: &armed} }
	})
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "panics")
	if err != nil {
		t.Fatal(err)
	}
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
	m.SetPinnedKeys([]hsm.PinnedKey{{Ref: ref, PublicKey: k.PublicKey}})
	for round := range 2 * pool {
		armed.Store(int32(1 + round%2))
		func() {
			defer func() {
				if recover() == nil {
					t.Fatalf("round %d: the planted panic did not reach the caller", round)
				}
			}()
			d := sha256.Sum256([]byte("panic"))
			_, _ = m.Sign(ctxT(t), ref, d[:])
		}()
		if h := m.Health(); h.InUse != 0 || h.Waiters != 0 || !h.Healthy {
			t.Fatalf("round %d: after a panic %d sessions borrowed, %d waiters, healthy %v", round, h.InUse, h.Waiters, h.Healthy)
		}
		signsEverywhere(t, m, ref, k.PublicKey, pool, "after a panic")
	}
	if n := tokenSessions(t, uri, m.Slot()); n != pool {
		t.Fatalf("SoftHSM has %d sessions open, want the pool's %d", n, pool)
	}
}
