package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.uber.org/zap/zaptest"

	"github.com/custodysigner/appliance/internal/testfs"
)

// Storage faults on real filesystems: a tmpfs that fills up, and an ext4
// filesystem that turns read-only under the open database (what
// errors=remount-ro does after an I/O error). Both need root, to mount.

// fillUp fills dir's filesystem (testfs.FillUp, leaving nothing) and checks
// that no block is left free; removing the returned file gives the space
// back.
func fillUp(t *testing.T, dir string) string {
	t.Helper()
	path := testfs.FillUp(t, dir, 0)
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bavail != 0 {
		t.Fatalf("%d blocks still free after filling", st.Bavail)
	}
	return path
}

// sqliteCode is the primary SQLite result code in err's chain, or -1.
func sqliteCode(err error) sqlite3.ErrNo {
	var se sqlite3.Error
	if errors.As(err, &se) {
		return se.Code
	}
	return -1
}

// TestDiskFullRefusedWithoutDamage: the database's filesystem fills up while
// 16 writers create requests through group commit. Every refused write is
// SQLITE_FULL and classified Unavailable (never an internal error), keeps
// nothing (a retry creates the request afresh) and damages nothing: reads go
// on, the health probe fails while the disk is full and passes once space
// returns, with no restart; integrity_check is ok and the audit chain (one
// entry per request) verifies.
func TestDiskFullRefusedWithoutDamage(t *testing.T) {
	testfs.RequireRoot(t)
	ctx := context.Background()
	mnt := testfs.MountTmpfs(t, 16<<20) // room for the database and a full WAL (1,000 pages) once space returns
	path := filepath.Join(mnt, "appliance.db")
	s := openAt(t, path)
	if err := s.InsertKey(ctx, testKey("eth-dev", 1, time.Now())); err != nil {
		t.Fatal(err)
	}
	var before []Request
	for i := range 20 {
		r, _, err := s.CreateRequest(ctx, newReq("p", fmt.Sprint("before-", i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		before = append(before, r)
	}

	filler := fillUp(t, mnt)
	type outcome struct {
		idem string
		id   string
		err  error
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		wg       sync.WaitGroup
	)
	for w := range 16 {
		wg.Go(func() {
			for i := range 25 {
				idem := fmt.Sprintf("full-%d-%d", w, i)
				r, created, err := s.CreateRequest(ctx, newReq("p", idem), nil)
				if err == nil && !created {
					err = fmt.Errorf("not created: found %s", r.ID)
				}
				mu.Lock()
				outcomes = append(outcomes, outcome{idem, r.ID, err})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	var refused, kept int
	for _, o := range outcomes {
		if o.err == nil {
			kept++
			continue
		}
		refused++
		if !Unavailable(o.err) || sqliteCode(o.err) != sqlite3.ErrFull {
			t.Errorf("%s: %v (SQLite code %d): want SQLITE_FULL, classified Unavailable", o.idem, o.err, sqliteCode(o.err))
		}
	}
	t.Logf("disk full: %d writes refused, %d committed (WAL frames reused)", refused, kept)
	if refused == 0 {
		t.Fatal("no write was refused on a full filesystem")
	}
	if err := s.Probe(ctx); !Unavailable(err) {
		t.Fatalf("Probe on a full disk = %v, want an Unavailable error", err)
	}
	// Reads go on while the disk is full.
	for _, r := range before {
		if got, err := s.GetRequest(ctx, r.ID); err != nil || got.State != StateSigning {
			t.Fatalf("reading %s on a full disk: %+v, %v", r.ID, got, err)
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.Probe(ctx); err != nil {
		t.Fatalf("Probe once space returned: %v", err)
	}
	// A refused write kept nothing: its retry creates the request, and a
	// committed one replays.
	for _, o := range outcomes {
		r, created, err := s.CreateRequest(ctx, newReq("p", o.idem), nil)
		if err != nil {
			t.Fatalf("retry of %s: %v", o.idem, err)
		}
		if created != (o.err != nil) || (o.err == nil && r.ID != o.id) {
			t.Fatalf("retry of %s (first attempt: %v): created=%v id %s, first id %s", o.idem, o.err, created, r.ID, o.id)
		}
	}
	if n := count(t, s, StateSigning); n != len(before)+len(outcomes) {
		t.Fatalf("%d requests, want %d", n, len(before)+len(outcomes))
	}
	checkNoDamage(t, s, path, int64(len(before)+len(outcomes)))
}

// checkNoDamage runs integrity_check and verifies the audit chain, which
// must hold at least wantEntries entries.
func checkNoDamage(t *testing.T, s *Store, path string, wantEntries int64) {
	t.Helper()
	ctx := context.Background()
	if err := s.IntegrityCheck(ctx); err != nil {
		t.Fatal(err)
	}
	f, err := OpenAuditFile(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep, err := f.Verify(ctx, nil, nil)
	if err != nil {
		t.Fatalf("audit chain: %v", err)
	}
	if rep.Entries < wantEntries {
		t.Fatalf("audit chain has %d entries, want at least %d", rep.Entries, wantEntries)
	}
}

// TestReadOnlyFilesystemRefusedWithoutDamage: the filesystem under an open
// database turns read-only (ext4 errors=remount-ro after an error). Every
// write is refused with an error classified Unavailable, the probe fails,
// reads go on; after the runbook (stop, unmount, e2fsck, mount) the database
// opens, integrity_check is ok, every committed request is there and the
// audit chain verifies.
func TestReadOnlyFilesystemRefusedWithoutDamage(t *testing.T) {
	testfs.RequireRoot(t)
	ctx := context.Background()
	fs := testfs.NewExt4(t, 32<<20)
	path := filepath.Join(fs.Dir, "appliance.db")
	s, err := Open(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if err := s.InsertKey(ctx, testKey("eth-dev", 1, time.Now())); err != nil {
		t.Fatal(err)
	}
	var committed []Request
	for i := range 20 {
		r, _, err := s.CreateRequest(ctx, newReq("p", fmt.Sprint("before-", i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		committed = append(committed, r)
	}

	fs.Fail()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Go(func() {
			for i := range 8 {
				_, _, err := s.CreateRequest(ctx, newReq("p", fmt.Sprintf("ro-%d-%d", w, i)), nil)
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	codes := map[string]int{}
	for err := range errs {
		if err == nil {
			t.Fatal("a write committed on a read-only filesystem")
		}
		var se sqlite3.Error
		errors.As(err, &se)
		codes[fmt.Sprintf("%d/%d", se.Code, se.ExtendedCode)]++
		if !Unavailable(err) {
			t.Errorf("write on a read-only filesystem: %v (SQLite %d/%d), not classified Unavailable", err, se.Code, se.ExtendedCode)
		}
	}
	t.Logf("read-only filesystem: refused writes by SQLite code/extended code: %v", codes)
	if err := s.Probe(ctx); !Unavailable(err) {
		t.Fatalf("Probe on a read-only filesystem = %v, want an Unavailable error", err)
	}
	for _, r := range committed {
		if _, err := s.GetRequest(ctx, r.ID); err != nil {
			t.Fatalf("reading %s on a read-only filesystem: %v", r.ID, err)
		}
	}

	// The runbook: stop the appliance (close the database), repair, start.
	if err := s.Close(); err != nil {
		t.Logf("closing on a read-only filesystem: %v", err)
	}
	t.Logf("e2fsck: %s", strings.TrimSpace(fs.Repair()))
	s2 := openAt(t, path)
	if err := s2.QuickCheck(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range committed {
		got, err := s2.GetRequest(ctx, r.ID)
		if err != nil || got.PayloadHash == nil {
			t.Fatalf("committed request %s after the repair: %+v, %v", r.ID, got, err)
		}
	}
	if n := count(t, s2, StateSigning); n != len(committed) {
		t.Fatalf("%d requests after the repair, want the %d committed", n, len(committed))
	}
	if _, created, err := s2.CreateRequest(ctx, newReq("p", "ro-0-0"), nil); err != nil || !created {
		t.Fatalf("a refused request retried after the repair: created=%v, %v", created, err)
	}
	checkNoDamage(t, s2, path, int64(len(committed)+1))
}

// TestUnavailableClassification: only environmental failures are
// "unavailable"; what the caller asked wrongly, and corruption, are not.
func TestUnavailableClassification(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{sqlite3.Error{Code: sqlite3.ErrFull}, true},
		{fmt.Errorf("store: commit: %w", sqlite3.Error{Code: sqlite3.ErrIoErr, ExtendedCode: sqlite3.ErrIoErrWrite}), true},
		{sqlite3.Error{Code: sqlite3.ErrReadonly}, true},
		{sqlite3.Error{Code: sqlite3.ErrCantOpen}, true},
		{sqlite3.Error{Code: sqlite3.ErrBusy}, true},
		{sqlite3.Error{Code: sqlite3.ErrCorrupt}, false},
		{sqlite3.Error{Code: sqlite3.ErrNotADB}, false},
		{sqlite3.Error{Code: sqlite3.ErrConstraint, ExtendedCode: sqlite3.ErrConstraintUnique}, false},
		{fmt.Errorf("x: %w", ErrConflict), false},
		{ErrNotFound, false},
		{context.Canceled, false},
		{nil, false},
	} {
		if got := Unavailable(c.err); got != c.want {
			t.Errorf("Unavailable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
