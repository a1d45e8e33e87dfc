package app

import (
	"crypto/tls"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/config"
)

// slowSign is the token's library with every C_Sign taking delay longer:
// a slower HSM, so that what requests wait for is the session pool, not
// the machine.
type slowSign struct {
	hsm.Cryptoki
	delay *atomic.Int64
}

func (s slowSign) Sign(sh pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	time.Sleep(time.Duration(s.delay.Load()))
	return s.Cryptoki.Sign(sh, msg)
}

// newFairEnv is newEnv with an HSM pool of one session, C_Sign slowed by
// the returned delay (0 until set), no audit checkpoint signing in the
// background, and a second upstream principal, client2, granted eth-dev,
// whose HTTPS client it returns.
func newFairEnv(t *testing.T, acquireTimeout time.Duration) (*env, *http.Client, *atomic.Int64) {
	t.Helper()
	e := newEnvWith(t, "audit: {checkpoint_interval: 1h, checkpoint_every: 1000000}\nhealth: {checkpoint_age_max: -1s}\n")
	e.cfg.HSM.PoolSize, e.cfg.HSM.AcquireTimeout = 1, config.Duration(acquireTimeout)
	cert := e.addClient2()
	delay := new(atomic.Int64)
	e.interpose = func(c hsm.Cryptoki) hsm.Cryptoki { return slowSign{Cryptoki: c, delay: delay} }
	tc := e.tlsConfig()
	tc.Certificates = []tls.Certificate{cert}
	b := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 16}}
	return e, b, delay
}

