package store

import (
	"context"
	"errors"
	"testing"
)

// checkpointSeqs lists the checkpoints in the database, ascending.
func checkpointSeqs(t *testing.T, s *Store) []int64 {
	t.Helper()
	cps, err := s.Checkpoints(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int64, 0, len(cps))
	for _, c := range cps {
		out = append(out, c.Seq)
	}
	return out
}

func pruneCheckpoints(t *testing.T, s *Store, keep int64, limit int) int64 {
	t.Helper()
	var n int64
	err := s.WriteTx(context.Background(), func(tx *Tx) error {
		var err error
		n, err = PruneArchivedCheckpointsTx(context.Background(), tx, keep, limit)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPruneArchivedCheckpoints: once entries are archived and deleted, the
// checkpoints before the chain's first entry go, oldest first, in batches,
// all but the one the caller keeps (the token's head); the checkpoint of
// the first entry and every later one stay; the database and the archive
// files still verify, and a pass with nothing archived deletes nothing.
func TestPruneArchivedCheckpoints(t *testing.T) {
	s, path, dir, key := archivable(t) // checkpoints at 20 and 40, head 50
	grow(t, s, key, 100, 60, 70, 90)
	ctx := context.Background()
	if n := pruneCheckpoints(t, s, 0, 100); n != 0 {
		t.Fatalf("nothing archived yet, %d checkpoints deleted", n)
	}
	res, err := s.ArchiveAudit(ctx, dir, cutoff(70))
	if err != nil || res.Through != 70 {
		t.Fatalf("archive: %+v %v", res, err)
	}
	if got := checkpointSeqs(t, s); len(got) != 5 {
		t.Fatalf("before pruning: %v", got)
	}
	// Keep 40 (the token's head, archived); batches of 1.
	if n := pruneCheckpoints(t, s, 40, 1); n != 1 {
		t.Fatalf("first batch deleted %d", n)
	}
	if got := checkpointSeqs(t, s); !equalSeqs(got, []int64{40, 60, 70, 90}) {
		t.Fatalf("after a batch of 1: %v", got)
	}
	if n := pruneCheckpoints(t, s, 40, 1); n != 1 {
		t.Fatalf("second batch deleted %d", n)
	}
	if n := pruneCheckpoints(t, s, 40, 1); n != 0 {
		t.Fatalf("third batch deleted %d", n)
	}
	if got := checkpointSeqs(t, s); !equalSeqs(got, []int64{40, 70, 90}) {
		t.Fatalf("after pruning: %v", got)
	}
	// The kept head still stands in for its archived entry at unseal.
	if h, first, err := s.ArchivedCheckpoint(ctx, 40); err != nil || first != 70 || len(h) == 0 {
		t.Fatalf("kept head: %x %d %v", h, first, err)
	}
	if _, _, err := s.ArchivedCheckpoint(ctx, 60); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a pruned head: %v", err)
	}
	if r, err := verifyFile(t, path, &key.PublicKey, nil); err != nil || r.FirstSeq != 70 || r.Checkpoints != 3 {
		t.Fatalf("database after pruning: %+v %v", r, err)
	}
	if r, err := verifyExportFile(t, res.File, &key.PublicKey); err != nil || r.Checkpoints != 4 {
		t.Fatalf("the archive keeps its own checkpoints: %+v %v", r, err)
	}
	// A later archive moves the bound; nothing is kept (0 is no seq).
	if res, err := s.ArchiveAudit(ctx, dir, cutoff(90)); err != nil || res.Through != 90 {
		t.Fatalf("second archive: %+v %v", res, err)
	}
	if n := pruneCheckpoints(t, s, 0, 100); n != 2 {
		t.Fatalf("after the second archive deleted %d", n)
	}
	if got := checkpointSeqs(t, s); !equalSeqs(got, []int64{90}) {
		t.Fatalf("after the second archive: %v", got)
	}
	if r, err := verifyFile(t, path, &key.PublicKey, nil); err != nil || r.FirstSeq != 90 {
		t.Fatalf("database after the second pruning: %+v %v", r, err)
	}
	if _, err := PruneArchivedCheckpointsTx(ctx, nil, 0, 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("limit 0: %v", err)
	}
}

// TestCheckpointDeleteTrigger: any SQL client may delete only checkpoints
// of archived entries that left the chain; the checkpoint of the first
// entry, later ones, and all of them before any archive stay, and UPDATE
// stays refused.
func TestCheckpointDeleteTrigger(t *testing.T) {
	s, path, dir, key := archivable(t)
	grow(t, s, key, 70, 60)
	db, refused := appendOnly(t, path)
	refused(`DELETE FROM audit_checkpoints WHERE seq = 20`) // nothing archived
	if _, err := s.writeArchive(context.Background(), dir, cutoff(40)); err != nil {
		t.Fatal(err)
	}
	refused(`DELETE FROM audit_checkpoints WHERE seq = 20`) // archived, its entry still there
	if _, err := s.deleteArchived(context.Background(), 100, 0); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DELETE FROM audit_checkpoints WHERE seq = 40`, `DELETE FROM audit_checkpoints WHERE seq = 60`,
		`DELETE FROM audit_checkpoints`, `UPDATE audit_checkpoints SET at = 0 WHERE seq = 20`} {
		refused(q)
	}
	if _, err := db.Exec(`DELETE FROM audit_checkpoints WHERE seq = 20`); err != nil {
		t.Fatalf("the checkpoint of an archived entry: %v", err)
	}
}

func equalSeqs(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
