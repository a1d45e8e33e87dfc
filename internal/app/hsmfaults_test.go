package app

import (
	"database/sql"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/miekg/pkcs11"
	"go.uber.org/zap/zaptest/observer"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/custodysigner/appliance/internal/config"
)

// Real SoftHSM disruption under a running appliance. SoftHSM is a library
// in the appliance's process: a second handle on it (pkcs11.New on the same
// module path) shares its state, so C_CloseAllSessions and C_Logout through
// that handle close and log out the appliance's own sessions, and
// C_GetSessionInfo through it counts them.
//
// One limit: SoftHSM frees a session in C_CloseAllSessions while another
// thread may still be using it (it crashed the process in hsm's
// TestTokenLossRecovery when signers ran). The disruptions here therefore
// happen with no request in flight and away from the health monitor's probe
// (see tokenPeek.awayFromProbe); audit checkpoints are configured out.

// tokenPeek is the second handle on the appliance's SoftHSM token.
type tokenPeek struct {
	t     *testing.T
	p     *pkcs11.Ctx
	label string
	slot  uint
	db    *sql.DB // read-only, for the health monitor's last probe

	lastProbe, checkedAt time.Time // what awayFromProbe saw last, and when
}

func peekToken(t *testing.T, e *env) *tokenPeek {
	t.Helper()
	uri, err := hsm.ParseURI(e.cfg.HSM.URI)
	if err != nil {
		t.Fatal(err)
	}
	p := pkcs11.New(uri.ModulePath)
	if p == nil {
		t.Fatalf("pkcs11.New(%s) failed", uri.ModulePath)
	}
	u := url.URL{Scheme: "file", Path: e.cfg.Store.Path, RawQuery: "mode=ro&_busy_timeout=5000"}
	db, err := sql.Open("sqlite3", u.String())
	if err != nil {
		t.Fatal(err)
	}
	tp := &tokenPeek{t: t, p: p, label: uri.Token, db: db}
	t.Cleanup(func() { db.Close(); p.Destroy() })
	tp.findSlot()
	return tp
}

func (tp *tokenPeek) findSlot() {
	tp.t.Helper()
	slots, err := tp.p.GetSlotList(true)
	if err != nil {
		tp.t.Fatalf("C_GetSlotList: %v", err)
	}
	for _, s := range slots {
		if ti, err := tp.p.GetTokenInfo(s); err == nil && ti.Label == tp.label {
			tp.slot = s
			return
		}
	}
	tp.t.Fatalf("no slot holds token %q", tp.label)
}

// sessions counts the sessions open on the token in this process, as
// SoftHSM itself knows them. SoftHSM does not report session counts in
// C_GetTokenInfo (CK_UNAVAILABLE_INFORMATION), so every handle is asked:
// SoftHSM numbers sessions from 1 and reuses the lowest free number, so a
// leak would show up below 1024. Call it only while the module is healthy
// (not during a rebuild's C_Finalize).
func (tp *tokenPeek) sessions() int {
	n := 0
	for h := pkcs11.SessionHandle(1); h <= 1024; h++ {
		if si, err := tp.p.GetSessionInfo(h); err == nil && si.SlotID == tp.slot {
			n++
		}
	}
	return n
}

// anySession is a session handle open on the token (one of the pool's).
func (tp *tokenPeek) anySession() pkcs11.SessionHandle {
	tp.t.Helper()
	for h := pkcs11.SessionHandle(1); h <= 1024; h++ {
		if si, err := tp.p.GetSessionInfo(h); err == nil && si.SlotID == tp.slot {
			return h
		}
	}
	tp.t.Fatal("no session open on the token")
	return 0
}

