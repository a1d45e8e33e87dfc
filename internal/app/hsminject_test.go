package app

import (
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/hsmfault"
	"github.com/custodysigner/appliance/internal/config"
)

// Faults injected between the running appliance and its real SoftHSM token
// (hsm/hsmfault through hsm.Options.Interpose): unlike the disruptions of
// hsmfaults_test.go they strike under concurrent load, in every call of
// signing, probing and rebuilding.

// injectedEnv is an appliance whose HSM calls go through an injector, with
// audit checkpoints configured out (they would sign with the audit key at
// random moments) and the systemd watchdog listened to.
func injectedEnv(t *testing.T, watchdog time.Duration) (*env, *notifyLog, func() *hsmfault.Injector) {
	t.Helper()
	wd := listenNotify(t, watchdog)
	e := newEnvWith(t, "audit: {checkpoint_interval: 1h, checkpoint_every: 1000000}\nhealth: {checkpoint_age_max: -1s}\n")
	var (
		mu  sync.Mutex
		cur *hsmfault.Injector
	)
	e.interpose = func(c hsm.Cryptoki) hsm.Cryptoki {
		mu.Lock()
		defer mu.Unlock()
		cur = hsmfault.Wrap(c)
		return cur
	}
	return e, wd, func() *hsmfault.Injector { mu.Lock(); defer mu.Unlock(); return cur }
}

