package hsm_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// eventually polls cond every 10ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closeAllSessions breaks the Module's sessions through a second handle on the
// same (already initialised) library, as another thread or a device reset would.
func closeAllSessions(t *testing.T, uri *hsm.URI, slot uint) {
	t.Helper()
	p := pkcs11.New(uri.ModulePath)
	defer p.Destroy()
	// CKR_SLOT_ID_INVALID is fine: the Module may already be rebuilding.
	if err := p.CloseAllSessions(slot); err != nil {
		t.Logf("C_CloseAllSessions: %v", err)
	}
}

func TestTokenLossRecovery(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	m, uri := openModule(t, func(o *hsm.Options) {
		o.Logger = zap.New(core)
		o.PoolSize = 4
		o.AcquireTimeout = time.Second
		o.ReconnectMin = 20 * time.Millisecond
		o.ReconnectMax = 200 * time.Millisecond
	})
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "recover")
	if err != nil {
		t.Fatal(err)
	}
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
	m.SetPinnedKeys([]hsm.PinnedKey{{Ref: ref, PublicKey: k.PublicKey}})
	if err := m.KeyError(k.ID); err != nil {
		t.Fatalf("KeyError before the fault: %v", err)
	}

	// gate lets the test pause the signers: SoftHSM segfaults if
	// C_CloseAllSessions frees a session another thread is signing on.
	var gate sync.RWMutex
	load := startSigners(m, ref, k.PublicKey, 6, &gate, nil)
	ok, unavailable := &load.ok, &load.unavailable
	defer func() {
		for _, err := range load.stopAndWait() {
			t.Errorf("signer saw an error not wrapping ErrUnavailable: %v", err)
		}
	}()
	eventually(t, 5*time.Second, "signing before the fault", func() bool { return ok.Load() > 50 })

	// Pull the token out from under the running module: its sessions are
	// closed and its directory goes away, so the rebuild cannot find it.
	// The signers are paused only around the C_CloseAllSessions (see gate).
	dir := softhsmtest.TokenPath(t, uri.Token)
	away := filepath.Join(filepath.Dir(softhsmtest.TokenDir()), "away-"+uri.Token)
	gate.Lock()
	closeAllSessions(t, uri, m.Slot())
	err = os.Rename(dir, away)
	gate.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = os.Rename(away, dir) // let cleanup find the token
		}
	}()

	eventually(t, 5*time.Second, "module turning unhealthy", func() bool { return !m.Health().Healthy })
	if h := m.Health(); h.Reason == "" {
		t.Fatalf("unhealthy without a reason: %+v", h)
	}
	d := sha256.Sum256([]byte("during outage"))
	start := time.Now()
	if _, err := m.Sign(ctxT(t), ref, d[:]); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Sign during the outage = %v, want ErrUnavailable", err)
	} else if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("Sign during the outage took %s: it must fail fast", took)
	}
	if err := m.Probe(ctxT(t)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Probe during the outage = %v, want ErrUnavailable", err)
	}
	eventually(t, 5*time.Second, "three failed rebuild attempts", func() bool { return m.Health().RebuildFailures >= 3 })
	if n := logs.FilterMessage("hsm rebuild failed; will retry").Len(); n < 3 {
		t.Fatalf("%d retry log entries, want >= 3", n)
	}
	okDuringOutage := ok.Load()

	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	restored = true
	eventually(t, 5*time.Second, "module healthy again", func() bool { return m.Health().Healthy })
	if err := m.KeyError(k.ID); err != nil {
		t.Fatalf("pinned key after the rebuild: %v", err)
	}
	sig, err := m.Sign(ctxT(t), ref, d[:])
	if err != nil {
		t.Fatalf("Sign after recovery: %v", err)
	}
	verifySecp256k1(t, k.PublicKey, d[:], sig)
	eventually(t, 5*time.Second, "signers recovering", func() bool { return ok.Load() > okDuringOutage+50 })
	if err := m.Probe(ctxT(t)); err != nil {
		t.Fatalf("Probe after recovery: %v", err)
	}
	h := m.Health()
	if h.Rebuilds < 1 || unavailable.Load() == 0 {
		t.Fatalf("Health = %+v, unavailable = %d", h, unavailable.Load())
	}
	for _, msg := range []string{"hsm token lost; rebuilding", "hsm rebuilt"} {
		if logs.FilterMessage(msg).Len() == 0 {
			t.Errorf("no %q log entry", msg)
		}
	}
	t.Logf("signatures ok=%d unavailable=%d, health %+v", ok.Load(), unavailable.Load(), h)
}

