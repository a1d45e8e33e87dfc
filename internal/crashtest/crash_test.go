package crashtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/client"
	"github.com/custodysigner/appliance/internal/loadgen"
)

// options are the test's environment variables (see the package comment).
type options struct {
	kills    int
	duration time.Duration
	seed     uint64
	clients  int
	race     bool
	dir      string
}

func loadOptions(t *testing.T) options {
	o := options{kills: 20, clients: 8, seed: uint64(time.Now().UnixNano())}
	num := func(name string, p *int, lo int) {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < lo {
				t.Fatalf("%s=%q: want an integer of at least %d", name, v, lo)
			}
			*p = n
		}
	}
	num("CRASH_KILLS", &o.kills, 1)
	num("CRASH_CLIENTS", &o.clients, 1)
	if v := os.Getenv("CRASH_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CRASH_DURATION=%q: %v", v, err)
		}
		o.duration = d
	}
	if v := os.Getenv("CRASH_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CRASH_SEED=%q: %v", v, err)
		}
		o.seed = s
	}
	o.race = os.Getenv("CRASH_RACE") == "1"
	o.dir = os.Getenv("CRASH_DIR")
	return o
}

// harness is one instance of the appliance under test and the clients'
// memory of what it answered.
type harness struct {
	t   *testing.T
	opt options
	rng *rand.Rand // the test goroutine's choices

	root, dir, bin  string
	inst            string // the instance directory (scripts/dev.sh's DEV_DIR)
	addr            string
	cfgDev          string // unsealed at start with two share files
	cfgSealed       string // waits for officers
	cfgSnap         string // names the snapshot's database, for `appliance check`
	db              string
	snapDir, snapDB string
	auditPub        string
	logPath         string
	logFile         *os.File
	files           func(who string) loadgen.TLSFiles
	asClient        *client.Client
	asAuditor       *client.Client
	began           time.Time // the policy's buckets were set just before
	ethAddr         common.Address
	btcScript       []byte
	ethBodies       *loadgen.Bodies
	btcBodies       *loadgen.Bodies
	ledger          *ledger
	apiAudit        *auditIndex // the chain as GET /v1/audit shows it
	fileAudit       *auditIndex // the chain in the database files the kills left
	proc            *exec.Cmd
	exited          chan error
	violations      int
	violationsMu    sync.Mutex // also guards cycle, kills and final, which phase reads
	cycle, kills    int
	final           bool
	stats           stats
}

type stats struct {
	starts, kills, startKills, sealedKills, apiUnseals      int
	posts, fresh, identical, conflicts, cut, twins          int
	retried, signedOnReplay, recovered, neverRecord         int
	neverSent, replayed                                     int
	leftSigning, batches, batchItems, fullChecks, throttled int
	dbBytes, walBytes                                       int64
	auditEntries                                            int64
	checkpoints                                             int
	maxUnprotected                                          int64
}

// violation reports a broken invariant (the test goes on, to gather the
// evidence; the first 50 are reported in full).
func (h *harness) violation(format string, args ...any) {
	h.violationsMu.Lock()
	h.violations++
	n := h.violations
	h.violationsMu.Unlock()
	if n <= 50 {
		h.t.Errorf("%s: "+format, append([]any{h.phase()}, args...)...)
	} else if n == 51 {
		h.t.Errorf("further violations are counted, not shown")
	}
}

// phase names where the test is, for reports.
func (h *harness) phase() string {
	h.violationsMu.Lock()
	defer h.violationsMu.Unlock()
	if h.final {
		return fmt.Sprintf("final checks after %d kills", h.kills)
	}
	return fmt.Sprintf("cycle %d (after %d kills)", h.cycle, h.kills)
}

