package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/store"
)

// archivedDB writes a database of 30 entries (the first registers the
// audit key), checkpoints at 10 and 20 signed by key, archived through 10:
// it starts at entry 10. It returns the database, the archive and the
// audit public key's PEM file.
func archivedDB(t *testing.T) (db, archive, pubFile string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db = filepath.Join(dir, "appliance.db")
	s, err := store.Open(ctx, db, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := key.PublicKey.Bytes()
	if err := s.RegisterAuditKey(ctx, store.AuditKey{KeyID: audit.KeyID(&key.PublicKey), HSMID: []byte{1}, PublicKey: raw}); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 30; i++ {
		if err := s.RecordEvent(ctx, "test", "p", fmt.Sprint("entry ", i)); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			seq, h, err := s.AuditHead(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c := audit.Checkpoint{Seq: seq, Hash: h, At: seq, KeyID: audit.KeyID(&key.PublicKey)}
			r, sg, err := ecdsa.Sign(rand.Reader, key, c.Digest())
			if err != nil {
				t.Fatal(err)
			}
			c.Signature = append(r.FillBytes(make([]byte, 32)), sg.FillBytes(make([]byte, 32))...)
			if err := s.AddCheckpoint(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
	}
	res, err := s.ArchiveAudit(ctx, filepath.Join(dir, "audit-archive"), time.Unix(0, 15))
	if err != nil || res.Through != 10 {
		t.Fatalf("%+v %v", res, err)
	}
	pemKey, err := audit.MarshalPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubFile = filepath.Join(dir, "audit.pub")
	if err := os.WriteFile(pubFile, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	return db, res.File, pubFile
}

// TestAuditVerifyArchived: `audit verify` on an archived database and on
// its archive reports first_seq and says where the entries before it are;
// an anchor before first_seq is a usage error, a deletion without an
// archive record exit 4; `audit export --after` of the database verifies.
func TestAuditVerifyArchived(t *testing.T) {
	db, archive, pub := archivedDB(t)
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := auditCmd(args, &out)
		return out.String(), err
	}
	report := func(out string) audit.Report {
		t.Helper()
		var r audit.Report
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &r); err != nil {
			t.Fatalf("%v in %s", err, out)
		}
		return r
	}
	out, err := run("verify", "--db", db, "--pubkey", pub)
	if err != nil || !strings.Contains(out, "audit chain OK: 22 entries, first 10, head 31") ||
		!strings.Contains(out, "entries 1 to 9 are archived") || report(out).FirstSeq != 10 || !strings.Contains(out, `"first_seq": 10`) {
		t.Fatalf("verify --db: %v\n%s", err, out)
	}
	out, err = run("verify", "--export", archive, "--pubkey", pub)
	if err != nil || report(out).FirstSeq != 1 || report(out).HeadSeq != 10 || strings.Contains(out, "entries 1 to") {
		t.Fatalf("verify --export (the archive): %v\n%s", err, out)
	}
	exp := filepath.Join(t.TempDir(), "after.jsonl")
	if _, err := run("export", "--db", db, "--after", "19", "--out", exp); err != nil {
		t.Fatal(err)
	}
	out, err = run("verify", "--export", exp, "--pubkey", pub)
	if err != nil || report(out).FirstSeq != 20 || !strings.Contains(out, "entries 1 to 19 are not in this export") {
		t.Fatalf("verify --export (after 19, a checkpoint): %v\n%s", err, out)
	}

	anchor := "5:" + strings.Repeat("ab", 32)
	_, err = run("verify", "--db", db, "--pubkey", pub, "--anchor", anchor)
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "anchor 5 is before the first retained entry 10: verify the archive that holds it") {
		t.Fatalf("anchor before the first entry: %v", err)
	}
	if _, err := run("verify", "--db", db, "--pubkey", pub, "--anchor", "0:"+strings.Repeat("ab", 32)); !errors.As(err, &ue) {
		t.Fatalf("anchor 0: %v", err)
	}
	f, _ := os.Open(archive)
	var h10 string
	_ = audit.ScanExport(f, func(e *audit.Entry) error { h10 = hex.EncodeToString(e.Hash); return nil }, nil)
	f.Close()
	if _, err := run("verify", "--db", db, "--pubkey", pub, "--anchor", "10:"+h10); err != nil {
		t.Fatalf("anchor at the first entry: %v", err)
	}

	// Entries deleted past the archive, no record: tampering, exit 4.
	sdb, err := sql.Open("sqlite3", db)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sdb.Exec(`DROP TRIGGER events_append_only_delete; DELETE FROM events WHERE seq < 15`)
	sdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = run("verify", "--db", db, "--pubkey", pub)
	var te tamperedError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "entry 15: the chain starts here, but entries before it were deleted without an archive record") {
		t.Fatalf("deleted without a record: %v", err)
	}
}