// TestTokenDirectoryVanishesUnderLoad: only the token directory disappears,
// while signers run unpaused. SoftHSM keeps the sessions; the module notices
// through the empty key search and C_GetTokenInfo failing.
func TestTokenDirectoryVanishesUnderLoad(t *testing.T) {
	m, uri := openModule(t, func(o *hsm.Options) { o.ReconnectMin = 10 * time.Millisecond; o.ReconnectMax = 50 * time.Millisecond })
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "vanish")
	if err != nil {
		t.Fatal(err)
	}
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
	m.SetPinnedKeys([]hsm.PinnedKey{{Ref: ref, PublicKey: k.PublicKey}})
	load := startSigners(m, ref, k.PublicKey, 4, nil, nil)
	ok := &load.ok
	eventually(t, 5*time.Second, "signing", func() bool { return ok.Load() > 20 })
	dir := softhsmtest.TokenPath(t, uri.Token)
	away := filepath.Join(filepath.Dir(softhsmtest.TokenDir()), "gone-"+uri.Token)
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "module turning unhealthy", func() bool { return !m.Health().Healthy })
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "module healthy again", func() bool { return m.Health().Healthy })
	n := ok.Load()
	eventually(t, 5*time.Second, "signing again", func() bool { return ok.Load() > n+20 })
	for _, err := range load.stopAndWait() {
		t.Fatalf("signer saw an error not wrapping ErrUnavailable: %v", err)
	}
	if err := m.KeyError(k.ID); err != nil {
		t.Fatal(err)
	}
}

// TestProbeDetectsVanishedToken covers the quiet case: no signing traffic, the
// token directory disappears, and only the watchdog's Probe can notice.
func TestProbeDetectsVanishedToken(t *testing.T) {
	m, uri := openModule(t, func(o *hsm.Options) { o.ReconnectMin = 10 * time.Millisecond; o.ReconnectMax = 50 * time.Millisecond })
	dir := softhsmtest.TokenPath(t, uri.Token)
	away := dir + ".away"
	away = filepath.Join(filepath.Dir(softhsmtest.TokenDir()), filepath.Base(away))
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	if err := m.Probe(ctxT(t)); !errors.Is(err, hsm.ErrUnavailable) {
		_ = os.Rename(away, dir)
		t.Fatalf("Probe with the token directory gone = %v, want ErrUnavailable", err)
	}
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "module healthy again", func() bool { return m.Health().Healthy })
	if err := m.Probe(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestExternalFinalize: someone else in the process calls C_Finalize.
func TestExternalFinalize(t *testing.T) {
	m, uri := openModule(t, func(o *hsm.Options) { o.ReconnectMin = 10 * time.Millisecond })
	k, err := m.GenerateKey(ctxT(t), hsm.Ed25519, "fin")
	if err != nil {
		t.Fatal(err)
	}
	p := pkcs11.New(uri.ModulePath)
	if err := p.Finalize(); err != nil {
		t.Fatal(err)
	}
	p.Destroy()
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Ed25519}
	if _, err := m.Sign(ctxT(t), ref, []byte("m")); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Sign after an external C_Finalize = %v, want ErrUnavailable", err)
	}
	eventually(t, 5*time.Second, "module healthy again", func() bool { return m.Health().Healthy })
	if _, err := m.Sign(ctxT(t), ref, []byte("m")); err != nil {
		t.Fatalf("Sign after recovery: %v", err)
	}
}

