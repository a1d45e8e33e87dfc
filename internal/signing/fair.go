package signing

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/custodysigner/appliance/hsm"
)

// errNoTurn is a wait for an HSM turn that outlasted the gate's bound.
var errNoTurn = errors.New("no HSM turn within the bound")

// fairGate admits at most n holders at once and gives each freed slot to
// the principals waiting for one in turn, FIFO within a principal. The HSM
// session pool is one queue in arrival order, so a principal with thirty
// signatures queued would make a lone request of another wait for all
// thirty; behind this gate it waits for about one.
//
// The order is start-time fair queueing with unit costs: each waiter gets
// a tag, max(the tag of the latest grant, its principal's last tag + 1),
// and a freed slot goes to the smallest tag (ties: the earlier arrival).
// While several principals wait that is plain round robin; a principal
// that arrives with nothing queued starts at the current round (it neither
// banks credit while idle nor queues behind another's backlog), and the
// turns already taken count, so when A holds every slot and has ten more
// waiting, B's one request takes the next slot that frees.
//
// Waiters block in their own goroutine on a channel of their own, recycled
// with its timer; an Acquire that finds a free slot allocates nothing.
type fairGate struct {
	mu      sync.Mutex
	free    int
	size    int
	maxWait time.Duration
	vt      uint64           // the tag of the latest grant: the current round
	seq     uint64           // arrival order, for equal tags
	flows   map[string]*flow // principals waiting, or whose tags run ahead of vt
	waiting []*flow          // the flows with waiters, in no particular order
	nqueued int              // waiters in all flows
	spare   *waiter          // recycled waiters
	sweepAt int              // len(flows) at which idle flows are swept
	release func()           // g.releaseOne, bound once: returning it allocates nothing
}

// flow is one principal's queue.
type flow struct {
	last       uint64 // the tag its next waiter starts from
	head, tail *waiter
	at         int // index in fairGate.waiting, -1 when nothing waits
}

type waiter struct {
	ready      chan struct{} // receives the slot (buffered: the hand-off never blocks)
	timer      *time.Timer
	flow       *flow
	prev, next *waiter
	tag, seq   uint64
	granted    bool // under fairGate.mu: a slot was sent on ready
}

// minSweep is the smallest number of flows kept before idle ones are swept.
const minSweep = 64

// newFairGate admits n holders at once; a wait longer than maxWait (if
// positive) fails.
func newFairGate(n int, maxWait time.Duration) *fairGate {
	g := &fairGate{free: n, size: n, maxWait: maxWait, flows: map[string]*flow{}, sweepAt: minSweep}
	g.release = g.releaseOne
	return g
}

// Acquire waits for a slot, in principal's turn, until ctx ends or the
// gate's bound passes. The release it returns must be called exactly once.
func (g *fairGate) Acquire(ctx context.Context, principal string) (release func(), err error) {
	g.mu.Lock()
	f := g.flowOf(principal)
	tag := max(g.vt, f.last)
	if g.free > 0 {
		// A free slot means nobody waits: releases hand slots to waiters
		// directly.
		g.free--
		g.vt, f.last = tag, tag+1
		g.mu.Unlock()
		return g.release, nil
	}
	if err := ctx.Err(); err != nil {
		g.mu.Unlock()
		return nil, err
	}
	w := g.newWaiter()
	w.flow, w.tag, w.seq = f, tag, g.seq
	g.seq++
	f.last = tag + 1
	g.enqueue(w)
	g.mu.Unlock()

	var timeout <-chan time.Time
	if g.maxWait > 0 {
		if w.timer == nil {
			w.timer = time.NewTimer(g.maxWait)
		} else {
			w.timer.Reset(g.maxWait)
		}
		timeout = w.timer.C
	}
	select {
	case <-w.ready:
		g.mu.Lock()
		g.recycle(w)
		g.mu.Unlock()
		return g.release, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timeout:
		err = errNoTurn
	}
	g.mu.Lock()
	if w.granted {
		// The hand-off raced the end of the wait: the slot is in ready.
		// Pass it on, or it would be lost for good.
		<-w.ready
		g.releaseLocked()
	} else {
		g.dequeue(w)
	}
	g.recycle(w)
	g.mu.Unlock()
	return nil, err
}

func (g *fairGate) releaseOne() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.releaseLocked()
}

// releaseLocked hands the slot to the waiter with the smallest tag, or
// frees it.
func (g *fairGate) releaseLocked() {
	if len(g.waiting) == 0 {
		if g.free++; g.free > g.size {
			panic("signing: fair gate released more often than acquired")
		}
		return
	}
	// A linear scan: only principals with waiters are here, a handful, and
	// at most the configured principals.
	best := g.waiting[0].head
	for _, f := range g.waiting[1:] {
		if w := f.head; w.tag < best.tag || (w.tag == best.tag && w.seq < best.seq) {
			best = w
		}
	}
	g.unlink(best)
	g.vt = max(g.vt, best.tag)
	best.granted = true
	best.ready <- struct{}{}
}

