package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custodysigner/appliance/hsm"
)

// Kind names what a run measured.
type Kind string

// Kinds of runs.
const (
	KindRaw Kind = "raw" // C_Sign through the hsm package, in this process
	KindEth Kind = "eth" // POST /v1/sign with EIP-1559 transactions
	KindBTC Kind = "btc" // POST /v1/sign with PSBTs
)

// Run is one measured run: Concurrency workers for the measured window
// after the warm-up.
type Run struct {
	Kind        Kind          `json:"kind"`
	Round       int           `json:"round"`
	Concurrency int           `json:"concurrency"`
	Window      time.Duration `json:"window_ns"` // the measured window
	Count       int           `json:"count"`     // operations completed inside it
	Rate        float64       `json:"rate"`      // Count per second
	P50         time.Duration `json:"p50_ns"`
	P99         time.Duration `json:"p99_ns"`
	// SelfCPU is this process's CPU time inside the window: for a raw run
	// the HSM's own work (SoftHSM runs in-process), for an e2e run the
	// load generator's.
	SelfCPU time.Duration `json:"self_cpu_ns"`
	// ApplianceCPU is the appliance process's CPU time inside the window.
	ApplianceCPU time.Duration `json:"appliance_cpu_ns"`
	// MachineBusy is the fraction of all cores busy inside the window;
	// MachineCPU the busy time of all cores together.
	MachineBusy float64       `json:"machine_busy"`
	MachineCPU  time.Duration `json:"machine_cpu_ns"`
	// MaxRSS is the appliance's largest VmRSS sampled (every second) during
	// the run, warm-up included.
	MaxRSS uint64 `json:"max_rss"`
	// Errors counts failed operations over the whole run, warm-up included;
	// ErrorSamples keeps the first few.
	Errors       int      `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
}

// perOp returns d per completed operation, in microseconds.
func (r Run) perOp(d time.Duration) float64 {
	if r.Count == 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(r.Count)
}

// OtherCores is how many cores, on average over the window, processes
// other than the appliance and the load generator kept busy (kernel work
// not charged to a process included): what the figures did not control.
func (r Run) OtherCores() float64 {
	if r.Window <= 0 {
		return 0
	}
	return max(0, float64(r.MachineCPU-r.ApplianceCPU-r.SelfCPU)/float64(r.Window))
}

// errorLog counts failures and keeps the first few messages.
type errorLog struct {
	mu      sync.Mutex
	n       int
	samples []string
}

// maxErrors ends a run's workers early: the run has failed already, and a
// frozen or sealed appliance answers thousands of refusals a second.
const maxErrors = 100

// add records a failure and reports whether the worker should go on.
func (e *errorLog) add(format string, a ...any) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if len(e.samples) < 3 {
		e.samples = append(e.samples, fmt.Sprintf(format, a...))
	}
	return e.n < maxErrors
}

// timing is what every run shares: the measured process, the warm-up and
// the window.
type timing struct {
	pid      int // appliance process; 0: not measured
	warmup   time.Duration
	duration time.Duration
}

// worker performs operations until stop is set, appending one sample per
// successful operation to rec.
type worker func(stop *atomic.Bool, rec *[]sample)

// timed runs workers for the warm-up and the window, measuring CPU and
// machine utilisation exactly at the window's ends, and then stops them.
// Operations that completed inside the window are the run's; the ones in
// flight at either end are symmetric, so counting completions is unbiased.
func (t timing) timed(ctx context.Context, workers []worker, capHint int) (Run, error) {
	// Collect the previous run's garbage (its bodies, its samples) now,
	// not inside this run's window.
	runtime.GC()
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		samples = make([][]sample, len(workers))
	)
	for i, w := range workers {
		samples[i] = make([]sample, 0, capHint/len(workers)+16)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w(&stop, &samples[i])
		}()
	}
	var (
		maxRSS  atomic.Uint64
		rssDone = make(chan struct{})
		rssWG   sync.WaitGroup
	)
	if t.pid > 0 {
		rssWG.Add(1)
		go func() {
			defer rssWG.Done()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				if m, err := ProcessMemory(t.pid); err == nil && m.RSS > maxRSS.Load() {
					maxRSS.Store(m.RSS)
				}
				select {
				case <-rssDone:
					return
				case <-tick.C:
				}
			}
		}()
	}
	finish := func() {
		stop.Store(true)
		wg.Wait()
		close(rssDone)
		rssWG.Wait()
	}
	if !sleep(ctx, t.warmup) {
		finish()
		return Run{}, ctx.Err()
	}
	s0, err := t.snapshot()
	if err != nil {
		finish()
		return Run{}, err
	}
	ok := sleep(ctx, t.duration)
	s1, err := t.snapshot()
	finish()
	if !ok {
		return Run{}, ctx.Err()
	}
	if err != nil {
		return Run{}, err
	}
	lat := window(samples, s0.at, s1.at)
	r := Run{
		Window:       s1.at - s0.at,
		Count:        len(lat),
		P50:          Percentile(lat, 0.50),
		P99:          Percentile(lat, 0.99),
		SelfCPU:      s1.self - s0.self,
		ApplianceCPU: s1.app - s0.app,
		MaxRSS:       maxRSS.Load(),
	}
	r.Rate = float64(r.Count) / r.Window.Seconds()
	if dt := s1.total - s0.total; dt > 0 {
		r.MachineBusy = float64(s1.busy-s0.busy) / float64(dt)
		r.MachineCPU = time.Duration(s1.busy-s0.busy) * clockTick
	}
	return r, nil
}

type snapshot struct {
	at          time.Duration // now()
	self, app   time.Duration
	busy, total uint64
}

func (t timing) snapshot() (snapshot, error) {
	s := snapshot{at: now(), self: SelfCPU()}
	var err error
	if t.pid > 0 {
		if s.app, err = ProcessCPU(t.pid); err != nil {
			return s, fmt.Errorf("appliance process %d: %w", t.pid, err)
		}
	}
	s.busy, s.total, err = MachineCPU()
	return s, err
}

func sleep(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// Signer is the part of *hsm.Module the raw ceiling uses.
type Signer interface {
	Sign(ctx context.Context, ref hsm.KeyRef, data []byte) ([]byte, error)
}

// rawRun signs 32-byte digests through s with c goroutines: the ceiling
// the appliance's signatures are compared with. The digests are a random
// prefix and a counter, so that making them costs nothing measurable.
func (t timing) rawRun(ctx context.Context, s Signer, ref hsm.KeyRef, c int) (Run, error) {
	var errs errorLog
	workers := make([]worker, c)
	for i := range workers {
		var d [32]byte
		if _, err := rand.Read(d[:]); err != nil {
			return Run{}, err
		}
		workers[i] = func(stop *atomic.Bool, rec *[]sample) {
			for n := uint64(0); !stop.Load(); n++ {
				binary.LittleEndian.PutUint64(d[:8], n)
				st := now()
				_, err := s.Sign(ctx, ref, d[:])
				en := now()
				if err != nil {
					if !errs.add("C_Sign: %v", err) || ctx.Err() != nil {
						return
					}
					continue
				}
				*rec = append(*rec, sample{st, en})
			}
		}
	}
	r, err := t.timed(ctx, workers, 4096*c)
	r.Kind, r.Concurrency, r.Errors, r.ErrorSamples = KindRaw, c, errs.n, errs.samples
	return r, err
}

// errExhausted says the pre-built bodies ran out before the run ended.
var errExhausted = errors.New("pre-built request bodies ran out before the run ended (raise -headroom)")

// signedMark is what a signed answer carries, compact as the API writes it.
var signedMark = []byte(`"state":"signed"`)

// e2eRun posts the pre-built bodies over conns, one worker per connection,
// each taking the next unused body. Every answer must be 200 and signed.
func (t timing) e2eRun(ctx context.Context, conns []*conn, bodies [][]byte) (Run, error) {
	var (
		errs      errorLog
		next      atomic.Int64
		exhausted atomic.Bool
	)
	workers := make([]worker, len(conns))
	for i, cn := range conns {
		workers[i] = func(stop *atomic.Bool, rec *[]sample) {
			for !stop.Load() {
				j := next.Add(1) - 1
				if j >= int64(len(bodies)) {
					exhausted.Store(true)
					return
				}
				st := now()
				status, body, err := cn.post(bodies[j])
				en := now()
				ok := true
				switch {
				case err != nil:
					ok = errs.add("request %d: %v", j, err)
				case status != 200:
					ok = errs.add("request %d: HTTP %d %s", j, status, trim(body))
				case !bytes.Contains(body, signedMark):
					ok = errs.add("request %d: 200 but not signed: %s", j, trim(body))
				default:
					*rec = append(*rec, sample{st, en})
				}
				if !ok {
					return
				}
			}
		}
	}
	r, err := t.timed(ctx, workers, len(bodies))
	r.Concurrency, r.Errors, r.ErrorSamples = len(conns), errs.n, errs.samples
	if err == nil && exhausted.Load() {
		err = errExhausted
	}
	return r, err
}

func trim(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}
