package store

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"database/sql"
	"io"
	"math"
	"testing"

	"github.com/custodysigner/appliance/internal/audit"
)

// exportAllAtOnce is exportAudit as it was before it read checkpoints in
// batches: all of the range's in memory, each written after its entry.
func exportAllAtOnce(ctx context.Context, q rowsQueryer, w io.Writer, after, through int64) (int64, error) {
	cps, err := readCheckpointsIn(ctx, q, after, through)
	if err != nil {
		return 0, err
	}
	bySeq := make(map[int64]*audit.Checkpoint, len(cps))
	for i := range cps {
		bySeq[cps[i].Seq] = &cps[i]
	}
	x := audit.NewExporter(w)
	var n int64
	err = scanAuditEntries(ctx, q, after, through, 0, func(e *audit.Entry) error {
		if err := x.Entry(e); err != nil {
			return err
		}
		n++
		if c := bySeq[e.Seq]; c != nil {
			return x.Checkpoint(c)
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	return n, x.Flush()
}

// exportIn runs exportAudit reading checkpoints batch at a time.
func exportIn(t *testing.T, q rowsQueryer, batch int, after, through int64) ([]byte, int64) {
	t.Helper()
	defer func(n int) { exportCheckpointBatch = n }(exportCheckpointBatch)
	exportCheckpointBatch = batch
	var buf bytes.Buffer
	n, err := exportAudit(context.Background(), q, &buf, after, through)
	if err != nil {
		t.Fatalf("batch %d, entries %d to %d: %v", batch, after+1, through, err)
	}
	return buf.Bytes(), n
}

// TestExportCheckpointBatches: exportAudit writes the same bytes whether
// it reads the checkpoints one, three or 4096 at a time, and the same as
// it did with all of them in memory: for ranges whose first and last
// entries are checkpointed, with checkpoints before and beyond the range
// (never written), through the read pool (as the archiver) and in a read
// transaction (as appliance audit export); and for a database whose first
// entries are archived, whose checkpoints before its first entry are not
// written.
func TestExportCheckpointBatches(t *testing.T) {
	s, path, dir, key := archivable(t) // checkpoints at 20 and 40, head 50
	grow(t, s, key, 120, 50, 51, 52, 53, 55, 60, 61, 70, 79, 80, 81, 90, 99, 100, 101, 110, 119, 120)
	ctx := context.Background()
	ranges := [][2]int64{
		{0, math.MaxInt64}, // the whole chain: entry 1 to the head, checkpointed
		{50, 80},           // 51 and 80 checkpointed, 50 and 81 outside
		{20, 40},           // the last checkpointed, 20 outside
		{19, 20},           // one entry, checkpointed
		{53, 59},           // 54, not checkpointed, to 59
		{55, 59},           // no checkpoint in the range, 55 before it
		{99, 120},          // up to the head
		{100, 200},         // past the head
		{120, math.MaxInt64},
		{200, 300}, // nothing
	}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	check := func(name string, q rowsQueryer) {
		t.Helper()
		for _, r := range ranges {
			var want bytes.Buffer
			wantN, err := exportAllAtOnce(ctx, q, &want, r[0], r[1])
			if err != nil {
				t.Fatal(err)
			}
			for _, batch := range []int{1, 3, 4096} {
				got, n := exportIn(t, q, batch, r[0], r[1])
				if n != wantN || !bytes.Equal(got, want.Bytes()) {
					t.Fatalf("%s, entries after %d up to %d, batch %d: %d entries, %d bytes; want %d, %d bytes:\n%s\nwant:\n%s",
						name, r[0], r[1], batch, n, len(got), wantN, want.Len(), got, want.Bytes())
				}
			}
		}
	}
	check("read pool", s.r)
	check("read transaction", tx)

	// The whole chain's export holds every checkpoint once, and verifies.
	whole, _ := exportIn(t, s.r, 3, 0, math.MaxInt64)
	var cps int
	if err := audit.ScanExport(bytes.NewReader(whole), nil, func(*audit.Checkpoint) error { cps++; return nil }); err != nil || cps != 20 {
		t.Fatalf("%d checkpoints exported (%v), want 20", cps, err)
	}
	if r, err := audit.VerifyExport(bytes.NewReader(whole), []*ecdsa.PublicKey{&key.PublicKey}, nil); err != nil || r.Checkpoints != 20 || r.HeadSeq != 120 {
		t.Fatalf("whole chain: %+v %v", r, err)
	}

	// Archived up to 80: the database starts there, and still holds the
	// checkpoints before it, which an export from 0 passes over.
	if _, err := s.ArchiveAudit(ctx, dir, cutoff(80)); err != nil {
		t.Fatal(err)
	}
	if first := firstSeq(t, s); first != 80 {
		t.Fatalf("first entry %d", first)
	}
	ranges = [][2]int64{{0, math.MaxInt64}, {0, 100}, {79, 80}, {80, math.MaxInt64}}
	check("archived database", s.r)

	// appliance audit export: AuditFile.Export, the same bytes.
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if _, err := exportAllAtOnce(ctx, s.r, &want, 0, math.MaxInt64); err != nil {
		t.Fatal(err)
	}
	f, err := OpenAuditFile(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	defer func(n int) { exportCheckpointBatch = n }(exportCheckpointBatch)
	exportCheckpointBatch = 1
	var got bytes.Buffer
	if n, err := f.Export(ctx, &got, 0); err != nil || !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("AuditFile.Export: %d entries, %v:\n%s\nwant:\n%s", n, err, got.Bytes(), want.Bytes())
	}
	if r, err := audit.VerifyExport(bytes.NewReader(got.Bytes()), []*ecdsa.PublicKey{&key.PublicKey}, nil); err != nil || r.FirstSeq != 80 {
		t.Fatalf("archived database's export: %+v %v", r, err)
	}

	// Entries deleted by hand (the trigger dropped), checkpointed ones
	// among them: the checkpoints of the entries left are written all
	// the same, for the verifier to compare.
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`DROP TRIGGER events_append_only_delete; DELETE FROM events WHERE seq IN (99, 100, 110)`); err != nil {
		t.Fatal(err)
	}
	ranges = [][2]int64{{0, math.MaxInt64}, {90, 120}, {98, 101}, {99, 101}}
	check("entries deleted", s.r)
}