// TestCrashConsistency kills the real appliance with SIGKILL in the middle of
// concurrent signing, again and again, and checks after every kill and
// restart what a custody system owes its clients (docs/RECOVERY.md, "Crash
// consistency"): every signature a client received is committed with its
// request record and audit entries; every idempotency key replays to the
// same signed transaction, and a key whose answer the kill swallowed is
// answered with a valid signature once and for all; the policy's counters
// match the records; the audit chain verifies offline with the auditor's
// key; SQLite's integrity_check is ok. Some restarts are unsealed by
// officers through the API instead of the dev share files, and some kills
// land while the appliance starts.
func TestCrashConsistency(t *testing.T) {
	if !softHSMInstalled() {
		t.Skip("SoftHSM is not installed (make deps)")
	}
	opt := loadOptions(t)
	h := &harness{t: t, opt: opt, rng: rand.New(rand.NewPCG(opt.seed, 0)), ledger: newLedger(),
		apiAudit: newAuditIndex("API"), fileAudit: newAuditIndex("database file")}
	h.root = repoRoot(t)
	h.dir = opt.dir
	if h.dir == "" {
		h.dir = t.TempDir()
	} else if err := os.MkdirAll(h.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	t.Cleanup(func() {
		if h.proc != nil {
			_ = h.proc.Process.Kill()
			<-h.exited
		}
		if t.Failed() {
			t.Logf("seed %d (CRASH_SEED=%d reproduces the choices; timing is not reproducible); appliance log tail:\n%s",
				opt.seed, opt.seed, h.logTail(30))
		}
	})
	t.Logf("seed %d, %d kills, duration %v, %d clients, appliance built with -race: %v", opt.seed, opt.kills, opt.duration, opt.clients, opt.race)

	h.build()
	h.provision()
	h.began = time.Now()
	h.start(false)
	h.waitUnsealed()
	h.loadKeys()
	h.verify(false)

	more := func() bool {
		// Each key's rate buckets hold rateBurst tokens: stop well before
		// a long soak spends them.
		if len(h.ledger.answered) > rateBurst*8/10 {
			t.Logf("stopping: %d requests recorded, the rate buckets hold %d", len(h.ledger.answered), rateBurst)
			return false
		}
		return h.stats.kills < opt.kills || time.Since(began) < opt.duration
	}
	setPhase := func(cycle int, final bool) {
		h.violationsMu.Lock()
		h.cycle, h.kills, h.final = cycle, h.stats.kills, final
		h.violationsMu.Unlock()
	}
	for cycle := 1; more(); cycle++ {
		setPhase(cycle, false)
		killAfter := 50*time.Millisecond + time.Duration(h.rng.Int64N(int64(750*time.Millisecond)))
		lr := h.load(cycle, killAfter)
		h.stats.kills++
		setPhase(cycle, false)
		states := h.offline(false)
		h.stats.leftSigning += states["signing"]

		// Now and then the kill lands in the start itself: the store's
		// checks, the dev unseal, the key and audit checks.
		startKill := ""
		if (cycle == 2 || h.rng.Float64() < 0.1) && more() {
			after := time.Duration(h.rng.Int64N(int64(150 * time.Millisecond)))
			h.start(false)
			time.Sleep(after)
			h.kill()
			h.stats.kills++
			h.stats.startKills++
			setPhase(cycle, false)
			h.offline(false)
			startKill = fmt.Sprintf(", killed again %v into the restart", after.Round(time.Millisecond))
		}
		// Every fifth restart waits for two officers' shares through the API.
		sealed := cycle%5 == 1
		if sealed && h.rng.Float64() < 0.5 && more() {
			// Killed while sealed, one officer's share in: the progress
			// is not kept, and the next start waits for two shares again.
			h.start(true)
			if hb := h.waitServing(); !hb.Sealed {
				t.Fatalf("started without dev_unseal_shares, yet unsealed: %+v", hb)
			}
			if stillSealed, progress := h.officerShare(2); !stillSealed || progress != 1 {
				t.Fatalf("after officer2's share: sealed %v, progress %d; want sealed, 1 of 2", stillSealed, progress)
			}
			h.kill()
			h.stats.kills++
			h.stats.sealedKills++
			setPhase(cycle, false)
			h.offline(false)
			startKill += ", killed again while sealed with one share in"
		}
		h.start(sealed)
		unseal := "dev shares"
		if sealed {
			if hb := h.waitServing(); !hb.Sealed {
				t.Fatalf("started without dev_unseal_shares, yet unsealed: %+v", hb)
			}
			h.officerUnseal()
			unseal = "officers via POST /v1/unseal"
		}
		h.waitUnsealed()
		vr := h.verify(false)

		h.stats.posts += lr.posts
		h.stats.fresh += lr.fresh
		h.stats.identical += lr.identical
		h.stats.conflicts += lr.conflicts
		h.stats.cut += lr.cut
		h.stats.twins += lr.twins
		h.stats.batches += lr.batches
		h.stats.batchItems += lr.batchItems
		h.stats.retried += vr.retried
		h.stats.signedOnReplay += vr.signedOnReplay
		h.stats.recovered += vr.recoveredOnReplay
		h.stats.neverRecord += vr.neverRecorded
		h.stats.neverSent += vr.neverSent
		h.stats.replayed += vr.replayed
		h.stats.throttled += lr.throttled + vr.throttled
		t.Logf("kill %d after %v of load: %d posts, %d answered, %d identical replays, %d conflicts refused, %d cut off "+
			"(records left signing %d)%s; restart unsealed by %s: %d keys replayed (%d signed now, %d answer recovered, %d never recorded), %d answers checked",
			h.stats.kills, killAfter.Round(time.Millisecond), lr.posts, lr.fresh, lr.identical, lr.conflicts, lr.cut, states["signing"],
			startKill, unseal, vr.retried, vr.signedOnReplay, vr.recoveredOnReplay, vr.neverRecorded+vr.neverSent, vr.checked)
		if h.violations > 0 {
			t.Logf("stopping after cycle %d: %d violations", cycle, h.violations)
			break
		}
	}

	// The end: every key replayed, a clean stop, the files checked again
	// (now with a checkpoint over the whole chain).
	setPhase(0, true)
	vr := h.verify(true)
	h.stats.replayed += vr.replayed
	h.stats.throttled += vr.throttled
	h.stop()
	final := h.offline(true)
	errorLines := h.scanLog()
	s := h.stats
	t.Logf("crash consistency: %d SIGKILLs (%d during a start, %d while sealed), %d starts (%d unsealed by officers through the API) in %v; "+
		"%d posts (%d of them batches of %d requests in all): %d keys answered, %d byte-identical replays, %d conflicts refused, %d requests cut off by kills (%d twins); "+
		"after restarts %d keys replayed: %d signed then (left signing by a kill), %d answers recovered (signed before the kill), %d never recorded, %d never sent; "+
		"%d replays in the checks (%d answers 429 rate_limited by the API's per-principal limit, sent again); records: %s; %d audit entries, %d checkpoints (at most %d entries unprotected after a kill); "+
		"database %.1f MiB, WAL at a kill up to %.1f MiB; %d runs of appliance check --full; %d ERROR lines in the appliance log",
		s.kills, s.startKills, s.sealedKills, s.starts, s.apiUnseals, time.Since(began).Round(time.Second),
		s.posts, s.batches, s.batchItems, len(h.ledger.answeredEntries()), s.identical, s.conflicts, s.cut, s.twins,
		s.retried, s.signedOnReplay, s.recovered, s.neverRecord, s.neverSent,
		s.replayed, s.throttled, stateSummary(final), s.auditEntries, s.checkpoints, s.maxUnprotected,
		float64(s.dbBytes)/(1<<20), float64(s.walBytes)/(1<<20), s.fullChecks, len(errorLines))
	for i, l := range errorLines {
		if i == 10 {
			t.Logf("… %d more", len(errorLines)-10)
			break
		}
		t.Logf("appliance ERROR: %s", l)
	}
}
