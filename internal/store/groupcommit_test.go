package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

func createScratch(t *testing.T, s *Store) {
	t.Helper()
	err := s.WriteTx(context.Background(), func(tx *Tx) error {
		_, err := tx.Exec(`CREATE TABLE scratch (n INTEGER PRIMARY KEY) STRICT`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func scratchRows(t *testing.T, s *Store) map[int]bool {
	t.Helper()
	rows, err := s.r.Query(`SELECT n FROM scratch`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[int]bool{}
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		got[n] = true
	}
	return got
}

// holdWriteTx starts a writer on wg that takes the write transaction and
// holds it until release is called, then runs fn in it; the writer failing
// fails the test. While it holds, every other WriteTx queues.
func holdWriteTx(t *testing.T, s *Store, wg *sync.WaitGroup, fn func(*Tx) error) (release func()) {
	t.Helper()
	hold, holding := make(chan struct{}), make(chan struct{})
	wg.Go(func() {
		err := s.WriteTx(context.Background(), func(tx *Tx) error {
			close(holding)
			<-hold
			return fn(tx)
		})
		if err != nil {
			t.Errorf("holder: %v", err)
		}
	})
	<-holding
	return func() { close(hold) }
}

// waitQueued waits until n jobs are queued behind the running batch.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.gc.mu.Lock()
		q := len(s.gc.queue)
		s.gc.mu.Unlock()
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d jobs queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Concurrent writers share commits, and each one's failure or panic stays
// its own: the others' writes (a row and an audit entry each) commit, the
// failed ones leave nothing, and the audit chain stays one unbroken chain.
func TestGroupCommitIsolatesMembers(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	createScratch(t, s)
	seq0, _, err := s.AuditHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b0, j0 := s.GroupCommitStats()

	const workers, each = 32, 40
	boom := errors.New("boom")
	var wg sync.WaitGroup
	var mu sync.Mutex
	want := map[int]bool{}
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				n := w*each + i
				write := func(tx *Tx) error {
					if _, err := tx.Exec(`INSERT INTO scratch (n) VALUES (?)`, n); err != nil {
						return err
					}
					if err := s.Audit(ctx, tx, audit.Record{Kind: "test", Detail: fmt.Sprint(n)}); err != nil {
						return err
					}
					switch n % 13 {
					case 5:
						return boom
					case 7:
						panic(fmt.Sprintf("member %d panics", n))
					}
					return nil
				}
				var err error
				var p any
				func() {
					defer func() { p = recover() }()
					err = s.WriteTx(ctx, write)
				}()
				switch n % 13 {
				case 5:
					if !errors.Is(err, boom) || p != nil {
						t.Errorf("member %d: err %v panic %v, want boom", n, err, p)
					}
				case 7:
					if p != fmt.Sprintf("member %d panics", n) {
						t.Errorf("member %d: panic %v (err %v), want its own panic re-raised", n, p, err)
					}
				default:
					if err != nil || p != nil {
						t.Errorf("member %d: err %v panic %v", n, err, p)
					}
					mu.Lock()
					want[n] = true
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()

	got := scratchRows(t, s)
	if len(got) != len(want) {
		t.Errorf("%d rows committed, want %d", len(got), len(want))
	}
	for n := range got {
		if !want[n] {
			t.Errorf("row %d committed although its writer failed", n)
		}
	}
	seq, head, err := s.AuditHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if seq-seq0 != int64(len(want)) {
		t.Errorf("audit grew by %d entries, want %d", seq-seq0, len(want))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := verifyFile(t, path, &key.PublicKey, map[int64][]byte{seq: head}); err != nil {
		t.Errorf("audit chain after group commits: %v (%+v)", err, rep)
	}
	b, j := s.GroupCommitStats()
	t.Logf("%d jobs in %d transactions (%.1f per commit)", j-j0, b-b0, float64(j-j0)/float64(b-b0))
	if j-j0 != workers*each {
		t.Errorf("jobs counted %d, want %d", j-j0, workers*each)
	}
	if b-b0 >= j-j0 {
		t.Errorf("no commit was shared: %d transactions for %d jobs", b-b0, j-j0)
	}
}

// A member that destroys the shared transaction (here an explicit ROLLBACK,
// in life an I/O error) fails every member that ran before it in that
// batch — nothing half-kept — and the members after it run in a new one.
func TestGroupCommitLostTransactionFailsItsMembers(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	createScratch(t, s)

	var wg sync.WaitGroup
	release := holdWriteTx(t, s, &wg, func(tx *Tx) error {
		_, err := tx.Exec(`INSERT INTO scratch (n) VALUES (0)`)
		return err
	})
	insert := func(n int) func(*Tx) error {
		return func(tx *Tx) error {
			_, err := tx.Exec(`INSERT INTO scratch (n) VALUES (?)`, n)
			return err
		}
	}
	errs := make([]error, 4)
	submit := func(i int, fn func(*Tx) error) {
		wg.Go(func() { errs[i] = s.WriteTx(ctx, fn) })
		waitQueued(t, s, i)
	}
	submit(1, insert(1))
	submit(2, func(tx *Tx) error {
		if err := insert(2)(tx); err != nil {
			return err
		}
		_, err := tx.Exec(`ROLLBACK`)
		return err
	})
	submit(3, insert(3))
	release()
	wg.Wait()

	if errs[1] == nil || errs[2] == nil {
		t.Errorf("members of the lost transaction: %v, %v; want both to fail", errs[1], errs[2])
	}
	if errs[3] != nil {
		t.Errorf("member after the loss: %v, want it committed in the next transaction", errs[3])
	}
	got := scratchRows(t, s)
	if !got[0] || got[1] || got[2] || !got[3] || len(got) != 2 {
		t.Errorf("rows %v, want exactly 0 and 3", got)
	}
	if err := s.Probe(ctx); err != nil {
		t.Fatalf("store unusable after a lost group transaction: %v", err)
	}
}

// A caller whose context ends while it waits never has its fn run.
func TestGroupCommitCancelledWhileQueued(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	createScratch(t, s)
	var wg sync.WaitGroup
	release := holdWriteTx(t, s, &wg, func(*Tx) error { return nil })
	cctx, cancel := context.WithCancel(ctx)
	ran := false
	var err error
	wg.Go(func() {
		err = s.WriteTx(cctx, func(tx *Tx) error { ran = true; return insert1(tx) })
	})
	waitQueued(t, s, 1)
	cancel()
	release()
	wg.Wait()
	if !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("cancelled caller: err %v, fn ran %v; want context.Canceled and not run", err, ran)
	}
	if len(scratchRows(t, s)) != 0 {
		t.Fatal("a cancelled caller's write was kept")
	}
}

func insert1(tx *Tx) error {
	_, err := tx.Exec(`INSERT INTO scratch (n) VALUES (1)`)
	return err
}

// The statements every signing request runs must search an index, never
// scan a table: a scan costs time in proportion to the history, under the
// one write lock. (The idempotency lookup once scanned: the unique index is
// partial, and SQLite uses it only when the query repeats its condition.)
func TestHotStatementsUseIndexes(t *testing.T) {
	s, _ := openTest(t)
	for _, q := range []string{
		idempotencyLookup,
		`SELECT ` + requestColumns + ` FROM requests WHERE id = ?`,
		`UPDATE requests SET state = ?, updated_at = ? WHERE id = ? AND state = ?`,
		// (The audit head, `ORDER BY seq DESC LIMIT 1`, shows as a SCAN of
		// events but reads one row: seq is the rowid, walked from its end.)
	} {
		rows, err := s.r.Query(`EXPLAIN QUERY PLAN `+q, "a", "b", "c", "d")
		if err != nil {
			// Fewer parameters than four: retry with as many as the query has.
			n := strings.Count(q, "?")
			args := []any{"a", "b", "c", "d"}[:n]
			rows, err = s.r.Query(`EXPLAIN QUERY PLAN `+q, args...)
			if err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN") {
				t.Errorf("%s\n  plan %q scans a table", q, plan)
			}
		}
	}
}

// A member whose writes need no answer of their own (writeTxEarly's early
// true) is let go once they are in the shared transaction, before the
// COMMIT: here while a later member of its batch still holds the
// transaction open, and its row is not yet visible to a reader. Its next
// write commits after that transaction. A member whose early says false
// waits for the COMMIT as ever.
func TestGroupCommitEarlyMember(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	createScratch(t, s)
	var wg sync.WaitGroup
	release := holdWriteTx(t, s, &wg, insert1)
	errs := make([]error, 5)
	returned := make([]chan struct{}, 5)
	submit := func(i int, early func() bool, fn func(*Tx) error) {
		returned[i] = make(chan struct{})
		wg.Go(func() {
			errs[i] = s.writeTxEarly(ctx, fn, early, nil)
			close(returned[i])
		})
		waitQueued(t, s, i-1)
	}
	insert := func(n int) func(*Tx) error {
		return func(tx *Tx) error {
			_, err := tx.Exec(`INSERT INTO scratch (n) VALUES (?)`, n)
			return err
		}
	}
	yes, no := func() bool { return true }, func() bool { return false }
	gate, inside := make(chan struct{}), make(chan struct{})
	submit(2, yes, insert(2)) // the next batch's leader: waits whatever early says
	submit(3, yes, insert(3))
	submit(4, no, insert(4))
	// The last member holds the batch's transaction open.
	returned[0] = make(chan struct{})
	wg.Go(func() {
		errs[0] = s.WriteTx(ctx, func(tx *Tx) error {
			close(inside)
			<-gate
			_, err := tx.Exec(`INSERT INTO scratch (n) VALUES (5)`)
			return err
		})
		close(returned[0])
	})
	waitQueued(t, s, 4)
	release()
	<-inside
	select {
	case <-returned[3]:
	case <-time.After(10 * time.Second):
		t.Fatal("the early member did not return while the batch was open")
	}
	if errs[3] != nil {
		t.Fatalf("early member: %v", errs[3])
	}
	for _, i := range []int{2, 4} {
		select {
		case <-returned[i]:
			t.Fatalf("member %d returned before the COMMIT", i)
		default:
		}
	}
	if got := scratchRows(t, s); got[3] {
		t.Fatal("the early member's row is visible before the COMMIT")
	}
	// Its next write queues behind the open transaction and sees its row.
	next := make(chan error, 1)
	go func() {
		next <- s.WriteTx(ctx, func(tx *Tx) error {
			res, err := tx.Exec(`UPDATE scratch SET n = 30 WHERE n = 3`)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k != 1 {
				return errors.New("the early member's row is not there")
			}
			return nil
		})
	}()
	waitQueued(t, s, 1)
	close(gate)
	wg.Wait()
	if err := <-next; err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("member %d: %v", i, err)
		}
	}
	got := scratchRows(t, s)
	if !got[1] || !got[2] || !got[30] || !got[4] || !got[5] || len(got) != 5 {
		t.Fatalf("rows %v", got)
	}
}

// An early member whose shared transaction is lost after it was let go:
// its writes are gone, and its next write, which needs them, fails; the
// members still waiting get the error.
func TestGroupCommitEarlyMemberLost(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	createScratch(t, s)
	var wg sync.WaitGroup
	release := holdWriteTx(t, s, &wg, insert1)
	errs := make([]error, 4)
	insert := func(n int) func(*Tx) error {
		return func(tx *Tx) error {
			_, err := tx.Exec(`INSERT INTO scratch (n) VALUES (?)`, n)
			return err
		}
	}
	wg.Go(func() { errs[1] = s.WriteTx(ctx, insert(2)) }) // leader
	waitQueued(t, s, 1)
	var lostWith error
	wg.Go(func() {
		errs[2] = s.writeTxEarly(ctx, insert(3), func() bool { return true }, func(err error) { lostWith = err })
	})
	waitQueued(t, s, 2)
	wg.Go(func() {
		errs[3] = s.WriteTx(ctx, func(tx *Tx) error {
			if err := insert(4)(tx); err != nil {
				return err
			}
			_, err := tx.Exec(`ROLLBACK`) // the shared transaction is lost
			return err
		})
	})
	waitQueued(t, s, 3)
	release()
	wg.Wait()
	if errs[2] != nil {
		t.Fatalf("early member: %v (it was let go before the loss)", errs[2])
	}
	if lostWith == nil {
		t.Fatal("the early member's loss was not reported to it")
	}
	if errs[1] == nil || errs[3] == nil {
		t.Fatalf("waiting members of the lost transaction: %v, %v; want errors", errs[1], errs[3])
	}
	err := s.WriteTx(ctx, func(tx *Tx) error {
		res, err := tx.Exec(`UPDATE scratch SET n = 30 WHERE n = 3`)
		if err != nil {
			return err
		}
		if k, _ := res.RowsAffected(); k != 0 {
			return errors.New("the lost early member's row is there")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := scratchRows(t, s); !got[1] || len(got) != 1 {
		t.Fatalf("rows %v, want only the holder's", got)
	}
}

// CreateRequestToSign returns before the COMMIT; when that transaction is
// then lost, the caller's next write about the request says why it was not
// recorded (once), instead of a bare "not found".
func TestCreateRequestToSignLost(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	createScratch(t, s)
	if err := s.InsertKey(ctx, testKey("eth-dev", 1, time.Now())); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	release := holdWriteTx(t, s, &wg, insert1)
	wg.Go(func() {
		if err := s.WriteTx(ctx, func(tx *Tx) error { _, err := tx.Exec(`INSERT INTO scratch (n) VALUES (2)`); return err }); err == nil {
			t.Error("the leader of the lost transaction succeeded")
		}
	})
	waitQueued(t, s, 1)
	var (
		rec     Request
		created bool
		cerr    error
	)
	wg.Go(func() { rec, created, cerr = s.CreateRequestToSign(ctx, newReq("p", "lost"), nil) })
	waitQueued(t, s, 2)
	wg.Go(func() {
		_ = s.WriteTx(ctx, func(tx *Tx) error { _, err := tx.Exec(`ROLLBACK`); return err })
	})
	waitQueued(t, s, 3)
	release()
	wg.Wait()
	if cerr != nil || !created || rec.State != StateSigning {
		t.Fatalf("CreateRequestToSign: %+v created=%v %v", rec, created, cerr)
	}
	err := s.CompleteRequestWith(ctx, rec.ID, Completion{SignedTx: []byte{1}, TxHash: "0x01"})
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "was not recorded") {
		t.Fatalf("outcome of the lost request: %v, want why it was not recorded", err)
	}
	if err := s.FailRequest(ctx, rec.ID, "x", "y"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second write about the lost request: %v, want ErrNotFound", err)
	}
	if _, err := s.GetRequest(ctx, rec.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the lost request is there: %v", err)
	}
}
