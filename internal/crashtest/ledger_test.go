package crashtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
)

// signBody is POST /v1/sign's body as the load generator writes it.
type signBody struct {
	KeyID          string `json:"key_id"`
	Chain          string `json:"chain"`
	Network        string `json:"network"`
	Payload        string `json:"payload"`
	IdempotencyKey string `json:"idempotency_key"`
}

// signAnswer is POST /v1/sign's 200 answer.
type signAnswer struct {
	RequestID string `json:"request_id"`
	State     string `json:"state"`
	SignedTx  string `json:"signed_tx"`
	TxHash    string `json:"tx_hash"` // Ethereum
	TxID      string `json:"txid"`    // Bitcoin
	PSBT      string `json:"psbt"`    // Bitcoin
}

// hash is the transaction hash the answer names (tx_hash or txid).
func (a *signAnswer) hash() string {
	if a.TxID != "" {
		return a.TxID
	}
	return a.TxHash
}

// entry is one idempotency key: the body first sent under it and the first
// 200 answer any client received for it. Every later answer for the key
// must be byte-identical to that one.
type entry struct {
	key   string
	body  []byte
	req   signBody
	sends int // times posted
	lost  int // posts cut off by a kill (no answer)

	raw []byte // the first answer, exactly as received; nil while none
	ans signAnswer
	// answeredIn is the cycle whose load phase received the first answer
	// (0: received while replaying after a restart).
	answeredIn int
	viaReplay  bool // first answered by a replay after its answer was lost
	checked    bool // record, audit entries and signature verified
}

// ledger is the test's memory of everything the clients sent and received.
type ledger struct {
	mu       sync.Mutex
	byKey    map[string]*entry
	keys     []string // creation order
	answered []string // keys with an answer, in the order answered
}

func newLedger() *ledger { return &ledger{byKey: map[string]*entry{}} }

// add registers a new body under its (new) idempotency key.
func (l *ledger) add(body []byte) (*entry, error) {
	var req signBody
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("body %s: %w", body, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, dup := l.byKey[req.IdempotencyKey]; dup {
		return nil, fmt.Errorf("idempotency key %s made twice", req.IdempotencyKey)
	}
	e := &entry{key: req.IdempotencyKey, body: body, req: req}
	l.byKey[e.key] = e
	l.keys = append(l.keys, e.key)
	return e, nil
}

// sent counts a post of e.
func (l *ledger) sent(e *entry) {
	l.mu.Lock()
	e.sends++
	l.mu.Unlock()
}

// cut counts a post of e that a kill cut off.
func (l *ledger) cut(e *entry) {
	l.mu.Lock()
	e.lost++
	l.mu.Unlock()
}

// answer records a 200 answer for e. The first one is kept; every later one
// must be byte-identical (same request, same signature): otherwise it
// returns the first, as evidence. fresh says this was the key's first answer.
//
// The answer is kept without the white space that ends POST /v1/sign's
// body, so that a batch's result (the same JSON inside the batch's answer)
// compares byte for byte too.
func (l *ledger) answer(e *entry, raw []byte, cycle int, replay bool) (fresh bool, first []byte, err error) {
	raw = bytes.TrimSpace(raw)
	var a signAnswer
	if err := json.Unmarshal(raw, &a); err != nil {
		return false, nil, fmt.Errorf("answer %s: %w", raw, err)
	}
	if a.State != "signed" || a.RequestID == "" || a.SignedTx == "" || a.hash() == "" {
		return false, nil, fmt.Errorf("a 200 answer that is not a complete signed one: %s", raw)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if e.raw != nil {
		if !bytes.Equal(e.raw, raw) {
			return false, e.raw, nil
		}
		return false, nil, nil
	}
	e.raw, e.ans, e.answeredIn, e.viaReplay = raw, a, cycle, replay
	l.answered = append(l.answered, e.key)
	return true, nil, nil
}

// pickAnswered returns a random answered entry, or nil.
func (l *ledger) pickAnswered(rng *rand.Rand) *entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.answered) == 0 {
		return nil
	}
	return l.byKey[l.answered[rng.IntN(len(l.answered))]]
}

// pickUnanswered returns a random entry without an answer that was posted
// before (its answer lost to a kill, or still in flight), or nil.
func (l *ledger) pickUnanswered(rng *rand.Rand) *entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var open []*entry
	for _, k := range l.keys {
		if e := l.byKey[k]; e.raw == nil && e.sends > 0 {
			open = append(open, e)
		}
	}
	if len(open) == 0 {
		return nil
	}
	return open[rng.IntN(len(open))]
}

// unanswered lists every entry without an answer.
func (l *ledger) unanswered() []*entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*entry
	for _, k := range l.keys {
		if e := l.byKey[k]; e.raw == nil {
			out = append(out, e)
		}
	}
	return out
}

// answeredEntries lists every answered entry, in the order answered.
func (l *ledger) answeredEntries() []*entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*entry, len(l.answered))
	for i, k := range l.answered {
		out[i] = l.byKey[k]
	}
	return out
}

func (l *ledger) get(key string) *entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byKey[key]
}

// answerOf returns e's answer (raw nil while none).
func (l *ledger) answerOf(e *entry) ([]byte, signAnswer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return e.raw, e.ans
}
