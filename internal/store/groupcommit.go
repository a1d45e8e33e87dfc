package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Group commit.
//
// Every write transaction ends with an fsync (synchronous=FULL), and the
// fsync, not the SQL, is what a write costs. Under concurrent load the
// writes that queue behind a commit are run together: one BEGIN IMMEDIATE,
// each caller's fn inside its own SAVEPOINT, one COMMIT, one fsync. A caller
// still gets its answer only after the COMMIT that contains its writes is on
// disk, so durability is exactly what it was with one transaction each; what
// changes is that a single fsync covers several callers.
//
// Isolation between callers in a batch is the savepoint: a fn that fails or
// panics is rolled back to its savepoint and only that caller gets the error;
// the others commit. A fn sees the writes of the fns before it in the same
// batch, exactly as it would had their transactions committed first: the
// order of the batch is the order of the commits.
//
// There is no batching goroutine. The first writer to find nobody committing
// becomes the leader: it takes the queue (its own job first), runs it as one
// batch, and, once its own job is done, hands the lead to the oldest waiting
// job, whose goroutine runs the next batch. A lone writer therefore runs its
// own transaction at once, with no hand-off and no savepoint.

// detached: a write that has started runs to its end. A caller's context
// is checked before its fn starts; statements inside fn that run under a
// cancellable context could be interrupted half-way, and SQLite rolls back
// the whole transaction when an interrupted INSERT, UPDATE or DELETE is in
// an explicit one — with group commit, the other callers' writes too. Such
// a loss is detected (the savepoint is gone) and reported to every caller in
// the batch, so nothing is half-kept; the store's own hot-path writes avoid
// it altogether by running their statements under context.WithoutCancel.

// maxGroup bounds a batch, so a commit's latency stays bounded under load.
const maxGroup = 64

type writeJob struct {
	ctx context.Context
	fn  func(tx *Tx) error

	err      error
	panicked any
	// wake is sent true when this job's goroutine must lead the next
	// batch, false when the job is finished.
	wake chan bool
}

type groupCommit struct {
	mu      sync.Mutex
	queue   []*writeJob
	leading bool

	batches atomic.Uint64 // transactions committed (or attempted) for queued jobs
	jobs    atomic.Uint64 // jobs those transactions carried
}

// GroupCommitStats reports how many write transactions the store has run
// and how many callers' writes they carried: jobs ÷ batches is the average
// group size.
func (s *Store) GroupCommitStats() (batches, jobs uint64) {
	return s.gc.batches.Load(), s.gc.jobs.Load()
}

// WriteTx runs fn inside the single write transaction and commits if fn
// returns nil; otherwise, or if fn panics, nothing fn did is kept. The write
// lock is held for the whole of fn, so fn must be short and must not call
// WriteTx (or any other Store write) itself: that would wait for the writer
// it is running on. Reads through the Store's read methods from inside fn do
// not see fn's uncommitted writes; read through tx instead.
//
// fn may share its transaction with other callers' fns (group commit, see
// above); it returns only after the transaction holding fn's writes has
// committed with synchronous=FULL. fn may run on another goroutine than the
// caller's; a panic in fn is re-raised in the caller. If ctx ends before fn
// starts, fn does not run.
func (s *Store) WriteTx(ctx context.Context, fn func(tx *Tx) error) error {
	j := &writeJob{ctx: ctx, fn: fn, wake: make(chan bool, 1)}
	g := &s.gc
	g.mu.Lock()
	g.queue = append(g.queue, j)
	lead := !g.leading
	g.leading = true
	g.mu.Unlock()
	if !lead {
		lead = <-j.wake
	}
	if lead {
		s.lead(j)
	}
	if j.panicked != nil {
		panic(j.panicked)
	}
	return j.err
}

