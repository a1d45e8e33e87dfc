package crashtest

import (
	"encoding/json"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/custodysigner/appliance/internal/loadgen"
)

// What a load phase sends, besides new requests.
type itemKind int

const (
	kindNew      itemKind = iota
	kindTwin              // a new key posted by two clients at once
	kindReplay            // an answered key again: the same answer, byte for byte
	kindRetry             // an unanswered key again (its answer lost to a kill, or in flight)
	kindConflict          // an answered key with another payload: 409 idempotency_conflict
	kindBatch             // POST /v1/sign/batch: new keys, answered keys, a key twice
)

type item struct {
	e     *entry
	body  []byte // e.body, except for a conflict or a batch
	kind  itemKind
	batch []*entry // a batch's requests, in order
}

// loadResult is what one load phase did.
type loadResult struct {
	posts, fresh, identical, conflicts, cut int
	twins, replays, retries                 int
	batches, batchItems, throttled          int
}

// The load's mix, per item generated.
const (
	pReplay   = 0.08
	pRetry    = 0.03
	pConflict = 0.01
	pTwin     = 0.04
	pBTC      = 0.14
	pBatch    = 0.03
)

// next generates the next item (or two, for twins) on the generator's rng.
func (h *harness) next(rng *rand.Rand, res *loadResult) []item {
	r := rng.Float64()
	switch {
	case r < pReplay:
		if e := h.ledger.pickAnswered(rng); e != nil {
			res.replays++
			return []item{{e: e, body: e.body, kind: kindReplay}}
		}
	case r < pReplay+pRetry:
		if e := h.ledger.pickUnanswered(rng); e != nil {
			res.retries++
			return []item{{e: e, body: e.body, kind: kindRetry}}
		}
	case r < pReplay+pRetry+pConflict:
		if e := h.ledger.pickAnswered(rng); e != nil {
			other, err := h.ethBodies.Next()
			if err != nil {
				h.t.Error(err)
				return nil
			}
			var b signBody
			if err := json.Unmarshal(other, &b); err != nil {
				h.t.Error(err)
				return nil
			}
			b.IdempotencyKey = e.key
			body, err := json.Marshal(b)
			if err != nil {
				h.t.Error(err)
				return nil
			}
			return []item{{e: e, body: body, kind: kindConflict}}
		}
	case r < pReplay+pRetry+pConflict+pTwin:
		e := h.newEntry(h.ethBodies)
		if e == nil {
			return nil
		}
		res.twins++
		return []item{{e: e, body: e.body, kind: kindTwin}, {e: e, body: e.body, kind: kindTwin}}
	case r < pReplay+pRetry+pConflict+pTwin+pBTC:
		if e := h.newEntry(h.btcBodies); e != nil {
			return []item{{e: e, body: e.body, kind: kindNew}}
		}
		return nil
	case r < pReplay+pRetry+pConflict+pTwin+pBTC+pBatch:
		return h.nextBatch(rng, res)
	}
	if e := h.newEntry(h.ethBodies); e != nil {
		return []item{{e: e, body: e.body, kind: kindNew}}
	}
	return nil
}

// nextBatch makes a batch of 2 to 8 requests: mostly new keys (a seventh
// of them PSBTs), some answered keys (replayed inside the batch), and now
// and then a key twice (the second is the first's replay).
func (h *harness) nextBatch(rng *rand.Rand, res *loadResult) []item {
	n := 2 + rng.IntN(7)
	var b struct {
		Requests []json.RawMessage `json:"requests"`
	}
	var es []*entry
	for i := 0; i < n; i++ {
		var e *entry
		switch x := rng.Float64(); {
		case x < 0.1 && i > 0:
			e = es[rng.IntN(len(es))]
		case x < 0.25:
			e = h.ledger.pickAnswered(rng)
		case x < 0.4:
			e = h.newEntry(h.btcBodies)
		}
		if e == nil {
			e = h.newEntry(h.ethBodies)
		}
		if e == nil {
			return nil
		}
		es = append(es, e)
		b.Requests = append(b.Requests, e.body)
	}
	body, err := json.Marshal(b)
	if err != nil {
		h.t.Error(err)
		return nil
	}
	res.batches++
	res.batchItems += n
	return []item{{kind: kindBatch, body: body, batch: es}}
}

