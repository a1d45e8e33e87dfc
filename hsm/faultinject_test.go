package hsm_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/hsmfault"
)

// Faults injected between the Module and a real SoftHSM token (hsmfault):
// every PKCS#11 call the Module makes can fail before it reaches the token,
// or reach it and have its answer lost. The token's own sessions are
// counted by the injector (what it opened and nothing closed since) and by
// SoftHSM itself through a second handle.

// openInjected opens a Module on a fresh token through an injector, with a
// pinned secp256k1 key.
func openInjected(t *testing.T, pool int) (*hsm.Module, *hsmfault.Injector, hsm.KeyRef, []byte, *hsm.URI) {
	t.Helper()
	var inj *hsmfault.Injector
	m, uri := openModule(t, func(o *hsm.Options) {
		o.PoolSize = pool
		o.AcquireTimeout = time.Second
		o.ReconnectMin = 2 * time.Millisecond
		o.ReconnectMax = 20 * time.Millisecond
		o.Interpose = func(c hsm.Cryptoki) hsm.Cryptoki { inj = hsmfault.Wrap(c); return inj }
	})
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "faults")
	if err != nil {
		t.Fatal(err)
	}
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
	m.SetPinnedKeys([]hsm.PinnedKey{{Ref: ref, PublicKey: k.PublicKey}})
	return m, inj, ref, k.PublicKey, uri
}

// tokenSessions counts the sessions SoftHSM has open on slot in this
// process, through a second handle (SoftHSM numbers sessions from 1 and
// reuses the lowest free number). Only while the module is not rebuilding.
func tokenSessions(t *testing.T, uri *hsm.URI, slot uint) int {
	t.Helper()
	p := pkcs11.New(uri.ModulePath)
	if p == nil {
		t.Fatal("pkcs11.New failed")
	}
	defer p.Destroy()
	n := 0
	for h := pkcs11.SessionHandle(1); h <= 1024; h++ {
		if si, err := p.GetSessionInfo(h); err == nil && si.SlotID == slot {
			n++
		}
	}
	return n
}

// signsEverywhere signs 2×pool times in a row, so every session of the
// pool serves at least once: a session left in a bad state would fail one.
func signsEverywhere(t *testing.T, m *hsm.Module, ref hsm.KeyRef, pub []byte, pool int, what string) {
	t.Helper()
	for i := range 2 * pool {
		d := sha256.Sum256(fmt.Appendf(nil, "%s/%d", what, i))
		sig, err := m.Sign(ctxT(t), ref, d[:])
		if err != nil {
			t.Fatalf("%s: sign %d after recovery: %v (health %+v)", what, i, err, m.Health())
		}
		if err := checkSecp256k1(pub, d[:], sig); err != nil {
			t.Fatalf("%s: sign %d: %v", what, i, err)
		}
	}
}