// awayFromProbe returns once the health monitor's next probe (every 5 s,
// hsm first, then the store's write) is not due for a while. It reads the
// last probe's time from the store's health row, so nothing else may probe
// meanwhile (no GET /v1/health).
func (tp *tokenPeek) awayFromProbe() {
	tp.t.Helper()
	last := func() (at int64) {
		if err := tp.db.QueryRow(`SELECT probed_at FROM health WHERE id = 1`).Scan(&at); err != nil && err != sql.ErrNoRows {
			tp.t.Fatal(err)
		}
		return at
	}
	at := last()
	tp.lastProbe, tp.checkedAt = time.Unix(0, at), time.Now()
	if time.Since(time.Unix(0, at)) < 4*time.Second {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for last() == at {
		if time.Now().After(deadline) {
			tp.t.Fatal("the health monitor did not probe within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	tp.lastProbe, tp.checkedAt = time.Unix(0, last()), time.Now()
}

// fdTargets lists this process's open file descriptors that could leak
// across C_Finalize/C_Initialize, as fd=target: not sockets (the test's own
// HTTP clients open and keep those) and not the database's files (SQLite
// pools open connections as the load asks).
func fdTargets(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || strings.HasPrefix(target, "socket:") || strings.Contains(filepath.Base(target), "appliance.db") {
			continue // err: the directory ReadDir read, closed since
		}
		out = append(out, e.Name()+"="+target)
	}
	return out
}

// TestHSMFaultsLeakNoSessions injects 1,000 real faults into the running
// appliance's SoftHSM, one at a time with a sign request each: 995 times
// C_CloseAllSessions on its slot (the pool's sessions closed under it), 5
// times C_Logout (its login lost, which the request notices: an empty key
// search on a session no longer logged in). Every request that meets a
// fault is answered 503 hsm_unavailable and recorded failed, without a signature
// (unless the health monitor's probe met the fault first and rebuilt: then
// the request signs on the new sessions); each fault costs exactly one
// rebuild, after which the pool holds exactly pool_size sessions (counted
// in SoftHSM), none borrowed, and the same request signs on a retry with
// its idempotency key. No file descriptor leaks over the run (sockets and
// the database's files aside).
func TestHSMFaultsLeakNoSessions(t *testing.T) {
	faults, logoutEvery := 1000, 200
	if testing.Short() {
		faults, logoutEvery = 100, 50
	}
	e := newEnvWith(t, "audit: {checkpoint_interval: 1h, checkpoint_every: 1000000}\nhealth: {checkpoint_age_max: -1s}\n")
	e.start()
	peek := peekToken(t, e)
	pool := e.cfg.HSM.PoolSize
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000f1")
	answered := signedBeforeTheFault(t, e.signOnce(c, "warm-up", unsignedEIP1559(t, 1337, 0, to, big.NewInt(1))))
	if n := peek.sessions(); n != pool {
		t.Fatalf("%d sessions on the token before the faults, want the pool's %d", n, pool)
	}
	m := e.app.currentModule()
	rebuilds0 := m.Health().Rebuilds
	fds0 := fdTargets(t)
	start := time.Now()
	var logouts, byProbe int
	for i := 1; i <= faults; i++ {
		idem, payload := fmt.Sprint("fault-", i), unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1))
		logout := i%logoutEvery == 0
		peek.awayFromProbe()
		if logout {
			logouts++
			// Logins are per application: this logs the appliance out.
			if err := peek.p.Logout(peek.anySession()); err != nil {
				t.Fatalf("fault %d: C_Logout: %v", i, err)
			}
		} else {
			if err := peek.p.CloseAllSessions(peek.slot); err != nil {
				t.Fatalf("fault %d: C_CloseAllSessions: %v", i, err)
			}
			if n := peek.sessions(); n != 0 {
				t.Fatalf("fault %d: %d sessions left after C_CloseAllSessions", i, n)
			}
		}
		o := e.signOnce(c, idem, payload)
		switch {
		case o.status == http.StatusServiceUnavailable && o.code == "hsm_unavailable":
		case o.status == http.StatusOK && !logout && m.Health().Rebuilds == rebuilds0+uint64(i):
			// The health monitor's probe met the closed sessions first and
			// rebuilt: the request was signed on the new ones. Rare (see
			// awayFromProbe); the fault still counts.
			byProbe++
			t.Logf("fault %d: detected by the health monitor's probe before the request (last probe seen %s, checked %s before the fault)",
				i, peek.lastProbe.Format("15:04:05.000"), time.Since(peek.checkedAt).Round(time.Millisecond))
		default:
			t.Fatalf("fault %d (logout %v): %d %s %q, want 503 hsm_unavailable; %+v", i, logout, o.status, o.code, o.message, m.Health())
		}
		answered[idem] = o
		if logout {
			// The request itself notices: its key search comes back empty
			// on a session that is no longer logged in, which is a lost
			// login (not a missing key), and the module rebuilds at once,
			// without waiting for the health monitor's probe.
			if n := len(e.logs.FilterMessage("hsm token lost; rebuilding").Filter(func(l observer.LoggedEntry) bool {
				return strings.Contains(fmt.Sprint(l.ContextMap()["reason"]), "sign failed") &&
					strings.Contains(fmt.Sprint(l.ContextMap()["reason"]), "session state")
			}).All()); n != logouts {
				t.Fatalf("fault %d: %d rebuilds for a lost login seen by a request, want %d", i, n, logouts)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for h := m.Health(); !h.Healthy || h.Rebuilds != rebuilds0+uint64(i); h = m.Health() {
			if h.Rebuilds > rebuilds0+uint64(i) {
				t.Fatalf("fault %d: %d rebuilds, want one per fault", i, h.Rebuilds-rebuilds0)
			}
			if time.Now().After(deadline) {
				t.Fatalf("fault %d: not rebuilt within 10 s: %+v", i, h)
			}
			time.Sleep(time.Millisecond)
		}
		if h := m.Health(); h.InUse != 0 || h.Waiters != 0 {
			t.Fatalf("fault %d: after the rebuild %d sessions borrowed, %d waiters", i, h.InUse, h.Waiters)
		}
		if n := peek.sessions(); n != pool {
			t.Fatalf("fault %d: %d sessions on the token after the rebuild, want the pool's %d", i, n, pool)
		}
		r := e.signOnce(c, idem, payload)
		if r.status != http.StatusOK || (o.status == http.StatusOK && r.signedTx != o.signedTx) {
			t.Fatalf("fault %d: retry after the rebuild: %d %s %q (first answer %d)", i, r.status, r.code, r.message, o.status)
		}
		if i%100 == 0 {
			if n := len(requestRows(t, e.cfg.Store.Path)); n != i+1 {
				t.Fatalf("fault %d: %d request rows, want %d (a retry is not a new request)", i, n, i+1)
			}
		}
		answered[idem] = r
	}
	took := time.Since(start)
	if fds := fdTargets(t); !slices.Equal(fds, fds0) {
		t.Fatalf("file descriptors after %d faults: %v, before: %v", faults, fds, fds0)
	}
	st := e.must(e.client("operator"), "GET", "/v1/status", nil).json(t)
	hs := st["hsm"].(map[string]any)
	if hs["in_use"].(float64) != 0 || hs["sessions"].(float64) != float64(pool) || hs["rebuilds"].(float64) != float64(rebuilds0)+float64(faults) {
		t.Fatalf("/v1/status hsm after %d faults: %v", faults, hs)
	}
	checkSignedAreRecorded(t, e.cfg.Store.Path, answered)
	t.Logf("%d faults (%d C_CloseAllSessions, %d C_Logout) in %s: each rebuilt once, %d answered 503 hsm_unavailable "+
		"(%d met first by the health probe, the request then signed), %d sessions on the token after each, the retry signed; "+
		"file descriptors unchanged (%d, sockets and database aside)",
		faults, faults-logouts, logouts, took.Round(time.Millisecond), faults-byProbe, byProbe, pool, len(fds0))
}

// runUnprivileged: root reads a directory whatever its mode, so under root
// the calling test runs again in a child process as nobody and this returns
// false (the child's result is the test's); otherwise it returns true and
// the test does its work here.
func runUnprivileged(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return true
	}
	dir, err := os.MkdirTemp("", "app-test-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "app.test")
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1", "-test.timeout=5m")
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "SOFTHSM2_CONF", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "HOME":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME=/nonexistent")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	t.Logf("the same test as nobody (uid 65534):\n%s", out)
	if err != nil {
		t.Fatalf("as nobody: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatal("as nobody: the test did not pass (skipped?)")
	}
	return false
}

// TestTokenDirectoryUnreadable: SoftHSM's token directory becomes unreadable
// (mode 0000) under an idle, running appliance. The health monitor's probe
// notices (C_GetTokenInfo fails; the rebuild cannot find the token): health
// is degraded for hsm.unavailable_grace, then down with the hsm check saying
// why, the systemd watchdog starves, and a
// sign request is answered 503 hsm_unavailable at once and recorded failed,
// with no signature. When the permissions return the appliance rebuilds by
// itself: health ok, the watchdog petted again, the same request signs on a
// retry with its idempotency key (same request id), and the token holds the
// pool's sessions again, none borrowed. Runs as nobody (see
// runUnprivileged): root would read the directory anyway.
func TestTokenDirectoryUnreadable(t *testing.T) {
	if !runUnprivileged(t) {
		return
	}
	wd := listenNotify(t, time.Second)
	e := newEnv(t)
	e.cfg.HSM.UnavailableGrace = config.Duration(2 * time.Second)
	e.start()
	uri, err := hsm.ParseURI(e.cfg.HSM.URI)
	if err != nil {
		t.Fatal(err)
	}
	dir := softhsmtest.TokenPath(t, uri.Token)
	peek := peekToken(t, e)
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000f1")
	answered := signedBeforeTheFault(t, e.signOnce(c, "before", unsignedEIP1559(t, 1337, 0, to, big.NewInt(1))))
	wd.await("WATCHDOG=1", time.Time{}, 5*time.Second)

	if err := os.Chmod(dir, 0); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = os.Chmod(dir, 0o700)
		}
	}()
	if _, err := os.ReadDir(dir); err == nil {
		t.Fatal("the token directory is still readable")
	}
	broken := time.Now()
	h := e.awaitHealth(t, 10*time.Second, "health degraded", func(h healthReport) bool { return !h.checks["hsm"].OK })
	if h.status != http.StatusOK || h.state != "degraded" {
		t.Fatalf("health within hsm.unavailable_grace: %d %s %+v", h.status, h.state, h.checks)
	}
	h = e.awaitHealth(t, 15*time.Second, "health down", func(h healthReport) bool { return h.status == http.StatusServiceUnavailable })
	if time.Since(broken) < e.cfg.HSM.UnavailableGrace.D() {
		t.Fatalf("down %s after the fault, within the grace", time.Since(broken))
	}
	if h.state != "down" || h.checks["hsm"].OK || h.checks["hsm"].Detail == "" || !h.checks["store"].OK {
		t.Fatalf("health with the token unreadable: %s %+v", h.state, h.checks)
	}
	t.Logf("health with the token directory unreadable: %s, hsm: %q", h.state, h.checks["hsm"].Detail)
	wd.starvedFor(wd.await("STATUS=health down", broken, 10*time.Second), 2*wd.interval)

	payload := unsignedEIP1559(t, 1337, 1, to, big.NewInt(1))
	t0 := time.Now()
	o := e.signOnce(c, "unreadable", payload)
	if o.status != http.StatusServiceUnavailable || o.code != "hsm_unavailable" {
		t.Fatalf("sign with the token unreadable: %d %s %q", o.status, o.code, o.message)
	}
	if took := time.Since(t0); took > time.Second {
		t.Fatalf("refusal took %s: it must fail fast", took)
	}
	answered[o.idem] = o
	r := requestRows(t, e.cfg.Store.Path)["unreadable"]
	if r.state != "failed" || r.errorCode != "hsm_unavailable" || len(r.signedTx) != 0 {
		t.Fatalf("record of the refused request: %+v", r)
	}

	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	restored = true
	back := time.Now()
	e.awaitHealth(t, 15*time.Second, "health ok", func(h healthReport) bool {
		return h.status == http.StatusOK && h.checks["hsm"].OK
	})
	wd.await("WATCHDOG=1", back, 5*time.Second)
	o = e.signOnce(c, "unreadable", payload)
	if o.status != http.StatusOK || o.requestID != r.id {
		t.Fatalf("retry once readable: %d %s, request %s (recorded %s)", o.status, o.code, o.requestID, r.id)
	}
	answered[o.idem] = o
	checkSignedAreRecorded(t, e.cfg.Store.Path, answered)
	hh := e.app.currentModule().Health()
	if n := peek.sessions(); n != e.cfg.HSM.PoolSize || hh.InUse != 0 || hh.Rebuilds < 1 {
		t.Fatalf("after recovery: %d sessions on the token (pool %d), health %+v", n, e.cfg.HSM.PoolSize, hh)
	}
}