// TestInjectedHSMFaultsThroughTheAPI: four mTLS clients sign new requests
// while faults strike at random in the appliance's PKCS#11 calls — lost
// tokens and failed calls, before the token acts and after it (a signature
// made and its answer lost) — in signing, the health probe and the
// rebuilds, until 1,000 have struck (200 with -short). Every answer is a
// signed transaction go-ethereum attributes to the key, or 503
// hsm_unavailable, recorded failed without a signature (no partial record);
// nothing else, nothing hangs. When the faults stop the appliance recovers
// by itself: every refused request signs on a retry with its idempotency
// key (the same request), every signature replays unchanged, the token
// holds exactly the pool's sessions (counted by the injector and by
// SoftHSM), none borrowed; integrity_check passes and the audit chain
// verifies.
func TestInjectedHSMFaultsThroughTheAPI(t *testing.T) {
	target := 1000
	if testing.Short() {
		target = 200
	}
	e, _, injector := injectedEnv(t, 2*time.Second)
	e.start()
	inj := injector()
	peek := peekToken(t, e)
	pool := e.cfg.HSM.PoolSize
	from := keyAddress(t, e)
	signer := types.LatestSignerForChainID(big.NewInt(1337))
	to := common.HexToAddress("0x00000000000000000000000000000000000000f1")

	inj.Seed(uint64(time.Now().UnixNano()))
	inj.FailAtRates(hsmfault.Mix())

	var (
		mu       sync.Mutex
		answered = map[string]signOutcome{}
		stop     atomic.Bool
		wg       sync.WaitGroup
		nonce    atomic.Uint64
	)
	start := time.Now()
	for g := range 4 {
		hc := e.client("client")
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				idem := fmt.Sprintf("inj-%d-%d", g, i)
				payload := unsignedEIP1559(t, 1337, nonce.Add(1), to, big.NewInt(1))
				t0 := time.Now()
				o, err := e.trySign(hc, idem, payload)
				if err != nil {
					t.Error(err)
					return
				}
				if took := time.Since(t0); took > 5*time.Second {
					t.Errorf("%s took %s", idem, took)
				}
				switch {
				case o.status == http.StatusOK:
					var tx types.Transaction
					if err := tx.UnmarshalBinary(hexutil.MustDecode(o.signedTx)); err != nil {
						t.Errorf("%s: %v", idem, err)
					} else if got, err := types.Sender(signer, &tx); err != nil || got != from {
						t.Errorf("%s: signed by %s (%v), want %s", idem, got, err, from)
					}
				case o.status == http.StatusServiceUnavailable && o.code == "hsm_unavailable":
					time.Sleep(10 * time.Millisecond) // as a client backs off; no flood of refusals while rebuilding
				default:
					t.Errorf("%s: %d %s %q, want 200 or 503 hsm_unavailable", idem, o.status, o.code, o.message)
				}
				mu.Lock()
				answered[idem] = o
				mu.Unlock()
			}
		})
	}
	deadline := time.Now().Add(5 * time.Minute)
	for inj.Injected() < target && !t.Failed() {
		if time.Now().After(deadline) {
			t.Errorf("only %d faults within 5 minutes", inj.Injected())
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	inj.Clear()
	stop.Store(true)
	wg.Wait()
	took := time.Since(start)
	if t.Failed() {
		t.FailNow()
	}

	// The hsm_error_rate alert may stay raised (degraded) until its window
	// moves on: the HSM and the store are what must be back. (/v1/health is
	// cached for a second: the module itself says whether a rebuild that a
	// last fault started is still retrying.)
	e.awaitHealth(t, 15*time.Second, "HSM healthy once the faults stop", func(h healthReport) bool {
		return h.status == http.StatusOK && h.checks["hsm"].OK && h.checks["store"].OK && e.app.currentModule().Health().Healthy
	})
	// Before any retry: each refusal is on record as failed, without a
	// signature; each signature as signed, byte for byte.
	var signed, refused int
	rows := requestRows(t, e.cfg.Store.Path)
	for idem, o := range answered {
		r, ok := rows[idem]
		if o.status != http.StatusOK {
			refused++
			if !ok || r.state != "failed" || r.errorCode != "hsm_unavailable" || len(r.signedTx) != 0 {
				t.Fatalf("%s answered 503 hsm_unavailable, recorded %+v", idem, r)
			}
			continue
		}
		signed++
	}
	checkSignedAreRecorded(t, e.cfg.Store.Path, answered)
	if signed == 0 || refused == 0 {
		t.Fatalf("%d signed, %d refused: the run did not exercise both", signed, refused)
	}
	e.replayAll(t, answered)
	checkSignedAreRecorded(t, e.cfg.Store.Path, answered)
	for idem, r := range requestRows(t, e.cfg.Store.Path) {
		if r.id != rows[idem].id {
			t.Fatalf("%s: the retry made request %s, the refusal was recorded as %s", idem, r.id, rows[idem].id)
		}
	}

	m := e.app.currentModule()
	h := m.Health()
	if h.InUse != 0 || h.Waiters != 0 || !h.Healthy {
		t.Fatalf("after the faults: %+v", h)
	}
	if n := inj.OpenSessions(); n != pool {
		t.Fatalf("the injector counts %d sessions open, want the pool's %d", n, pool)
	}
	if n := peek.sessions(); n != pool {
		t.Fatalf("SoftHSM has %d sessions open, want the pool's %d", n, pool)
	}
	opened, closed := inj.SessionCounts()
	faults, summary := inj.Injected(), inj.Summary()
	rep := e.stopAndCheckDatabase(t)
	t.Logf("%d faults in %s (%v): %d requests signed, %d answered 503 hsm_unavailable and signed on retry; "+
		"rebuilds %d, failed rebuild attempts %d; sessions opened %d, closed %d, open %d (pool %d); audit chain %d entries verified",
		faults, took.Round(time.Millisecond), summary, signed, refused, h.Rebuilds, h.RebuildFailures, opened, closed, pool, pool, rep.Entries)
}

// TestHSMUnavailableDegradedThenDown: the HSM stops answering (every token
// lookup fails, so no rebuild can succeed) under an unsealed appliance.
// Within hsm.unavailable_grace /v1/health is degraded — 200, with the hsm
// check failing and saying since when — /v1/status shows
// unavailable_since, and the systemd watchdog is still petted: the module
// is rebuilding and a restart would come back sealed. A sign request is
// answered 503 hsm_unavailable at once and recorded failed. Past the grace
// health is down (503) and the watchdog starves, so systemd restarts the
// service. When the HSM answers again the appliance recovers by itself:
// health ok, the watchdog petted, the same request signs on a retry, the
// token holds the pool's sessions.
func TestHSMUnavailableDegradedThenDown(t *testing.T) {
	const grace = 4 * time.Second
	e, wd, injector := injectedEnv(t, 2*time.Second)
	e.cfg.HSM.UnavailableGrace = config.Duration(grace)
	e.start()
	inj := injector()
	peek := peekToken(t, e)
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000f1")
	answered := signedBeforeTheFault(t, e.signOnce(c, "before", unsignedEIP1559(t, 1337, 0, to, big.NewInt(1))))
	wd.await("WATCHDOG=1", time.Time{}, 5*time.Second)

	// The token is gone: the probe's C_GetTokenInfo fails (the module
	// rebuilds) and so does every rebuild's search for the token.
	inj.FailRandomly(hsmfault.Fault{Op: hsmfault.OpGetTokenInfo, RV: pkcs11.CKR_TOKEN_NOT_PRESENT}, 1)
	inj.FailRandomly(hsmfault.Fault{Op: hsmfault.OpSignInit, RV: pkcs11.CKR_DEVICE_REMOVED}, 1)
	broken := time.Now()
	h := e.awaitHealth(t, 5*time.Second, "health degraded", func(h healthReport) bool { return !h.checks["hsm"].OK })
	if h.status != http.StatusOK || h.state != "degraded" || !strings.Contains(h.checks["hsm"].Detail, "down after") || !h.checks["store"].OK {
		t.Fatalf("health within the grace: %d %s %+v", h.status, h.state, h.checks)
	}
	t.Logf("within the grace: %s, hsm: %q", h.state, h.checks["hsm"].Detail)
	st := e.must(e.client("operator"), "GET", "/v1/status", nil).json(t)
	if hs := st["hsm"].(map[string]any); hs["healthy"] != false || hs["unavailable_since"] == nil {
		t.Fatalf("/v1/status hsm within the grace: %v", hs)
	}
	seen := time.Now()
	o := e.signOnce(c, "during", unsignedEIP1559(t, 1337, 1, to, big.NewInt(1)))
	if o.status != http.StatusServiceUnavailable || o.code != "hsm_unavailable" {
		t.Fatalf("sign while the HSM is unavailable: %d %s %q", o.status, o.code, o.message)
	}
	answered[o.idem] = o
	refusedAs := requestRows(t, e.cfg.Store.Path)["during"]
	if refusedAs.state != "failed" || refusedAs.errorCode != "hsm_unavailable" || len(refusedAs.signedTx) != 0 {
		t.Fatalf("record of the refused request: %+v", refusedAs)
	}
	// The watchdog is still petted after health turned degraded.
	if at := wd.await("WATCHDOG=1", seen, 3*time.Second); at.Sub(broken) > grace {
		t.Fatalf("the only pet after the fault came %s after it, past the grace", at.Sub(broken))
	}

	h = e.awaitHealth(t, grace+5*time.Second, "health down past the grace", func(h healthReport) bool { return h.status == http.StatusServiceUnavailable })
	if h.state != "down" || h.checks["hsm"].OK || !strings.Contains(h.checks["hsm"].Detail, "beyond hsm.unavailable_grace") {
		t.Fatalf("health past the grace: %s %+v", h.state, h.checks)
	}
	if down := time.Since(broken); down < grace {
		t.Fatalf("down %s after the fault, before the %s grace", down, grace)
	}
	t.Logf("past the grace: %s, hsm: %q", h.state, h.checks["hsm"].Detail)
	wd.starvedFor(wd.await("STATUS=health down", broken, 10*time.Second), 2*wd.interval)

	inj.Clear()
	back := time.Now()
	e.awaitHealth(t, 15*time.Second, "health ok", func(h healthReport) bool {
		return h.status == http.StatusOK && h.state == "ok"
	})
	wd.await("WATCHDOG=1", back, 5*time.Second)
	r := e.signOnce(c, "during", o.payload)
	if r.status != http.StatusOK || r.requestID != refusedAs.id {
		t.Fatalf("retry once the HSM is back: %d %s, request %s (refused as %s)", r.status, r.code, r.requestID, refusedAs.id)
	}
	answered[r.idem] = r
	checkSignedAreRecorded(t, e.cfg.Store.Path, answered)
	st = e.must(e.client("operator"), "GET", "/v1/status", nil).json(t)
	if hs := st["hsm"].(map[string]any); hs["healthy"] != true || hs["unavailable_since"] != nil {
		t.Fatalf("/v1/status hsm after recovery: %v", hs)
	}
	hh := e.app.currentModule().Health()
	if n := peek.sessions(); n != e.cfg.HSM.PoolSize || inj.OpenSessions() != e.cfg.HSM.PoolSize || hh.InUse != 0 {
		t.Fatalf("after recovery: SoftHSM %d sessions, injector %d (pool %d), health %+v", n, inj.OpenSessions(), e.cfg.HSM.PoolSize, hh)
	}
}
