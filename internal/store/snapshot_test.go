package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// maxEventSeq is the highest committed event seq, read through the read pool.
func maxEventSeq(t *testing.T, s *Store) int64 {
	t.Helper()
	var seq int64
	if err := s.r.QueryRowContext(context.Background(), `SELECT COALESCE(MAX(seq), 0) FROM events`).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	return seq
}

// appendPair commits two events in one transaction, so a consistent copy
// holds an even number of them: both or neither.
func appendPair(ctx context.Context, s *Store, i int) error {
	return s.WriteTx(ctx, func(tx *Tx) error {
		detail := fmt.Sprintf("%d %s", i, strings.Repeat("x", 200))
		if err := AppendEvent(ctx, tx, "snapshot.test", "a", detail); err != nil {
			return err
		}
		return AppendEvent(ctx, tx, "snapshot.test", "b", detail)
	})
}

func TestSnapshotConsistentUnderWrites(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	for i := range 2000 { // a few MB, so the copy takes measurable time
		if err := appendPair(ctx, s, i); err != nil {
			t.Fatal(err)
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written atomic.Int64
	var writeErr error
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := appendPair(ctx, s, i); err != nil {
				writeErr = err
				return
			}
			written.Add(1)
		}
	})
	defer func() {
		close(stop)
		wg.Wait()
		if writeErr != nil {
			t.Errorf("concurrent writer: %v", writeErr)
		}
	}()

	dir := t.TempDir()
	for round := range 3 {
		before := maxEventSeq(t, s)
		wBefore := written.Load()
		dest := filepath.Join(dir, fmt.Sprintf("snap-%d.db", round))
		if err := s.Snapshot(ctx, dest); err != nil {
			t.Fatalf("round %d: Snapshot: %v", round, err)
		}
		after := maxEventSeq(t, s)
		t.Logf("round %d: live seq %d..%d, %d commits while Snapshot ran", round, before, after, written.Load()-wBefore)

		if m := mode(t, dest); m != 0o600 {
			t.Errorf("snapshot mode %v, want 0600", m)
		}
		for _, suffix := range snapshotSidecars {
			if _, err := os.Lstat(dest + suffix); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("snapshot left %s behind (%v): the copy should be one file", suffix, err)
			}
		}

		// Bytes 18 and 19 of the header are the file format versions: 1 is
		// a rollback journal, 2 WAL. The copy must be self-contained.
		if hdr, err := os.ReadFile(dest); err != nil || len(hdr) < 20 || hdr[18] != 1 || hdr[19] != 1 {
			t.Errorf("snapshot is not in rollback-journal mode (%v)", err)
		}

		snap := openAt(t, dest)
		if err := snap.QuickCheck(ctx); err != nil {
			t.Fatalf("round %d: snapshot quick_check: %v", round, err)
		}
		events, err := snap.ListEvents(ctx, 0, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range events {
			if e.Seq != int64(i+1) {
				t.Fatalf("round %d: event %d has seq %d: a row is missing in the middle", round, i, e.Seq)
			}
		}
		got := int64(len(events))
		if got%2 != 0 {
			t.Errorf("round %d: snapshot holds %d events: half of a transaction was copied", round, got)
		}
		if got < before || got > after {
			t.Errorf("round %d: snapshot holds %d events; live database had %d before and %d after", round, got, before, after)
		}
		if err := snap.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if written.Load() == 0 {
		t.Error("the concurrent writer never committed: the test proved nothing")
	}
}

func TestSnapshotRefusesExistingDest(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	dest := filepath.Join(t.TempDir(), "existing.db")
	if err := os.WriteFile(dest, []byte("previous good backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := s.Snapshot(ctx, dest)
	if !errors.Is(err, os.ErrExist) {
		t.Fatalf("Snapshot over an existing file: %v, want an error wrapping os.ErrExist", err)
	}
	if b, _ := os.ReadFile(dest); string(b) != "previous good backup" {
		t.Fatalf("existing file was modified: %q", b)
	}

	// A symlink at dest is refused too, rather than followed.
	link := filepath.Join(t.TempDir(), "link.db")
	if err := os.Symlink(filepath.Join(t.TempDir(), "target.db"), link); err != nil {
		t.Fatal(err)
	}
	if err := s.Snapshot(ctx, link); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Snapshot onto a dangling symlink: %v, want os.ErrExist", err)
	}
}

func TestSnapshotRefusesStaleSidecar(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	for _, suffix := range snapshotSidecars {
		dest := filepath.Join(t.TempDir(), "snap.db")
		if err := os.WriteFile(dest+suffix, []byte("stale"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := s.Snapshot(ctx, dest); !errors.Is(err, os.ErrExist) {
			t.Errorf("stale %s: Snapshot = %v, want os.ErrExist", suffix, err)
		}
		if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale %s: destination was created anyway", suffix)
		}
	}
}

func TestSnapshotUnwritableDestination(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	dir := t.TempDir()

	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{
		filepath.Join(notDir, "snap.db"),         // parent is a regular file
		filepath.Join(dir, "missing", "snap.db"), // parent does not exist
		"",
	} {
		if err := s.Snapshot(ctx, dest); err == nil {
			t.Errorf("Snapshot(%q) succeeded", dest)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Error("Snapshot created a missing parent directory")
	}

	if os.Geteuid() == 0 {
		t.Log("running as root: skipping the read-only directory case (root ignores permissions)")
		return
	}
	ro := filepath.Join(dir, "ro")
	if err := os.Mkdir(ro, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(ro, 0o700) })
	if err := s.Snapshot(ctx, filepath.Join(ro, "snap.db")); !errors.Is(err, os.ErrPermission) {
		t.Errorf("Snapshot into a read-only directory: %v, want os.ErrPermission", err)
	}
}

func TestSnapshotRemovesPartialFileOnError(t *testing.T) {
	s, _ := openTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // fails after the file is created, when the source is acquired
	dest := filepath.Join(t.TempDir(), "snap.db")
	if err := s.Snapshot(ctx, dest); !errors.Is(err, context.Canceled) {
		t.Fatalf("Snapshot with a cancelled context: %v, want context.Canceled", err)
	}
	for _, p := range []string{dest, dest + "-journal", dest + "-wal", dest + "-shm"} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind after a failed snapshot", filepath.Base(p))
		}
	}
}
