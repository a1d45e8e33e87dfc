package store

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

// archivable opens a store whose audit key is registered (entry 1), with
// entries up to 50 and checkpoints at 20 and 40, and returns it with its
// path and an archive directory beside it. signCheckpoint dates checkpoint
// n at n µs after the epoch: cutoff(n) archives through it.
func archivable(t *testing.T) (*Store, string, string, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, path := openTest(t)
	pub, err := key.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterAuditKey(context.Background(), AuditKey{KeyID: audit.KeyID(&key.PublicKey), HSMID: []byte{1}, PublicKey: pub}); err != nil {
		t.Fatal(err)
	}
	grow(t, s, key, 50, 20, 40)
	return s, path, filepath.Join(filepath.Dir(path), "audit-archive"), key
}

// grow appends entries up to seq upTo, checkpointing the given ones.
func grow(t *testing.T, s *Store, key *ecdsa.PrivateKey, upTo int64, checkpoints ...int64) {
	t.Helper()
	ctx := context.Background()
	for {
		seq, h, err := s.AuditHead(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range checkpoints {
			if c == seq {
				if err := s.AddCheckpoint(ctx, signCheckpoint(t, key, seq, h)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if seq >= upTo {
			return
		}
		if err := s.RecordAudit(ctx, audit.Record{Kind: "test", Principal: "p", Detail: fmt.Sprintf("entry %d", seq+1)}); err != nil {
			t.Fatal(err)
		}
	}
}

func cutoff(seq int64) time.Time { return time.Unix(0, seq*1000) }

// firstSeq is where the chain in the database starts.
func firstSeq(t *testing.T, s *Store) int64 {
	t.Helper()
	first, _, err := archiveBounds(context.Background(), s.r)
	if err != nil {
		t.Fatal(err)
	}
	return first
}

// readExport returns the entries and checkpoints of an export file.
func readExport(t *testing.T, path string) ([]audit.Entry, []audit.Checkpoint) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var es []audit.Entry
	var cps []audit.Checkpoint
	err = audit.ScanExport(f, func(e *audit.Entry) error { es = append(es, *e); return nil },
		func(c *audit.Checkpoint) error { cps = append(cps, *c); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return es, cps
}

func verifyExportFile(t *testing.T, path string, key *ecdsa.PublicKey) (audit.Report, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return audit.VerifyExport(f, []*ecdsa.PublicKey{key}, nil)
}

// lastArchived is the newest audit_archived entry of the database.
func lastArchived(t *testing.T, s *Store) audit.Archived {
	t.Helper()
	var a audit.Archived
	err := s.AuditEntries(context.Background(), 0, 0, func(e *audit.Entry) error {
		if e.Kind == audit.KindArchived {
			var err error
			a, err = audit.ParseArchived(e)
			return err
		}
		return nil
	})
	if err != nil || a.Through == 0 {
		t.Fatalf("no audit_archived entry (%v)", err)
	}
	return a
}

// TestArchiveAuditSegments: a pass archives the entries up to the newest
// checkpoint old enough and deletes all but that checkpointed entry; the
// database then verifies from it (its audit_archived entry says why), the
// file verifies on its own, and a later pass continues from there: each
// segment starts with the entry the previous one ends with, and the
// database with the entry the last segment ends with.
func TestArchiveAuditSegments(t *testing.T) {
	s, path, dir, key := archivable(t)
	ctx := context.Background()
	if res, err := s.ArchiveAudit(ctx, dir, cutoff(19)); err != nil || res != (ArchiveResult{}) {
		t.Fatalf("no checkpoint old enough: %+v %v", res, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("archive directory made for nothing: %v", err)
	}
	res, err := s.ArchiveAudit(ctx, dir, cutoff(39))
	want := ArchiveResult{File: filepath.Join(dir, "audit-000000000001-000000000020.jsonl"), From: 1, Through: 20, Deleted: 19}
	if err != nil || res != want {
		t.Fatalf("first pass: %+v %v, want %+v", res, err, want)
	}
	if mode(t, res.File) != 0o600 || mode(t, dir) != 0o700 {
		t.Fatalf("modes: file %v, directory %v", mode(t, res.File), mode(t, dir))
	}
	r, err := verifyFile(t, path, &key.PublicKey, nil)
	if err != nil || r.FirstSeq != 20 || r.HeadSeq != 51 || r.Entries != 32 || r.LastCheckpointSeq != 40 || r.Unprotected != 11 {
		t.Fatalf("database after the first pass: %+v %v", r, err)
	}
	seg1, err := verifyExportFile(t, res.File, &key.PublicKey)
	if err != nil || seg1.FirstSeq != 1 || seg1.HeadSeq != 20 || seg1.Entries != 20 || seg1.Checkpoints != 1 || seg1.Unprotected != 0 {
		t.Fatalf("first archive: %+v %v", seg1, err)
	}
	raw, err := os.ReadFile(res.File)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	h20, err := s.AuditEntryHash(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	if a := lastArchived(t, s); a.From != 1 || a.Through != 20 || !bytes.Equal(a.ThroughHash, h20) || a.File != filepath.Base(res.File) ||
		a.SHA256 != hex.EncodeToString(sum[:]) || a.Size != int64(len(raw)) {
		t.Fatalf("audit_archived entry: %+v", a)
	}
	// Nothing new is old enough: nothing happens.
	if res, err := s.ArchiveAudit(ctx, dir, cutoff(39)); err != nil || res != (ArchiveResult{}) {
		t.Fatalf("pass with nothing to do: %+v %v", res, err)
	}

	grow(t, s, key, 60)
	res2, err := s.ArchiveAudit(ctx, dir, cutoff(1000))
	want = ArchiveResult{File: filepath.Join(dir, "audit-000000000020-000000000040.jsonl"), From: 20, Through: 40, Deleted: 20}
	if err != nil || res2 != want {
		t.Fatalf("second pass: %+v %v, want %+v", res2, err, want)
	}
	seg2, err := verifyExportFile(t, res2.File, &key.PublicKey)
	if err != nil || seg2.FirstSeq != 20 || seg2.HeadSeq != 40 || seg2.Checkpoints != 2 {
		t.Fatalf("second archive: %+v %v", seg2, err)
	}
	r, err = verifyFile(t, path, &key.PublicKey, nil)
	if err != nil || r.FirstSeq != 40 || r.HeadSeq != 61 || r.Entries != 22 {
		t.Fatalf("database after the second pass: %+v %v", r, err)
	}
	es1, _ := readExport(t, res.File)
	es2, _ := readExport(t, res2.File)
	h40, err := s.AuditEntryHash(ctx, 40)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(es1[len(es1)-1].Hash, es2[0].Hash) || es2[0].Seq != 20 || !bytes.Equal(es2[len(es2)-1].Hash, h40) {
		t.Fatal("the segments do not link")
	}
	// The second segment holds the first pass's audit_archived entry.
	if a := lastArchived(t, s); a.From != 20 || a.Through != 40 {
		t.Fatalf("audit_archived entry: %+v", a)
	}
	// An export of the archived database verifies from its first entry;
	// an anchor before it is a usage error, not tampering.
	var exp bytes.Buffer
	f, err := OpenAuditFile(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Export(ctx, &exp, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if r, err := audit.VerifyExport(bytes.NewReader(exp.Bytes()), []*ecdsa.PublicKey{&key.PublicKey}, nil); err != nil || r.FirstSeq != 40 {
		t.Fatalf("export of the archived database: %+v %v", r, err)
	}
	_, err = verifyFile(t, path, &key.PublicKey, map[int64][]byte{30: h40})
	var ae *audit.AnchorError
	if !errors.As(err, &ae) || errors.Is(err, audit.ErrTampered) || ae.First != 40 {
		t.Fatalf("anchor before the first entry: %v", err)
	}
}

// TestArchiveAuditTamperingDetected: entries deleted from a database
// without an archive record are named at the first entry left, also when
// the chain is cut at a checkpointed entry or an audit_archives row was
// added by hand so that the trigger let the deletion through; a pass then
// refuses to archive or delete anything. An entry changed inside an archive
// file is named like one changed in a database.
func TestArchiveAuditTamperingDetected(t *testing.T) {
	s, path, dir, key := archivable(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	drop := `DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;`
	cases := []struct {
		name    string
		sql     string
		wantSeq int64
	}{
		{"entries deleted", drop + `DELETE FROM events WHERE seq < 10`, 10},
		{"cut at a checkpointed entry", drop + `DELETE FROM events WHERE seq < 20`, 20},
		{"audit_archives row added by hand, triggers kept", `INSERT INTO audit_archives VALUES (20, 1, x'00', 'x', 'y', 0, 0);
			DELETE FROM events WHERE seq < 20`, 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := copyDB(t, path)
			db, err := sql.Open("sqlite3", p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(tc.sql); err != nil {
				t.Fatal(err)
			}
			db.Close()
			_, err = verifyFile(t, p, &key.PublicKey, nil)
			var be *audit.BadEntry
			if !errors.As(err, &be) || be.Seq != tc.wantSeq || !strings.Contains(err.Error(), "deleted without an archive record") {
				t.Fatalf("got %v, want entry %d named", err, tc.wantSeq)
			}
			s := openAt(t, p)
			d := filepath.Join(t.TempDir(), "archive")
			if res, err := s.ArchiveAudit(context.Background(), d, cutoff(1000)); !errors.Is(err, audit.ErrTampered) || res.Deleted != 0 {
				t.Fatalf("pass over a tampered database: %+v %v", res, err)
			}
			if first := firstSeq(t, s); first != tc.wantSeq {
				t.Fatalf("the pass moved the chain's start to %d", first)
			}
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("the pass wrote an archive")
			}
		})
	}

	t.Run("entry changed in an archive file", func(t *testing.T) {
		s := openAt(t, path)
		res, err := s.ArchiveAudit(context.Background(), dir, cutoff(20))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(res.File)
		if err != nil {
			t.Fatal(err)
		}
		edited := filepath.Join(t.TempDir(), "edited.jsonl")
		if err := os.WriteFile(edited, bytes.Replace(raw, []byte(`"entry 7"`), []byte(`"entry 7!"`), 1), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = verifyExportFile(t, edited, &key.PublicKey)
		var be *audit.BadEntry
		if !errors.As(err, &be) || be.Seq != 7 || !strings.Contains(err.Error(), "modified") {
			t.Fatalf("edited archive: %v", err)
		}
	})
}

// TestArchiveAuditInterruptedPasses: a pass that died after writing its
// file, or between two deleting batches, is finished by the next one; the
// database verifies meanwhile. Nothing is deleted while the recorded file
// is missing or not the one recorded, and a different file under an
// archive's name is never replaced.
func TestArchiveAuditInterruptedPasses(t *testing.T) {
	ctx := context.Background()
	t.Run("file written, not recorded", func(t *testing.T) {
		s, path, dir, key := archivable(t)
		name := filepath.Join(dir, archiveName(1, 20))
		// What a pass that died before its transaction leaves, and a
		// temporary file of one that died while writing.
		if err := s.writeArchiveFile(ctx, name, 1, 20); err != nil {
			t.Fatal(err)
		}
		left, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name+".tmp", []byte("half a file"), 0o600); err != nil {
			t.Fatal(err)
		}
		if r, err := verifyFile(t, path, &key.PublicKey, nil); err != nil || r.FirstSeq != 1 {
			t.Fatalf("nothing recorded, nothing deleted: %+v %v", r, err)
		}
		res, err := s.ArchiveAudit(ctx, dir, cutoff(20))
		if err != nil || res.File != name || res.Deleted != 19 {
			t.Fatalf("%+v %v", res, err)
		}
		if again, err := os.ReadFile(name); err != nil || !bytes.Equal(again, left) {
			t.Fatalf("the file written again differs (%v)", err)
		}
		if a := lastArchived(t, s); a.File != filepath.Base(name) {
			t.Fatalf("record %+v", a)
		}
		if _, err := os.Stat(name + ".tmp"); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("temporary file left")
		}
	})

	t.Run("another file under the name", func(t *testing.T) {
		s, path, dir, key := archivable(t)
		name := filepath.Join(dir, archiveName(1, 20))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		other := []byte("an archive of another history\n")
		if err := os.WriteFile(name, other, 0o600); err != nil {
			t.Fatal(err)
		}
		if res, err := s.ArchiveAudit(ctx, dir, cutoff(20)); !errors.Is(err, os.ErrExist) || res != (ArchiveResult{}) {
			t.Fatalf("%+v %v", res, err)
		}
		if raw, _ := os.ReadFile(name); !bytes.Equal(raw, other) {
			t.Fatal("the other file was replaced")
		}
		if r, err := verifyFile(t, path, &key.PublicKey, nil); err != nil || r.FirstSeq != 1 || r.HeadSeq != 50 {
			t.Fatalf("nothing recorded, nothing deleted: %+v %v", r, err)
		}
		if err := os.Rename(name, name+".other"); err != nil {
			t.Fatal(err)
		}
		if res, err := s.ArchiveAudit(ctx, dir, cutoff(20)); err != nil || res.Deleted != 19 {
			t.Fatalf("once it is moved away: %+v %v", res, err)
		}
	})

	t.Run("between batches", func(t *testing.T) {
		s, path, dir, key := archivable(t)
		a, err := s.writeArchive(ctx, dir, cutoff(20))
		if err != nil || a == nil {
			t.Fatal(a, err)
		}
		if n, err := s.deleteArchivedBatch(ctx, 5); err != nil || n != 5 {
			t.Fatalf("one batch: %d %v", n, err)
		}
		// The crash: the database verifies from entry 6, inside the archive.
		if r, err := verifyFile(t, path, &key.PublicKey, nil); err != nil || r.FirstSeq != 6 {
			t.Fatalf("part-way: %+v %v", r, err)
		}
		file := filepath.Join(dir, a.File)
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		// The file is gone, then another: nothing more is deleted.
		if err := os.Remove(file); err != nil {
			t.Fatal(err)
		}
		if res, err := s.ArchiveAudit(ctx, dir, cutoff(20)); err == nil || res.Deleted != 0 || firstSeq(t, s) != 6 {
			t.Fatalf("archive missing: %+v %v", res, err)
		}
		if err := os.WriteFile(file, append(raw, '\n'), 0o600); err != nil {
			t.Fatal(err)
		}
		if res, err := s.ArchiveAudit(ctx, dir, cutoff(20)); !errors.Is(err, audit.ErrTampered) || res.Deleted != 0 || firstSeq(t, s) != 6 {
			t.Fatalf("archive changed: %+v %v", res, err)
		}
		if err := os.WriteFile(file, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		res, err := s.ArchiveAudit(ctx, dir, cutoff(20))
		if err != nil || res != (ArchiveResult{Deleted: 14}) || firstSeq(t, s) != 20 {
			t.Fatalf("the next pass: %+v %v", res, err)
		}
		if r, err := verifyFile(t, path, &key.PublicKey, nil); err != nil || r.FirstSeq != 20 {
			t.Fatalf("finished: %+v %v", r, err)
		}
	})

	t.Run("batches and cancellation", func(t *testing.T) {
		s, _, dir, _ := archivable(t)
		if _, err := s.writeArchive(ctx, dir, cutoff(20)); err != nil {
			t.Fatal(err)
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		if n, err := s.deleteArchived(cancelled, 7, 0); !errors.Is(err, context.Canceled) || n != 0 || firstSeq(t, s) != 1 {
			t.Fatalf("cancelled: %d %v", n, err)
		}
		if n, err := s.deleteArchived(ctx, 7, time.Millisecond); err != nil || n != 19 || firstSeq(t, s) != 20 {
			t.Fatalf("three batches: %d %v", n, err)
		}
	})
}

// TestArchiveDeleteTrigger: the delete trigger lets only entries before the
// end of the newest recorded archive go; UPDATE stays refused everywhere,
// and audit_archives is append-only.
func TestArchiveDeleteTrigger(t *testing.T) {
	s, path, dir, _ := archivable(t)
	db, refused := appendOnly(t, path)
	refused(`DELETE FROM events WHERE seq = 1`)
	if _, err := s.writeArchive(context.Background(), dir, cutoff(20)); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DELETE FROM events WHERE seq = 20`, `DELETE FROM events WHERE seq = 45`, `DELETE FROM events`,
		`UPDATE events SET detail = 'x' WHERE seq = 3`, `UPDATE events SET detail = 'x' WHERE seq = 30`,
		`UPDATE audit_archives SET through_seq = 45`, `DELETE FROM audit_archives`} {
		refused(q)
	}
	if _, err := db.Exec(`DELETE FROM events WHERE seq = 19`); err != nil {
		t.Fatalf("an archived entry: %v", err)
	}
}

// appendOnly opens the database file as any SQL client would, and returns
// it with a check that a statement is refused by an append-only trigger.
func appendOnly(t *testing.T, path string) (*sql.DB, func(q string)) {
	t.Helper()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, func(q string) {
		t.Helper()
		if _, err := db.Exec(q); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestArchiveKeepsLastConfigSHA: the configuration hash the start compares
// with survives the archiving of the entries that recorded it: the
// audit_archived entry carries it.
func TestArchiveKeepsLastConfigSHA(t *testing.T) {
	s, _, dir, key := archivable(t)
	ctx := context.Background()
	if sha, err := s.LastConfigSHA(ctx); err != nil || sha != "" {
		t.Fatalf("before any start: %q %v", sha, err)
	}
	// A start at 51; entries, and a checkpoint at 60 that archives it.
	if err := s.RecordAudit(ctx, audit.Record{Kind: "start", Fields: map[string]string{"config_sha256": "c0ffee"}}); err != nil {
		t.Fatal(err)
	}
	grow(t, s, key, 60, 60)
	if _, err := s.ArchiveAudit(ctx, dir, cutoff(1000)); err != nil {
		t.Fatal(err)
	}
	if first := firstSeq(t, s); first != 60 {
		t.Fatalf("first entry %d", first)
	}
	if sha, err := s.LastConfigSHA(ctx); err != nil || sha != "c0ffee" {
		t.Fatalf("after archiving the start: %q %v", sha, err)
	}
	if err := s.RecordAudit(ctx, audit.Record{Kind: "config_reload", Fields: map[string]string{"config_sha256": "beef"}}); err != nil {
		t.Fatal(err)
	}
	if sha, err := s.LastConfigSHA(ctx); err != nil || sha != "beef" {
		t.Fatalf("after a reload: %q %v", sha, err)
	}
}

// TestVerifyInSmallCheckpointBatches runs the database verification tests
// with Verify reading one checkpoint at a time, so that every one is given,
// compared and let go on its own (kept only when an archive record names it).
func TestVerifyInSmallCheckpointBatches(t *testing.T) {
	defer func(n int) { verifyCheckpointBatch = n }(verifyCheckpointBatch)
	verifyCheckpointBatch = 1
	t.Run("tampering", TestAuditTamperingInTheDatabaseFile)
	t.Run("segments", TestArchiveAuditSegments)
	t.Run("archive tampering", TestArchiveAuditTamperingDetected)
	t.Run("interrupted", TestArchiveAuditInterruptedPasses)
}

// TestArchiveAuditBoundsEachFile: a pass archives at most about the
// bounds' entries and checkpoints after its first entry, up to the
// newest old enough checkpoint within both; without one inside them, up to
// the first past them. Passes run until one writes nothing, and the files
// link.
func TestArchiveAuditBoundsEachFile(t *testing.T) {
	s, path, dir, key := archivable(t) // checkpoints at 20 and 40, head 50
	grow(t, s, key, 100, 50, 55, 60, 90)
	ctx := context.Background()
	pass := func(entries, checkpoints int64, from, through int64) {
		t.Helper()
		s.SetArchiveBounds(ArchiveBounds{Entries: entries, Checkpoints: checkpoints})
		res, err := s.ArchiveAudit(ctx, dir, cutoff(1000))
		if err != nil || res.From != from || res.Through != through {
			t.Fatalf("bounds %d entries, %d checkpoints: %+v %v; want %d to %d", entries, checkpoints, res, err, from, through)
		}
		if r, err := verifyExportFile(t, res.File, &key.PublicKey); err != nil || r.FirstSeq != from || r.HeadSeq != through {
			t.Fatalf("archive %d to %d: %+v %v", from, through, r, err)
		}
	}
	pass(25, 100, 1, 20) // 40 is past 1+25
	pass(100, 2, 20, 50) // the second checkpoint after 20
	pass(3, 100, 50, 55) // none within 51..53: the first past them
	pass(100, 100, 55, 90)
	if res, err := s.ArchiveAudit(ctx, dir, cutoff(1000)); err != nil || res.File != "" {
		t.Fatalf("nothing left to archive: %+v %v", res, err)
	}
	if r, err := verifyFile(t, path, &key.PublicKey, nil); err != nil || r.FirstSeq != 90 {
		t.Fatalf("database after the passes: %+v %v", r, err)
	}
}