func (h *harness) newEntry(src *loadgen.Bodies) *entry {
	body, err := src.Next()
	if err != nil {
		h.t.Error(err)
		return nil
	}
	e, err := h.ledger.add(body)
	if err != nil {
		h.t.Error(err)
		return nil
	}
	return e
}

// load runs the clients against the appliance and SIGKILLs it after
// killAfter, in the middle of whatever it is doing; it returns once the
// process is gone and every client has stopped.
func (h *harness) load(cycle int, killAfter time.Duration) loadResult {
	var (
		res    loadResult
		resMu  sync.Mutex
		killed atomic.Bool
		stop   = make(chan struct{})
		items  = make(chan item)
		wg     sync.WaitGroup
	)
	rng := rand.New(rand.NewPCG(h.opt.seed, uint64(cycle)))
	go func() {
		defer close(items)
		for {
			var batch []item
			resMu.Lock()
			batch = h.next(rng, &res)
			resMu.Unlock()
			for _, it := range batch {
				select {
				case items <- it:
				case <-stop:
					return
				}
			}
		}
	}()
	for w := 0; w < h.opt.clients; w++ {
		conn, err := loadgen.NewConn(h.addr, "/v1/sign", h.files("client"), 20*time.Second)
		if err != nil {
			h.t.Fatal(err)
		}
		bconn, err := loadgen.NewConn(h.addr, "/v1/sign/batch", h.files("client"), 20*time.Second)
		if err != nil {
			h.t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			defer bconn.Close()
			record := func(e *entry, raw []byte, what string) {
				fresh, first, err := h.ledger.answer(e, raw, cycle, false)
				switch {
				case err != nil:
					h.violation("%s key %s: %v", what, e.key, err)
				case first != nil:
					h.violation("%s key %s answered with a DIFFERENT signed transaction: first %s, now %s", what, e.key, first, raw)
				}
				resMu.Lock()
				if fresh {
					res.fresh++
				} else if first == nil {
					res.identical++
				}
				resMu.Unlock()
			}
			for it := range items {
				if killed.Load() {
					return
				}
				sent := it.batch
				if it.kind != kindConflict && it.kind != kindBatch {
					sent = []*entry{it.e}
				}
				for _, e := range sent {
					h.ledger.sent(e)
				}
				c := conn
				if it.kind == kindBatch {
					c = bconn
				}
				status, raw, err := c.Post(it.body)
				resMu.Lock()
				res.posts++
				resMu.Unlock()
				switch {
				case err != nil:
					if !killed.Load() {
						h.violation("a client lost its connection before the kill: %v", err)
						return
					}
					for _, e := range sent {
						h.ledger.cut(e)
					}
					resMu.Lock()
					res.cut += len(sent)
					resMu.Unlock()
					return
				case status == 429 && apiLimited(raw):
					// The API's per-principal limit: nothing was
					// recorded; the keys stay open for the replays.
					resMu.Lock()
					res.throttled++
					resMu.Unlock()
				case it.kind == kindBatch:
					var b struct {
						Results []struct {
							Index  int             `json:"index"`
							Status int             `json:"status"`
							Result json.RawMessage `json:"result"`
						} `json:"results"`
					}
					if err := json.Unmarshal(raw, &b); err != nil || status != 200 || len(b.Results) != len(it.batch) {
						h.violation("batch of %d: HTTP %d %s", len(it.batch), status, raw)
						continue
					}
					for i, r := range b.Results {
						e := it.batch[i]
						if r.Index != i || r.Status != 200 {
							h.violation("batch item %d (key %s): index %d status %d: %s", i, e.key, r.Index, r.Status, raw)
							continue
						}
						record(e, r.Result, "batch item")
					}
				case it.kind == kindConflict:
					var eb struct {
						Error struct{ Code string } `json:"error"`
					}
					_ = json.Unmarshal(raw, &eb)
					if status != 409 || eb.Error.Code != "idempotency_conflict" {
						h.violation("key %s reused with another payload: want 409 idempotency_conflict, got %d %s", it.e.key, status, raw)
					}
					resMu.Lock()
					res.conflicts++
					resMu.Unlock()
				case status == 200:
					record(it.e, raw, "")
				default:
					h.violation("key %s (%s): HTTP %d %s", it.e.key, it.e.req.Chain, status, raw)
				}
			}
		}()
	}
	time.Sleep(killAfter)
	killed.Store(true)
	_ = syscall.Kill(h.proc.Process.Pid, syscall.SIGKILL)
	close(stop)
	wg.Wait()
	h.reap()
	return res
}
