package app

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/store"
	"github.com/custodysigner/appliance/internal/testfs"
)

// Storage faults on real filesystems under a running appliance (real
// SoftHSM, mTLS, SQLite): the data directory on a tmpfs that fills up, and
// on an ext4 filesystem that turns read-only. Root only (mounts).

// healthReport is GET /v1/health as an operator sees it.
type healthReport struct {
	status int
	state  string
	checks map[string]struct {
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	}
}

func (e *env) health(t *testing.T) healthReport {
	t.Helper()
	a := e.must(e.client("operator"), "GET", "/v1/health", nil)
	var body struct {
		Status string `json:"status"`
		Checks map[string]struct {
			OK     bool   `json:"ok"`
			Detail string `json:"detail"`
		} `json:"checks"`
	}
	if err := json.Unmarshal(a.body, &body); err != nil {
		t.Fatalf("health: %d %s: %v", a.status, a.body, err)
	}
	return healthReport{status: a.status, state: body.Status, checks: body.Checks}
}

// awaitHealth polls /v1/health (cached 1 s) until cond holds.
func (e *env) awaitHealth(t *testing.T, within time.Duration, what string, cond func(healthReport) bool) healthReport {
	t.Helper()
	var last healthReport
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if last = e.health(t); cond(last) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s; last health %d %s %+v", what, within, last.status, last.state, last.checks)
	return last
}