// TestFairHSMLoneRequestNotStarved: principal A keeps 24 sign requests in
// flight against an HSM of one session (15 ms a signature); principal B
// then sends 7 requests one after another. Each of B's waits for about one
// of A's signatures, not for A's whole queue: counted in A's answers that
// arrive while a B request is out (order, not wall-clock time), the median
// is at most 24/4 = 6. Without the fair gate the session pool serves in
// arrival order and B's requests each wait behind the ~24 of A's queued
// before them.
func TestFairHSMLoneRequestNotStarved(t *testing.T) {
	e, clientB, delay := newFairEnv(t, 10*time.Second)
	e.start()
	delay.Store(int64(15 * time.Millisecond))
	const flood, lone = 24, 7
	to := common.HexToAddress("0x00000000000000000000000000000000000000fa")
	// Payloads made here: t.Fatal belongs to the test's goroutine.
	payloads := make([]string, 4000)
	for i := range payloads {
		payloads[i] = unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1))
	}
	clientA := e.client("client")
	var next, aDone atomic.Int64
	var aLatency []time.Duration
	var mu sync.Mutex
	stop := make(chan struct{})
	errs := make(chan error, flood)
	var wg sync.WaitGroup
	for range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := next.Add(1) - 1
				if i >= int64(len(payloads)) {
					errs <- fmt.Errorf("A ran out of payloads: B never finished")
					return
				}
				start := time.Now()
				o, err := e.trySign(clientA, fmt.Sprint("a-", i), payloads[i])
				if err == nil && o.status != http.StatusOK {
					err = fmt.Errorf("A's request %d: %d %s %s", i, o.status, o.code, o.message)
				}
				if err != nil {
					errs <- err
					return
				}
				aDone.Add(1)
				mu.Lock()
				aLatency = append(aLatency, time.Since(start))
				mu.Unlock()
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}()
	// A's queue fills before B starts: twice its concurrency answered.
	for deadline := time.Now().Add(60 * time.Second); aDone.Load() < 2*flood; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("A answered %d requests in 60s", aDone.Load())
		}
	}
	// The flood waits for turns, in front of the pool, and status shows
	// it (the pool's own waiters stay near zero).
	var turns, principals float64
	for range 10 {
		hs, _ := e.must(e.client("operator"), http.MethodGet, "/v1/status", nil).json(t)["hsm"].(map[string]any)
		if w, _ := hs["turn_waiters"].(float64); w > turns {
			turns, principals = w, hs["turn_principals"].(float64)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if turns < flood/2 || principals != 1 {
		t.Fatalf("status during A's flood: at most %v signatures waiting for a turn, from %v principals; want at least %d, from 1", turns, principals, flood/2)
	}
	overtaken := make([]int64, lone)
	var bLatency []time.Duration
	for i := range lone {
		before, start := aDone.Load(), time.Now()
		o := e.signOnce(clientB, fmt.Sprint("b-", i), unsignedEIP1559(t, 1337, uint64(1_000_000+i), to, big.NewInt(2)))
		if o.status != http.StatusOK {
			t.Fatalf("B's request %d: %d %s %s", i, o.status, o.code, o.message)
		}
		overtaken[i] = aDone.Load() - before
		bLatency = append(bLatency, time.Since(start))
	}
	mu.Lock()
	aMedian := medianDuration(aLatency)
	mu.Unlock()
	t.Logf("A's answers while each B request was out: %v; B's latency median %s, A's %s", overtaken, medianDuration(bLatency), aMedian)
	slices.Sort(overtaken)
	if m := overtaken[lone/2]; m > flood/4 {
		t.Fatalf("B's requests waited for a median of %d of A's answers (sorted %v), want at most %d: B queues behind A's flood", m, overtaken, flood/4)
	}
}

func medianDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestFairHSMWaitFailsAsTheHSMDoes: a request that cannot get its turn for
// the HSM is answered and recorded as one that could not get a session
// always was. With the one session signing for 3 s: a request that waits
// past hsm.acquire_timeout (1 s) is answered 503 hsm_unavailable and
// recorded failed without a signature; one whose client leaves while it
// waits is recorded the same. Neither costs the HSM a turn: A's request
// signs, and both sign on a retry with their idempotency key (the same
// request), one after the other on the single session.
func TestFairHSMWaitFailsAsTheHSMDoes(t *testing.T) {
	e, clientB, delay := newFairEnv(t, time.Second)
	e.start()
	delay.Store(int64(3 * time.Second))
	to := common.HexToAddress("0x00000000000000000000000000000000000000fb")
	payload := func(n uint64) string { return unsignedEIP1559(t, 1337, n, to, big.NewInt(1)) }
	pA, pLate, pGone := payload(0), payload(1), payload(2)

	aDone := make(chan signOutcome, 1)
	go func() {
		o, err := e.trySign(e.client("client"), "a-holds", pA)
		if err != nil {
			o.code = err.Error()
		}
		aDone <- o
	}()
	// A holds the session once its request is recorded "signing".
	for deadline := time.Now().Add(10 * time.Second); requestRows(t, e.cfg.Store.Path)["a-holds"].state != "signing"; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("A's request not signing within 10s")
		}
	}
	time.Sleep(100 * time.Millisecond) // past the gate, into C_Sign

	late := e.signOnce(clientB, "b-late", pLate)
	if late.status != http.StatusServiceUnavailable || late.code != "hsm_unavailable" ||
		late.message != "the HSM is unavailable; retry with the same idempotency key" {
		t.Fatalf("waiting past acquire_timeout: %d %s %q", late.status, late.code, late.message)
	}
	impatient := *clientB
	impatient.Timeout = 300 * time.Millisecond
	if _, err := e.trySign(&impatient, "b-gone", pGone); err == nil {
		t.Fatal("the impatient client got an answer within 300ms")
	}
	var rows map[string]requestRow
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		rows = requestRows(t, e.cfg.Store.Path)
		if rows["b-gone"].state != "signing" || time.Now().After(deadline) {
			break
		}
	}
	for _, idem := range []string{"b-late", "b-gone"} {
		if r := rows[idem]; r.state != "failed" || r.errorCode != "hsm_unavailable" || len(r.signedTx) != 0 {
			t.Fatalf("%s recorded %+v, want failed hsm_unavailable without a signature", idem, r)
		}
	}
	if o := <-aDone; o.status != http.StatusOK {
		t.Fatalf("A's request: %d %s", o.status, o.code)
	}
	delay.Store(int64(100 * time.Millisecond))
	for _, retry := range []struct{ idem, payload string }{{"b-late", pLate}, {"b-gone", pGone}} {
		o := e.signOnce(clientB, retry.idem, retry.payload)
		if o.status != http.StatusOK || o.requestID != rows[retry.idem].id {
			t.Fatalf("retry of %s: %d %s, request %s (recorded %s)", retry.idem, o.status, o.code, o.requestID, rows[retry.idem].id)
		}
	}
}
