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