// TestInjectedFaultMatrix: one fault at a time, in every call of the
// signing, probing and key-checking paths, for return values that mean the
// token is lost and others that do not, struck before the call reaches the
// token and after (the token did the work; the answer was lost). Each
// fault surfaces as an error of the call that met it — ErrUnavailable for a
// lost token — never as a signature; afterwards the module is healthy,
// every session of its pool signs, none is borrowed, and the token holds
// exactly the pool's sessions, counted by the injector and by SoftHSM.
func TestInjectedFaultMatrix(t *testing.T) {
	const pool = 2
	m, inj, ref, pub, uri := openInjected(t, pool)
	ops := []string{
		hsmfault.OpSignInit, hsmfault.OpSign,
		hsmfault.OpFindObjectsInit, hsmfault.OpFindObjects, hsmfault.OpFindObjectsFinal, hsmfault.OpGetAttributeValue,
		hsmfault.OpGetSessionInfo, hsmfault.OpGetTokenInfo,
	}
	lost := []uint{pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_DEVICE_ERROR}
	other := []uint{pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_DEVICE_MEMORY}
	// Each call is driven by what uses it: a sign (a search for the key on
	// a handle-cache miss, which every rebuild empties), the health probe,
	// a key check (a search and attribute reads).
	exercise := []func() error{
		func() error {
			d := sha256.Sum256([]byte("matrix"))
			_, err := m.Sign(ctxT(t), ref, d[:])
			return err
		},
		func() error { return m.Probe(ctxT(t)) },
		func() error { return m.CheckKey(ctxT(t), ref, pub) },
	}
	cases, absorbed := 0, 0
	for _, op := range ops {
		for _, rv := range append(append([]uint{}, lost...), other...) {
			for _, when := range []hsmfault.When{hsmfault.Before, hsmfault.After} {
				name := fmt.Sprintf("%s/%s/%v", op, pkcs11.Error(rv), map[hsmfault.When]string{hsmfault.Before: "before", hsmfault.After: "after"}[when])
				isLost := rv != pkcs11.CKR_FUNCTION_FAILED && rv != pkcs11.CKR_DEVICE_MEMORY
				before := inj.Injected()
				rebuilds0 := m.Health().Rebuilds
				opened0, _ := inj.SessionCounts()
				inj.FailNext(hsmfault.Fault{Op: op, RV: rv, When: when}, 1)
				var (
					hit error
					by  int
				)
				for i := 0; inj.Injected() == before; i++ {
					if i == 30 {
						t.Fatalf("%s: no call of the paths met the fault", name)
					}
					err := exercise[i%len(exercise)]()
					if inj.Injected() > before {
						hit, by = err, i%len(exercise)
					}
				}
				switch {
				case hit == nil && !isLost && by == 2:
					// The key check's one-pass index fell back to a search
					// per object, which passed: the check is still whole.
					absorbed++
				case hit == nil:
					t.Fatalf("%s: the call that met the fault succeeded", name)
				}
				if isLost && !errors.Is(hit, hsm.ErrUnavailable) {
					t.Fatalf("%s: %v, want ErrUnavailable", name, hit)
				}
				eventually(t, 5*time.Second, name+": healthy again", func() bool { return m.Health().Healthy })
				if opened, _ := inj.SessionCounts(); op == hsmfault.OpSignInit && !isLost && opened != opened0+1 {
					// The token may have begun the operation though it
					// answered an error (After), and PKCS#11 2.40 has no
					// way to end it but a C_Sign: the session is replaced.
					t.Fatalf("%s: %d sessions opened, want 1 (the failed one replaced)", name, opened-opened0)
				}
				signsEverywhere(t, m, ref, pub, pool, name)
				if err := m.Probe(ctxT(t)); err != nil {
					t.Fatalf("%s: probe after recovery: %v", name, err)
				}
				h := m.Health()
				if want := map[bool]uint64{true: 1, false: 0}[isLost]; h.Rebuilds != rebuilds0+want {
					// A call that failed without losing the token costs no
					// rebuild: the session is still good.
					t.Fatalf("%s: %d rebuilds, want %d", name, h.Rebuilds-rebuilds0, want)
				}
				if h.InUse != 0 || h.Waiters != 0 {
					t.Fatalf("%s: %d sessions borrowed, %d waiters after recovery", name, h.InUse, h.Waiters)
				}
				if n := inj.OpenSessions(); n != pool {
					t.Fatalf("%s: the injector counts %d sessions open, want the pool's %d", name, n, pool)
				}
				if n := tokenSessions(t, uri, m.Slot()); n != pool {
					t.Fatalf("%s: SoftHSM has %d sessions open, want the pool's %d", name, n, pool)
				}
				cases++
			}
		}
	}
	t.Logf("%d cases (%d absorbed by the key check's fallback), faults injected: %v", cases, absorbed, inj.Summary())
}

// TestInjectedFaultsDuringRebuild: faults in the calls a rebuild makes —
// C_Finalize, C_Initialize, C_GetSlotList, C_GetTokenInfo, C_OpenSession
// (including a session the token opened but whose handle never arrived),
// C_Login — each fail that attempt; the next attempt succeeds, and no
// session is left behind.
func TestInjectedFaultsDuringRebuild(t *testing.T) {
	const pool = 3
	m, inj, ref, pub, uri := openInjected(t, pool)
	for _, c := range []struct {
		f        hsmfault.Fault
		failures uint64 // failed rebuild attempts it costs
	}{
		// A failed C_Finalize: the old sessions are closed and the library,
		// still initialised, is used again (Before), or was finalised after
		// all (After): the attempt goes on.
		{hsmfault.Fault{Op: hsmfault.OpFinalize, RV: pkcs11.CKR_GENERAL_ERROR, When: hsmfault.Before}, 0},
		{hsmfault.Fault{Op: hsmfault.OpFinalize, RV: pkcs11.CKR_GENERAL_ERROR, When: hsmfault.After}, 0},
		{hsmfault.Fault{Op: hsmfault.OpInitialize, RV: pkcs11.CKR_DEVICE_ERROR, When: hsmfault.Before}, 1},
		{hsmfault.Fault{Op: hsmfault.OpGetSlotList, RV: pkcs11.CKR_DEVICE_ERROR, When: hsmfault.Before}, 1},
		{hsmfault.Fault{Op: hsmfault.OpGetTokenInfo, RV: pkcs11.CKR_TOKEN_NOT_PRESENT, When: hsmfault.Before}, 1},
		{hsmfault.Fault{Op: hsmfault.OpOpenSession, RV: pkcs11.CKR_DEVICE_ERROR, When: hsmfault.Before}, 1},
		{hsmfault.Fault{Op: hsmfault.OpOpenSession, RV: pkcs11.CKR_DEVICE_ERROR, When: hsmfault.After}, 1},
		{hsmfault.Fault{Op: hsmfault.OpOpenSession, RV: pkcs11.CKR_SESSION_COUNT, When: hsmfault.Before}, 1},
		{hsmfault.Fault{Op: hsmfault.OpLogin, RV: pkcs11.CKR_DEVICE_ERROR, When: hsmfault.Before}, 1},
		{hsmfault.Fault{Op: hsmfault.OpLogin, RV: pkcs11.CKR_DEVICE_ERROR, When: hsmfault.After}, 1},
	} {
		f := c.f
		name := fmt.Sprintf("%s/%s/%d", f.Op, pkcs11.Error(f.RV), f.When)
		h0 := m.Health()
		before := inj.Injected()
		// The rebuild's fault first, then the lost sign that starts it.
		inj.FailNext(f, 1)
		inj.FailNext(hsmfault.Fault{Op: hsmfault.OpSign, RV: pkcs11.CKR_DEVICE_REMOVED, When: hsmfault.After}, 1)
		d := sha256.Sum256([]byte(name))
		if _, err := m.Sign(ctxT(t), ref, d[:]); !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("%s: sign = %v, want ErrUnavailable", name, err)
		}
		eventually(t, 5*time.Second, name+": healthy again", func() bool { return m.Health().Healthy })
		if n := inj.Injected() - before; n != 2 {
			t.Fatalf("%s: %d faults struck, want 2 (the sign's and the rebuild's)", name, n)
		}
		h := m.Health()
		if h.Rebuilds != h0.Rebuilds+1 || h.RebuildFailures != h0.RebuildFailures+c.failures {
			t.Fatalf("%s: rebuilds %d→%d, failures %d→%d; want %d failed attempts, then one rebuild",
				name, h0.Rebuilds, h.Rebuilds, h0.RebuildFailures, h.RebuildFailures, c.failures)
		}
		signsEverywhere(t, m, ref, pub, pool, name)
		if n := inj.OpenSessions(); n != pool {
			t.Fatalf("%s: the injector counts %d sessions open, want %d", name, n, pool)
		}
		if n := tokenSessions(t, uri, m.Slot()); n != pool {
			t.Fatalf("%s: SoftHSM has %d sessions open, want %d", name, n, pool)
		}
	}
	opened, closed := inj.SessionCounts()
	t.Logf("sessions opened %d, closed %d, open %d; faults %v", opened, closed, inj.OpenSessions(), inj.Summary())
}

