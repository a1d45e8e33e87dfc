package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// openTempFiles lists the deleted files this process has open, from
// /proc/self/fd: SQLite's temporary files (statement journals, spilled sorts)
// are unlinked as soon as they are opened, or opened without a name.
func openTempFiles(t *testing.T) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	var open []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasSuffix(target, " (deleted)") {
			open = append(open, target)
		}
	}
	return open
}

// A batch's savepoints keep the original of every page they change in the
// statement journal; it stays in memory (temp_store = MEMORY) however large
// the batch, instead of spilling to a temporary file past 64 KiB, which cost
// a file and several pwrites per signed request under load.
func TestGroupCommitStatementJournalStaysInMemory(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	// The writer keeps its temp store in memory (restored after the
	// migrations, which ran on a file one); the readers keep files.
	for _, c := range []struct {
		name string
		db   *sql.DB
		want int
	}{{"writer", s.w, 2}, {"reader", s.r, 0}} {
		var got int
		if err := c.db.QueryRowContext(ctx, "PRAGMA temp_store").Scan(&got); err != nil || got != c.want {
			t.Fatalf("%s: temp_store %d (%v), want %d", c.name, got, err, c.want)
		}
	}
	const rows, members = 200, 8
	err := s.WriteTx(ctx, func(tx *Tx) error {
		if _, err := tx.Exec(`CREATE TABLE big (n INTEGER PRIMARY KEY, b BLOB NOT NULL) STRICT`); err != nil {
			return err
		}
		for n := range rows {
			if _, err := tx.Exec(`INSERT INTO big (n, b) VALUES (?, zeroblob(2000))`, n); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if open := openTempFiles(t); len(open) > 0 {
		t.Fatalf("deleted files open before the batch: %q", open)
	}
	var wg sync.WaitGroup
	release := holdWriteTx(t, s, &wg, func(*Tx) error { return nil })
	var mu sync.Mutex
	var seen []string
	b0, j0 := s.GroupCommitStats()
	for m := range members {
		wg.Go(func() {
			err := s.WriteTx(ctx, func(tx *Tx) error {
				// Every member rewrites every row: about 100 pages, 400 KB
				// of statement journal per savepoint.
				if _, err := tx.Exec(`UPDATE big SET b = randomblob(2000)`); err != nil {
					return err
				}
				mu.Lock()
				seen = append(seen, openTempFiles(t)...)
				mu.Unlock()
				if m == 3 {
					return errors.New("rolled back to its savepoint")
				}
				return nil
			})
			if (err != nil) != (m == 3) {
				t.Errorf("member %d: %v", m, err)
			}
		})
	}
	waitQueued(t, s, members)
	release()
	wg.Wait()
	// The holder's batch was counted when it began, its job when it ended.
	if b, j := s.GroupCommitStats(); b-b0 != 1 || j-j0 != members+1 {
		t.Fatalf("%d batches and %d jobs after the holder, want one batch of %d", b-b0, j-j0, members)
	}
	if len(seen) > 0 {
		t.Fatalf("the batch's statement journal spilled to temporary files: %q", seen)
	}
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
}