// signConcurrently sends clients × perClient new sign requests (idempotency
// keys prefix-c-i, nonces from nonce0) and returns what each client saw.
func (e *env) signConcurrently(t *testing.T, prefix string, clients, perClient int, nonce0 uint64) []signOutcome {
	t.Helper()
	to := common.HexToAddress("0x00000000000000000000000000000000000000f1")
	var (
		mu  sync.Mutex
		out []signOutcome
		wg  sync.WaitGroup
	)
	for c := range clients {
		payloads := make([]string, perClient)
		for i := range payloads {
			payloads[i] = unsignedEIP1559(t, 1337, nonce0+uint64(c*perClient+i), to, big.NewInt(1))
		}
		hc := e.client("client")
		wg.Go(func() {
			for i, p := range payloads {
				o, err := e.trySign(hc, fmt.Sprintf("%s-%d-%d", prefix, c, i), p)
				if err != nil {
					t.Error(err)
					continue
				}
				mu.Lock()
				out = append(out, o)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.SortFunc(out, func(a, b signOutcome) int { return strings.Compare(a.idem, b.idem) })
	return out
}

// replayAll sends every request again with its idempotency key: each must
// now be signed, and one signed before must come back byte-identical. The
// answers replace the refusals in answered.
func (e *env) replayAll(t *testing.T, answered map[string]signOutcome) {
	t.Helper()
	idems := slices.Sorted(mapsKeys(answered))
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for range 4 {
		c := e.client("client")
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(idems) && !t.Failed(); i = int(next.Add(1) - 1) {
				idem := idems[i]
				mu.Lock()
				first := answered[idem]
				mu.Unlock()
				o, err := e.trySign(c, idem, first.payload)
				switch {
				case err != nil:
					t.Errorf("replay of %s: %v", idem, err)
				case o.status != http.StatusOK:
					t.Errorf("replay of %s (first answer %d %s): %d %s %s", idem, first.status, first.code, o.status, o.code, o.message)
				case first.status == http.StatusOK && (o.signedTx != first.signedTx || o.requestID != first.requestID):
					t.Errorf("replay of %s signed again: %s/%s, first %s/%s", idem, o.requestID, o.signedTx, first.requestID, first.signedTx)
				}
				mu.Lock()
				answered[idem] = o
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// stopAndCheckDatabase stops the appliance (its audit keys read first),
// runs the full integrity_check on its database and verifies the audit
// chain, returning the verification's report.
func (e *env) stopAndCheckDatabase(t *testing.T) audit.Report {
	t.Helper()
	keys := e.auditKeys(t)
	e.stop()
	path := e.cfg.Store.Path
	f, err := store.OpenAuditFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Pragma(context.Background(), "integrity_check"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rep, err := verifyDB(t, path, keys)
	if err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	return rep
}

// TestDiskFullRefusesSigningAndRecovers: the database's filesystem fills up
// under load. Every request is either signed and recorded, or refused 503
// unavailable with a message saying nothing was signed (never a 500, never
// a signature without its record); health is down with the store check
// naming the full disk, the disk_space alert is raised and the systemd
// watchdog starves. When space returns the appliance recovers by itself:
// health ok, the watchdog petted again, every refused request signs on a
// retry with its idempotency key, every earlier signature replays
// unchanged; integrity_check is ok and the audit chain verifies.
//
// The automatic freeze after repeated failures to record is set out of
// reach here (TestDiskFullFreezesUntilTheQuorumResumes covers it).
func TestDiskFullRefusesSigningAndRecovers(t *testing.T) {
	testfs.RequireRoot(t)
	wd := listenNotify(t, time.Second)
	e := newEnvWith(t, "freeze: {after_record_failures: 1000000}\nhealth: {min_free_disk_bytes: 1048576}\n")
	data := testfs.MountTmpfs(t, 16<<20) // the database and a full WAL (1,000 pages) fit
	e.moveStore(data)
	e.start()
	answered := signedBeforeTheFault(t, e.signConcurrently(t, "before", 2, 5, 0)...)
	start := time.Now()
	wd.await("WATCHDOG=1", start, 5*time.Second)

	// Fill the filesystem but for 512 KiB, which signing then uses up: some
	// requests are signed, then records fail, at whichever write comes
	// first (the request, or its signature: then withheld).
	filler := testfs.FillUp(t, data, 512<<10)
	filled := time.Now()
	var refused, withheld int
	for _, o := range e.signConcurrently(t, "full", 8, 10, 100) {
		answered[o.idem] = o
		switch {
		case o.status == http.StatusOK:
		case o.status == http.StatusServiceUnavailable && o.code == "unavailable" &&
			strings.Contains(o.message, "could not be recorded") && strings.Contains(o.message, "retry with the same idempotency key"):
			refused++
			if strings.Contains(o.message, "withheld") {
				withheld++
			}
		default:
			t.Errorf("%s on a full disk: %d %s %q", o.idem, o.status, o.code, o.message)
		}
	}
	t.Logf("disk filling up: of 80 requests %d signed, %d refused 503 unavailable (%d of them after signing: signature withheld)",
		80-refused, refused, withheld)
	if refused == 0 {
		t.Fatal("no request was refused on a full disk")
	}
	h := e.awaitHealth(t, 10*time.Second, "health down", func(h healthReport) bool { return h.status == http.StatusServiceUnavailable })
	if h.state != "down" || h.checks["store"].OK || !strings.Contains(h.checks["store"].Detail, "disk is full") || h.checks["disk_space"].OK {
		t.Fatalf("health on a full disk: %s %+v", h.state, h.checks)
	}
	t.Logf("health on a full disk: %s, store: %q, disk_space: %q", h.state, h.checks["store"].Detail, h.checks["disk_space"].Detail)
	wd.starvedFor(wd.await("STATUS=health down", filled, 5*time.Second), 2*wd.interval)
	// Reads go on: a client can still fetch what was signed.
	for _, o := range answered {
		if o.status == http.StatusOK {
			if a := e.must(e.client("client"), "GET", "/v1/requests/"+o.requestID, nil); a.status != http.StatusOK || a.json(t)["state"] != "signed" {
				t.Fatalf("reading %s on a full disk: %d %s", o.requestID, a.status, a.body)
			}
			break
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	e.awaitHealth(t, 10*time.Second, "store healthy again", func(h healthReport) bool {
		return h.status == http.StatusOK && h.checks["store"].OK && h.checks["disk_space"].OK
	})
	wd.await("WATCHDOG=1", back, 5*time.Second)
	e.replayAll(t, answered)
	checkSignedAreRecorded(t, e.cfg.Store.Path, answered)
	for idem, r := range requestRows(t, e.cfg.Store.Path) {
		if r.state != "signed" {
			t.Errorf("request %s (%s) left %s", r.id, idem, r.state)
		}
	}
	if st := e.must(e.client("operator"), "GET", "/v1/status", nil).json(t); st["frozen"] != false {
		t.Fatalf("frozen: %v", st)
	}
	if rep := e.stopAndCheckDatabase(t); rep.Unprotected != 0 {
		t.Fatalf("%d audit entries not covered by a checkpoint after a clean stop", rep.Unprotected)
	}
}

// TestDiskFullFreezesUntilTheQuorumResumes: with the default
// freeze.after_record_failures (3), a full disk freezes the appliance after
// three refused requests. Giving the space back does not resume signing:
// that is the officers' decision (an unfreeze proposal, K approvals, then
// an unseal), after which every refused request signs on a retry.
func TestDiskFullFreezesUntilTheQuorumResumes(t *testing.T) {
	testfs.RequireRoot(t)
	q := newQuorumEnv(t, "health: {min_free_disk_bytes: 1048576}\n")
	data := testfs.MountTmpfs(t, 16<<20)
	q.moveStore(data)
	q.start()
	q.unseal(1, 2)
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	answered := signedBeforeTheFault(t, q.signOnce(c, "before", unsignedEIP1559(t, 1337, 0, to, big.NewInt(1))))

	filler := testfs.FillUp(t, data, 0)
	var unavailable, frozen int
	for i := 1; i <= 30 && frozen == 0; i++ {
		o := q.signOnce(c, fmt.Sprint("full-", i), unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)))
		answered[o.idem] = o
		switch {
		case o.status == http.StatusServiceUnavailable && o.code == "unavailable":
			unavailable++
		case o.status == http.StatusServiceUnavailable && o.code == "frozen":
			frozen++
			if !strings.Contains(o.message, "consecutive failures to record") {
				t.Errorf("frozen answer does not say why: %q", o.message)
			}
		case o.status == http.StatusOK:
		default:
			t.Fatalf("%s on a full disk: %d %s %q", o.idem, o.status, o.code, o.message)
		}
	}
	if frozen == 0 || unavailable < 3 {
		t.Fatalf("%d refused unavailable, %d frozen: want the freeze after 3 failures to record", unavailable, frozen)
	}
	st := q.must(q.client("operator"), "GET", "/v1/status", nil).json(t)
	seal, _ := st["seal"].(map[string]any)
	if st["frozen"] != true || seal["frozen_by"] != "automatic" {
		t.Fatalf("status after the failures: %v", st)
	}
	t.Logf("frozen after %d refusals: %v", unavailable, seal["frozen_reason"])

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Space back: the store is healthy, the appliance stays frozen (degraded,
	// by design: the watchdog must not restart it).
	h := q.awaitHealth(t, 10*time.Second, "store healthy again", func(h healthReport) bool { return h.checks["store"].OK })
	if h.status != http.StatusOK || h.state != "degraded" || h.checks["hsm"].OK || !strings.HasPrefix(h.checks["hsm"].Detail, "frozen") {
		t.Fatalf("health once space returned: %d %s %+v", h.status, h.state, h.checks)
	}
	if o := q.signOnce(c, "full-1", answered["full-1"].payload); o.status != http.StatusServiceUnavailable || o.code != "frozen" {
		t.Fatalf("sign once space returned, still frozen: %d %s", o.status, o.code)
	}
	frozenRecorded := slices.Contains(auditKinds(t, q.cfg.Store.Path), "freeze")
	t.Logf("the automatic freeze is in the audit chain: %v", frozenRecorded)

	p := q.propose(1, "unfreeze", `{"reason":"data disk full: space reclaimed, cause fixed"}`)
	q.approve(1, p["proposal_id"].(string), q.approval[0], p["digest"].(string))
	if a := q.approve(2, p["proposal_id"].(string), q.approval[1], p["digest"].(string)); a.json(t)["state"] != "executed" {
		t.Fatalf("unfreeze: %s", a.body)
	}
	q.unseal(1, 2)
	q.replayAll(t, answered)
	checkSignedAreRecorded(t, q.cfg.Store.Path, answered)
	q.stopAndCheckDatabase(t)
	kinds := auditKinds(t, q.cfg.Store.Path)
	if !slices.Contains(kinds, "unfreeze") {
		t.Fatalf("no unfreeze entry in %v", kinds)
	}
}

// TestReadOnlyDatabaseRefusesSigning: the filesystem under the running
// appliance's database turns read-only (ext4 errors=remount-ro after an
// error). Every new request is refused 503 unavailable; health is down with
// the store check failing and the watchdog starves; reads go on; a restart
// is refused. The filesystem cannot be made writable again under open files
// (ext4 refuses remount,rw after its journal aborted): the runbook is stop,
// unmount, e2fsck, mount, start. After it, every signature given
// before is in the database, every refused request signs on a retry, the
// full integrity_check is ok and the audit chain verifies.
func TestReadOnlyDatabaseRefusesSigning(t *testing.T) {
	testfs.RequireRoot(t)
	wd := listenNotify(t, time.Second)
	e := newEnvWith(t, "freeze: {after_record_failures: 1000000}\nhealth: {min_free_disk_bytes: -1}\n")
	fs := testfs.NewExt4(t, 64<<20)
	e.moveStore(fs.Dir)
	e.start()
	answered := signedBeforeTheFault(t, e.signConcurrently(t, "before", 2, 5, 0)...)
	wd.await("WATCHDOG=1", time.Now(), 5*time.Second)

	fs.Fail()
	failed := time.Now()
	for _, o := range e.signConcurrently(t, "ro", 4, 5, 100) {
		answered[o.idem] = o
		if o.status != http.StatusServiceUnavailable || o.code != "unavailable" || !strings.Contains(o.message, "nothing was signed") {
			t.Errorf("%s on a read-only filesystem: %d %s %q", o.idem, o.status, o.code, o.message)
		}
	}
	h := e.awaitHealth(t, 10*time.Second, "health down", func(h healthReport) bool { return h.status == http.StatusServiceUnavailable })
	if h.state != "down" || h.checks["store"].OK {
		t.Fatalf("health on a read-only filesystem: %s %+v", h.state, h.checks)
	}
	t.Logf("health on a read-only filesystem: %s, store: %q", h.state, h.checks["store"].Detail)
	wd.starvedFor(wd.await("STATUS=health down", failed, 5*time.Second), 2*wd.interval)
	for _, o := range answered {
		if o.status == http.StatusOK {
			if a := e.must(e.client("client"), "GET", "/v1/requests/"+o.requestID, nil); a.status != http.StatusOK {
				t.Fatalf("reading %s on a read-only filesystem: %d %s", o.requestID, a.status, a.body)
			}
			break
		}
	}

	e.stop()
	// What systemd does once the watchdog starves, a restart, is refused
	// while the filesystem stays read-only.
	if a, err := New(context.Background(), e.cfg, e.log, "test"); err == nil {
		a.Close()
		t.Fatal("the appliance started on a read-only filesystem")
	} else {
		t.Logf("start on the read-only filesystem refused: %v", err)
	}
	t.Logf("e2fsck: %s", strings.Join(strings.Fields(fs.Repair()), " "))
	e.start()
	if h := e.health(t); h.status != http.StatusOK || !h.checks["store"].OK || !h.checks["hsm"].OK {
		t.Fatalf("health after the repair: %d %s %+v", h.status, h.state, h.checks)
	}
	e.replayAll(t, answered)
	checkSignedAreRecorded(t, e.cfg.Store.Path, answered)
	e.stopAndCheckDatabase(t)
}
