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
	"testing"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/audit"
)

func signCheckpoint(t testing.TB, key *ecdsa.PrivateKey, seq int64, h []byte) audit.Checkpoint {
	t.Helper()
	c := audit.Checkpoint{Seq: seq, Hash: h, At: int64(seq) * 1000, KeyID: audit.KeyID(&key.PublicKey)}
	r, s, err := ecdsa.Sign(rand.Reader, key, c.Digest())
	if err != nil {
		t.Fatal(err)
	}
	c.Signature = append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	return c
}

// auditedDB writes a database holding 50 entries (requests, transitions
// and plain events) with checkpoints at 20 and 40, and returns its path.
func auditedDB(t *testing.T, key *ecdsa.PrivateKey) string {
	t.Helper()
	s, path := openTest(t)
	ctx := context.Background()
	hk := make([]byte, 32)
	_, _ = rand.Read(hk)
	red, _ := audit.NewRedactor(hk)
	s.SetAuditKey(red)
	for i := 1; i <= 50; i++ {
		err := s.RecordAudit(ctx, audit.Record{Kind: "test", Principal: "p", Detail: fmt.Sprintf("entry %d", i),
			Fields: map[string]string{"i": fmt.Sprint(i)}, Sensitive: map[string]string{"secretish": fmt.Sprint("idem-", i)}})
		if err != nil {
			t.Fatal(err)
		}
		if i == 20 || i == 40 {
			seq, h, err := s.AuditHead(ctx)
			if err != nil || seq != int64(i) {
				t.Fatalf("head %d %v", seq, err)
			}
			if err := s.AddCheckpoint(ctx, signCheckpoint(t, key, seq, h)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func copyDB(t *testing.T, src string) string {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(dst, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

func verifyFile(t *testing.T, path string, key *ecdsa.PublicKey, anchors map[int64][]byte) (audit.Report, error) {
	t.Helper()
	f, err := OpenAuditFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return f.Verify(context.Background(), []*ecdsa.PublicKey{key}, anchors)
}

// TestAuditTamperingInTheDatabaseFile edits a copy of a real database with
// SQL, as someone holding the file could (dropping the append-only triggers
// first), and checks the offline verifier names the first bad entry.
func TestAuditTamperingInTheDatabaseFile(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	path := auditedDB(t, key)
	r, err := verifyFile(t, path, &key.PublicKey, nil)
	if err != nil || r.Entries != 50 || r.Checkpoints != 2 || r.LastCheckpointSeq != 40 {
		t.Fatalf("intact: %+v %v", r, err)
	}
	// The sensitive value never reached the file.
	if raw, _ := os.ReadFile(path); strings.Contains(string(raw), "idem-7") {
		t.Fatal("a sensitive value is stored raw")
	}
	var head []byte
	{
		f, _ := OpenAuditFile(context.Background(), path)
		_ = f.Entries(context.Background(), 49, func(e *audit.Entry) error { head = append([]byte(nil), e.Hash...); return nil })
		f.Close()
	}
	drop := `DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;
		DROP TRIGGER audit_checkpoints_append_only_update; DROP TRIGGER audit_checkpoints_append_only_delete;`
	cases := []struct {
		name    string
		sql     string
		anchor  bool
		wantSeq int64
		want    string
	}{
		{"modified detail", `UPDATE events SET detail = 'entry 10 (edited)' WHERE seq = 10`, false, 10, "modified"},
		{"modified principal", `UPDATE events SET principal = 'mallory' WHERE seq = 33`, false, 33, "modified"},
		{"deleted", `DELETE FROM events WHERE seq = 30`, false, 30, "missing"},
		{"inserted (renumbered)", `UPDATE events SET seq = seq + 1000 WHERE seq > 30; UPDATE events SET seq = seq - 999 WHERE seq > 1000;
			INSERT INTO events (seq, at, kind, principal, detail, fields, prev_hash, hash)
			SELECT 31, at + 1, kind, principal, 'inserted', fields, hash, hash FROM events WHERE seq = 30`, false, 31, "modified"},
		{"reordered", `UPDATE events SET seq = -1 WHERE seq = 25; UPDATE events SET seq = 25 WHERE seq = 26; UPDATE events SET seq = 26 WHERE seq = -1`, false, 25, "does not follow"},
		{"truncated behind the last checkpoint", `DELETE FROM events WHERE seq > 35`, false, 36, "truncated"},
		{"truncated after the last checkpoint (anchored)", `DELETE FROM events WHERE seq > 45`, true, 46, "truncated"},
		{"checkpoint altered", `UPDATE audit_checkpoints SET at = at + 1 WHERE seq = 20`, false, 0, "does not verify"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := copyDB(t, path)
			db, err := sql.Open("sqlite3", p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(drop + tc.sql); err != nil {
				t.Fatal(err)
			}
			db.Close()
			var anchors map[int64][]byte
			if tc.anchor {
				anchors = map[int64][]byte{50: head}
			}
			_, err = verifyFile(t, p, &key.PublicKey, anchors)
			var be *audit.BadEntry
			if !errors.As(err, &be) || be.Seq != tc.wantSeq || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want entry %d %q", err, tc.wantSeq, tc.want)
			}
		})
	}
}

// TestAuditAppendOnlyTriggers: an UPDATE or DELETE through SQL is refused
// while the triggers stand.
func TestAuditAppendOnlyTriggers(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	path := auditedDB(t, key)
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{`UPDATE events SET detail = 'x' WHERE seq = 1`, `DELETE FROM events WHERE seq = 50`,
		`DELETE FROM audit_checkpoints`, `UPDATE audit_checkpoints SET seq = 1`} {
		if _, err := db.Exec(q); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestAuditChainFailsClosed: when the audit entry cannot be written, the
// operation it describes is not recorded either.
func TestAuditChainFailsClosed(t *testing.T) {
	s := storeWithKey(t)
	ctx := context.Background()
	rec, _, err := s.CreateRequest(ctx, newReq("alice", "k1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Break the chain's table for writers: an INSERT now fails.
	if _, err := s.w.ExecContext(ctx, `CREATE TRIGGER no_audit BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'audit disk full'); END`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateRequest(ctx, newReq("alice", "k2"), nil); err == nil {
		t.Fatal("a request was created without its audit entry")
	}
	if err := s.CompleteRequest(ctx, rec.ID, []byte{1}, "0xabc"); err == nil {
		t.Fatal("a signature was recorded without its audit entry")
	}
	if got, _ := s.GetRequest(ctx, rec.ID); got.State != StateSigning {
		t.Fatalf("state %s after a failed audit", got.State)
	}
	if n := count(t, s, ""); n != 1 {
		t.Fatalf("%d requests", n)
	}
}

// TestMigrationChainsExistingEvents: a database at schema 6 with events
// gets them chained by migration 7, and the chain verifies.
func TestMigrationChainsExistingEvents(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "old.db")
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:6] {
		if _, err := db.Exec(m.sql); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations VALUES (?, ?, 1)`, m.version, m.name); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		if _, err := db.Exec(`INSERT INTO events (at, kind, principal, detail) VALUES (?, 'freeze', 'officer1', ?)`, i, fmt.Sprint("old ", i)); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s, err := Open(context.Background(), path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecordEvent(context.Background(), "start", "", "after the migration"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r, err := verifyFile(t, path, &key.PublicKey, nil)
	if err != nil || r.Entries != 6 {
		t.Fatalf("%+v %v", r, err)
	}
}