// flowOf returns principal's flow, creating it.
func (g *fairGate) flowOf(principal string) *flow {
	if f, ok := g.flows[principal]; ok {
		return f
	}
	if len(g.flows) >= g.sweepAt {
		g.sweep()
	}
	f := &flow{at: -1, last: g.vt}
	g.flows[principal] = f
	return f
}

// sweep forgets idle flows that are not ahead of the current round: a new
// flow would start from the same tag. Amortised: the next sweep waits for
// the map to double.
func (g *fairGate) sweep() {
	for name, f := range g.flows {
		if f.head == nil && f.last <= g.vt {
			delete(g.flows, name)
		}
	}
	g.sweepAt = max(minSweep, 2*len(g.flows))
}

// enqueue appends w to its flow, which starts waiting if it was idle.
func (g *fairGate) enqueue(w *waiter) {
	g.nqueued++
	f := w.flow
	if f.tail == nil {
		f.head, f.tail = w, w
		f.at = len(g.waiting)
		g.waiting = append(g.waiting, f)
		return
	}
	w.prev, f.tail.next, f.tail = f.tail, w, w
}

// dequeue removes a waiter that gave up. If it was its flow's last, the
// flow's next tag goes back to its own: a request that never ran is not
// charged for.
func (g *fairGate) dequeue(w *waiter) {
	if w == w.flow.tail {
		w.flow.last = w.tag
	}
	g.unlink(w)
}

// unlink takes w out of its flow, and the flow out of the waiting set if
// nothing is left in it.
func (g *fairGate) unlink(w *waiter) {
	g.nqueued--
	f := w.flow
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		f.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		f.tail = w.prev
	}
	w.prev, w.next = nil, nil
	if f.head == nil {
		last := len(g.waiting) - 1
		g.waiting[f.at] = g.waiting[last]
		g.waiting[f.at].at = f.at
		g.waiting[last] = nil
		g.waiting = g.waiting[:last]
		f.at = -1
	}
}

func (g *fairGate) newWaiter() *waiter {
	w := g.spare
	if w == nil {
		return &waiter{ready: make(chan struct{}, 1)}
	}
	g.spare, w.next = w.next, nil
	return w
}

// recycle keeps w for the next wait. Its ready channel is empty: the slot
// was received, or never sent.
func (g *fairGate) recycle(w *waiter) {
	if w.timer != nil {
		w.timer.Stop() // since Go 1.23 no stale tick survives a Stop
	}
	w.flow, w.granted, w.prev = nil, false, nil
	w.next, g.spare = g.spare, w
}

// waits returns how many signatures wait for a turn, and for how many
// principals.
func (g *fairGate) waits() (signatures, principals int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.nqueued, len(g.waiting)
}

// fairSigner takes a turn of the fair gate for each HSM signature, in the
// name of the principal whose request it is.
//
// One turn per signature, not per request: a signature is what holds an
// HSM session, so it is the unit the pool and the gate count. A turn held
// across a Bitcoin PSBT's inputs would make another principal's lone
// request wait for all of them, the queueing this gate exists to end; per
// signature, a many-input PSBT under load interleaves with the others (its
// latency grows with the load, its share does not).
type fairSigner struct {
	Signer
	gate      *fairGate
	principal string
}

// Sign waits for the principal's turn, then signs. A wait that fails is
// reported as the HSM's own session wait is: unavailable (hsmSign's 503
// hsm_unavailable), the context's error kept for the caller to tell.
func (fs fairSigner) Sign(ctx context.Context, ref hsm.KeyRef, data []byte) ([]byte, error) {
	release, err := fs.gate.Acquire(ctx, fs.principal)
	if err != nil {
		return nil, fmt.Errorf("signing: waiting for an HSM turn: %w: %w", hsm.ErrUnavailable, err)
	}
	defer release()
	return fs.Signer.Sign(ctx, ref, data)
}

// FairHSM lets at most n signatures into the HSM at once, the principals
// taking turns for them (n is the HSM's session pool), each waiting at most
// maxWait (the pool's own acquire timeout) and never past its request's
// context. n <= 0 leaves the HSM's queue as it is. Call it before serving.
func (s *Service) FairHSM(n int, maxWait time.Duration) {
	s.turns = nil
	if n > 0 {
		s.turns = newFairGate(n, maxWait)
	}
}

// HSMTurnWaits says how many signatures wait for their principal's turn
// for the HSM, and for how many principals: with the gate on they wait
// there, not for a session (hsm.Health's Waiters). Zeros with it off.
func (s *Service) HSMTurnWaits() (signatures, principals int) {
	if s.turns == nil {
		return 0, 0
	}
	return s.turns.waits()
}

// fair returns h as a principal's signatures see it: behind the fair gate,
// when there is one.
func (s *Service) fair(h Signer, principal string) Signer {
	if s.turns == nil {
		return h
	}
	return fairSigner{Signer: h, gate: s.turns, principal: principal}
}