// TestThousandInjectedFaultsUnderLoad: six signers and a health prober run
// while faults strike at random in signing, probing and rebuilding — lost
// tokens, failed calls, answers lost after the token acted — until 1,000
// have struck (200 with -short). Every signature returned verifies against
// the pinned key; every failure is ErrUnavailable or the injected error of
// a call that does not mean the token is lost; no call hangs. Once the
// faults stop, the module recovers by itself and the token holds exactly
// the pool's sessions, none borrowed.
func TestThousandInjectedFaultsUnderLoad(t *testing.T) {
	const pool = 4
	target := 1000
	if testing.Short() {
		target = 200
	}
	m, inj, ref, pub, uri := openInjected(t, pool)
	inj.Seed(uint64(time.Now().UnixNano()))
	inj.FailAtRates(hsmfault.Mix())

	load := startSigners(m, ref, pub, 6, nil, func(err error) bool {
		var pe pkcs11.Error
		return errors.As(err, &pe) && (uint(pe) == pkcs11.CKR_FUNCTION_FAILED || uint(pe) == pkcs11.CKR_DEVICE_MEMORY)
	})
	signed, unavailable, failed := &load.ok, &load.unavailable, &load.other
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			_ = m.Probe(context.Background())
		}
	})
	start := time.Now()
	deadline := start.Add(4 * time.Minute)
	for inj.Injected() < target {
		if time.Now().After(deadline) {
			t.Errorf("only %d faults within 4 minutes", inj.Injected())
			break
		}
		select {
		case err := <-load.unexpected:
			t.Error(err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	inj.Clear()
	close(stop)
	wg.Wait()
	for _, err := range load.stopAndWait() {
		t.Error(err)
	}
	took := time.Since(start)

	eventually(t, 10*time.Second, "healthy once the faults stop", func() bool { return m.Health().Healthy })
	signsEverywhere(t, m, ref, pub, pool, "after the faults")
	h := m.Health()
	if h.InUse != 0 || h.Waiters != 0 {
		t.Fatalf("after the faults: %d sessions borrowed, %d waiters", h.InUse, h.Waiters)
	}
	if n := inj.OpenSessions(); n != pool {
		t.Fatalf("after the faults the injector counts %d sessions open, want %d", n, pool)
	}
	if n := tokenSessions(t, uri, m.Slot()); n != pool {
		t.Fatalf("after the faults SoftHSM has %d sessions open, want %d", n, pool)
	}
	if signed.Load() == 0 || unavailable.Load() == 0 {
		t.Fatalf("signed %d, unavailable %d: the run did not exercise both", signed.Load(), unavailable.Load())
	}
	opened, closed := inj.SessionCounts()
	t.Logf("%d faults in %s (%v); signatures %d (all verified), ErrUnavailable %d, other injected errors %d; "+
		"rebuilds %d, failed rebuild attempts %d; sessions opened %d, closed %d, open %d",
		inj.Injected(), took.Round(time.Millisecond), inj.Summary(), signed.Load(), unavailable.Load(), failed.Load(),
		h.Rebuilds, h.RebuildFailures, opened, closed, inj.OpenSessions())
}