// TestAuditArchives: `audit archives` lists the recorded archives against
// the directory: intact (and verified with --pubkey), absent (moved off
// the box: no error), altered or not linking (exit 4), and says when the
// newest archive's pass is still deleting.
func TestAuditArchives(t *testing.T) {
	db, archive, pub := archivedDB(t)
	dir := filepath.Dir(archive)
	run := func(args ...string) (store.ArchivesReport, string, error) {
		t.Helper()
		var out bytes.Buffer
		err := auditCmd(append([]string{"archives", "--db", db}, args...), &out)
		var rep store.ArchivesReport
		s := out.String()
		if i := strings.Index(s, "{"); i >= 0 {
			if jerr := json.Unmarshal([]byte(s[i:]), &rep); jerr != nil {
				t.Fatalf("%v in %s", jerr, s)
			}
		}
		return rep, s, err
	}
	var ue usageError
	if _, _, err := run(); !errors.As(err, &ue) {
		t.Fatalf("no directory: %v", err)
	}
	rep, out, err := run("--dir", dir)
	if err != nil || len(rep.Archives) != 1 || rep.FirstSeq != 10 || rep.Broken != 0 {
		t.Fatalf("intact: %v\n%s", err, out)
	}
	a := rep.Archives[0]
	if a.State != store.ArchiveIntact || a.Verified || a.Deleting || a.From != 1 || a.Through != 10 || a.File != filepath.Base(archive) ||
		!strings.Contains(out, filepath.Base(archive)+"  entries 1 to 10  intact\n") {
		t.Fatalf("intact: %+v\n%s", a, out)
	}
	if rep, out, err = run("--dir", dir, "--pubkey", pub); err != nil || !rep.Archives[0].Verified || !strings.Contains(out, "intact, verified") {
		t.Fatalf("with the key: %v\n%s", err, out)
	}
	// Another key: intact, but it does not verify.
	other := filepath.Join(t.TempDir(), "other.pub")
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := audit.MarshalPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, pemKey, 0o600); err != nil {
		t.Fatal(err)
	}
	var te tamperedError
	if rep, out, err = run("--dir", dir, "--pubkey", other); !errors.As(err, &te) || rep.Archives[0].Verified || rep.Broken != 1 {
		t.Fatalf("another key: %v\n%s", err, out)
	}

	// Altered: a byte added.
	raw, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(archive, append(raw, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if rep, out, err = run("--dir", dir); !errors.As(err, &te) || rep.Archives[0].State != store.ArchiveAltered ||
		!strings.Contains(rep.Archives[0].Problem, "recorded") {
		t.Fatalf("altered: %v\n%s", err, out)
	}
	// Absent: moved off the box.
	if err := os.Remove(archive); err != nil {
		t.Fatal(err)
	}
	if rep, out, err = run("--dir", dir, "--pubkey", pub); err != nil || rep.Archives[0].State != store.ArchiveAbsent || rep.Broken != 0 {
		t.Fatalf("absent: %v\n%s", err, out)
	}
	if err := os.WriteFile(archive, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	// A record that does not start where the one before ends, and whose
	// entries are still in the database (its pass is deleting).
	sdb, err := sql.Open("sqlite3", db)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sdb.Exec(`INSERT INTO audit_archives (through_seq, from_seq, through_hash, file, sha256, size, at)
		VALUES (20, 12, x'00', 'audit-000000000012-000000000020.jsonl', '00', 1, 0)`)
	sdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	rep, out, err = run("--dir", dir)
	if !errors.As(err, &te) || len(rep.Archives) != 2 || rep.Broken != 1 {
		t.Fatalf("a gap: %v\n%s", err, out)
	}
	if b := rep.Archives[1]; b.State != store.ArchiveAbsent || !b.Deleting ||
		!strings.Contains(b.Problem, "starts at entry 12, but the archive before ends at entry 10") ||
		!strings.Contains(out, "its pass is still deleting: keep it here") {
		t.Fatalf("a gap: %+v\n%s", b, out)
	}
}