// lead runs batches until own is finished, then hands the lead on.
func (s *Store) lead(own *writeJob) {
	g := &s.gc
	for {
		g.mu.Lock()
		n := min(len(g.queue), maxGroup)
		batch := append([]*writeJob(nil), g.queue[:n]...)
		g.queue = g.queue[n:]
		g.mu.Unlock()

		ownDone := false
		requeue := s.runBatch(batch)
		for _, j := range batch {
			if requeued(j, requeue) {
				continue
			}
			if j == own {
				ownDone = true
			} else {
				j.wake <- false
			}
		}
		g.mu.Lock()
		if len(requeue) > 0 {
			g.queue = append(requeue, g.queue...)
		}
		if !ownDone {
			g.mu.Unlock()
			continue
		}
		if len(g.queue) == 0 {
			g.leading = false
			g.mu.Unlock()
			return
		}
		next := g.queue[0]
		g.mu.Unlock()
		next.wake <- true
		return
	}
}

func requeued(j *writeJob, requeue []*writeJob) bool {
	for _, r := range requeue {
		if r == j {
			return true
		}
	}
	return false
}

// runBatch runs the jobs as one transaction and sets each job's outcome. It
// returns the jobs that did not run because the transaction was lost before
// their turn; they go back to the head of the queue.
func (s *Store) runBatch(batch []*writeJob) (requeue []*writeJob) {
	s.gc.batches.Add(1)
	defer func() { s.gc.jobs.Add(uint64(len(batch) - len(requeue))) }()
	if len(batch) == 1 {
		j := batch[0]
		j.err, j.panicked = s.writeTxSolo(j.ctx, j.fn)
		return nil
	}
	// The transaction is not bound to any one caller's context: one caller
	// leaving must not roll back the others' writes.
	bg := context.Background()
	tx, err := s.w.BeginTx(bg, nil)
	if err != nil {
		for _, j := range batch {
			j.err = fmt.Errorf("store: begin write: %w", err)
		}
		return nil
	}
	var ran []*writeJob
	lost := func(i int, err error) []*writeJob {
		_ = tx.Rollback()
		for _, j := range ran {
			j.err = fmt.Errorf("store: group transaction lost: %w", err)
		}
		return batch[i:]
	}
	for i, j := range batch {
		if err := j.ctx.Err(); err != nil {
			j.err = fmt.Errorf("store: begin write: %w", err)
			continue
		}
		if _, err := tx.ExecContext(bg, `SAVEPOINT group_member`); err != nil {
			j.err = fmt.Errorf("store: begin write: %w", err)
			return lost(i+1, err)
		}
		ferr, p := callFn(j.fn, tx)
		if ferr != nil || p != nil {
			j.err, j.panicked = ferr, p
			if _, err := tx.ExecContext(bg, `ROLLBACK TO group_member; RELEASE group_member`); err != nil {
				// The failure took the transaction with it (an I/O error,
				// an interrupted statement): the jobs before this one are
				// lost; this one has its own error already.
				return lost(i+1, err)
			}
			continue
		}
		if _, err := tx.ExecContext(bg, `RELEASE group_member`); err != nil {
			ran = append(ran, j)
			return lost(i+1, err)
		}
		ran = append(ran, j)
	}
	if len(ran) == 0 {
		_ = tx.Rollback()
		return nil
	}
	if err := tx.Commit(); err != nil {
		for _, j := range ran {
			j.err = fmt.Errorf("store: commit: %w", err)
		}
	}
	return nil
}

// writeTxSolo is one caller's own transaction.
func (s *Store) writeTxSolo(ctx context.Context, fn func(tx *Tx) error) (error, any) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: begin write: %w", err), nil
	}
	// Not bound to ctx, for the same reason as a batch (see detached); it
	// also spares database/sql a watcher goroutine per transaction and per
	// query, which the profile of the signing path showed.
	tx, err := s.w.BeginTx(context.Background(), nil)
	if err != nil {
		return fmt.Errorf("store: begin write: %w", err), nil
	}
	ferr, p := callFn(fn, tx)
	if ferr != nil || p != nil {
		_ = tx.Rollback()
		return ferr, p
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err), nil
	}
	return nil, nil
}

// callFn runs fn, turning a panic into a value the caller re-raises.
func callFn(fn func(tx *Tx) error, tx *Tx) (err error, panicked any) {
	defer func() {
		if p := recover(); p != nil {
			err, panicked = nil, p
		}
	}()
	return fn(tx), nil
}