// TestPinnedKeyChangedAcrossRebuild: after a rebuild one pinned key has been
// destroyed and another replaced by a different key under the same CKA_ID.
// The module must come back healthy and refuse exactly those two keys.
func TestPinnedKeyChangedAcrossRebuild(t *testing.T) {
	m, uri := openModule(t, func(o *hsm.Options) { o.ReconnectMin = 10 * time.Millisecond })
	var keys [3]*hsm.GeneratedKey
	pins := make([]hsm.PinnedKey, 3)
	for i := range keys {
		k, err := m.GenerateKey(ctxT(t), hsm.P256, fmt.Sprintf("pin-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
		pins[i] = hsm.PinnedKey{Ref: hsm.KeyRef{ID: k.ID, Algorithm: hsm.P256}, PublicKey: k.PublicKey}
	}
	m.SetPinnedKeys(pins)
	for _, k := range keys {
		if err := m.KeyError(k.ID); err != nil {
			t.Fatal(err)
		}
	}

	// A second handle on the same library shares the Module's login. Its
	// session is closed before the rebuild: after C_Finalize its handle number
	// could belong to one of the Module's new sessions.
	p := pkcs11.New(uri.ModulePath)
	defer p.Destroy()
	sh, err := p.OpenSession(m.Slot(), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	destroyByID := func(id []byte) {
		if err := p.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
			t.Fatal(err)
		}
		objs, _, err := p.FindObjects(sh, 10)
		_ = p.FindObjectsFinal(sh)
		if err != nil || len(objs) != 2 {
			t.Fatalf("found %d objects (%v), want 2", len(objs), err)
		}
		for _, o := range objs {
			if err := p.DestroyObject(sh, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Key 1 is replaced by an impostor with the same CKA_ID; key 2 vanishes.
	destroyByID(keys[1].ID)
	destroyByID(keys[2].ID)
	params := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	_, _, err = p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_ID, keys[1].ID), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ID, keys[1].ID), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CloseSession(sh); err != nil {
		t.Fatal(err)
	}

	closeAllSessions(t, uri, m.Slot())
	if err := m.Probe(ctxT(t)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Probe after C_CloseAllSessions = %v, want ErrUnavailable", err)
	}
	eventually(t, 5*time.Second, "module healthy again", func() bool { return m.Health().Healthy })

	d := sha256.Sum256([]byte("x"))
	for i, want := range []error{nil, hsm.ErrKeyMismatch, hsm.ErrKeyNotFound} {
		err := m.KeyError(keys[i].ID)
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Errorf("KeyError(key %d) = %v, want %v", i, err, want)
		}
		_, err = m.Sign(ctxT(t), pins[i].Ref, d[:])
		if !errors.Is(err, want) || (want == nil && err != nil) {
			t.Errorf("Sign(key %d) = %v, want %v", i, err, want)
		}
	}
	if !m.Health().Healthy {
		t.Fatalf("module unhealthy because of key errors: %+v", m.Health())
	}
}

// TestCloseWhileTokenGone: Close must not hang on a module that is stuck
// rebuilding, and calls after Close fail with ErrUnavailable.
func TestCloseWhileTokenGone(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	m, uri := openModule(t, func(o *hsm.Options) { o.Logger = zap.New(core); o.ReconnectMin = 10 * time.Millisecond })
	dir := softhsmtest.TokenPath(t, uri.Token)
	away := filepath.Join(filepath.Dir(softhsmtest.TokenDir()), "closed-"+uri.Token)
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = os.Rename(away, dir) }()
	if err := m.Probe(ctxT(t)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Probe = %v, want ErrUnavailable", err)
	}
	eventually(t, 5*time.Second, "a failed rebuild", func() bool { return m.Health().RebuildFailures > 0 })
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Close took %s", took)
	}
	if err := m.Probe(ctxT(t)); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Probe after Close = %v, want ErrUnavailable", err)
	}
	// Nothing logged, at any level, contains the PIN.
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, uri.PinValue) {
			t.Fatalf("log entry leaks the PIN: %s", line)
		}
	}
}
