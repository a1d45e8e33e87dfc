package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// atSchema builds a database at schema version v, the way a binary of that
// release left it, with data in the tables that version had: a key, a
// signed request and (from version 2) an event.
func atSchema(t *testing.T, path string, v int) {
	t.Helper()
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", path+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("schema %d: %s: %v", v, q, err)
		}
	}
	exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT`)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:v] {
		if _, err := tx.Exec(m.sql); err != nil {
			t.Fatalf("migration %s: %v", m.name, err)
		}
		if step := goSteps[m.version]; step != nil {
			if err := step(context.Background(), tx); err != nil {
				t.Fatalf("migration %s: %v", m.name, err)
			}
		}
		if _, err := tx.Exec(`INSERT INTO schema_migrations VALUES (?, ?, 1)`, m.version, m.name); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	exec(`INSERT INTO keys (id, label, cka_id, algorithm, chain, network, public_key, address, created_at)
		VALUES ('eth-old', 'eth-old', x'0102', 'secp256k1', 'ethereum', '1337', x'04aa', '0xabc', 1)`)
	exec(`INSERT INTO requests (id, principal, idempotency_key, key_id, chain, network, payload, payload_hash, intent, digest,
		state, signed_tx, tx_hash, error_code, error_message, created_at, updated_at)
		VALUES ('req_old', 'svc', 'idem-old', 'eth-old', 'ethereum', '1337', x'02', x'03', x'7b7d', x'04', 'signed', x'05', '0xfeed', '', '', 1, 2)`)
	if v >= 2 {
		if v < 7 {
			exec(`INSERT INTO events (at, kind, principal, detail) VALUES (5, 'freeze', 'officer1', 'before v7')`)
		} else {
			// From 7 on entries are chained; the old binary appended them through Go.
			s := &Store{w: db, r: db, log: zap.NewNop()}
			if err := s.RecordEvent(context.Background(), "freeze", "officer1", "at v"+fmt.Sprint(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestMigrationFromEverySchema: a database left by every earlier release
// opens with this binary, is backed up first, migrates to the newest schema,
// keeps its data, passes the integrity check, and has an audit chain that
// verifies.
func TestMigrationFromEverySchema(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	for v := 1; v < len(ms); v++ {
		t.Run(fmt.Sprintf("from v%d", v), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "appliance.db")
			atSchema(t, path, v)
			ctx := context.Background()
			s, err := Open(ctx, path, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := s.SchemaVersion(ctx); got != len(ms) {
				t.Fatalf("schema %d after migrating, want %d", got, len(ms))
			}
			if err := s.IntegrityCheck(ctx); err != nil {
				t.Fatal(err)
			}
			k, err := s.GetKey(ctx, "eth-old")
			if err != nil || k.Address != "0xabc" || k.WrappedBackup {
				t.Fatalf("key after migrating: %+v %v", k, err)
			}
			r, err := s.GetRequest(ctx, "req_old")
			if err != nil || r.State != StateSigned || r.TxHash != "0xfeed" || r.IdempotencyKey != "idem-old" {
				t.Fatalf("request after migrating: %+v %v", r, err)
			}
			if err := s.RecordEvent(ctx, "start", "", "after the upgrade"); err != nil {
				t.Fatal(err)
			}
			s.Close()
			backups, _ := filepath.Glob(path + fmt.Sprintf(".pre-v%d-*.db", len(ms)))
			if len(backups) != 1 {
				t.Fatalf("backup before upgrading: %v", backups)
			}
			// The pre-upgrade copy is the old database, untouched.
			old, err := sql.Open("sqlite3", "file:"+backups[0]+"?mode=ro")
			if err != nil {
				t.Fatal(err)
			}
			var oldV int
			err = old.QueryRow(`SELECT MAX(version) FROM schema_migrations`).Scan(&oldV)
			old.Close()
			if err != nil || oldV != v {
				t.Fatalf("backup at schema %d (%v), want %d", oldV, err, v)
			}
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			rep, err := verifyFile(t, path, &key.PublicKey, nil)
			wantEntries := int64(1)
			if v >= 2 {
				wantEntries = 2
			}
			if err != nil || rep.Entries != wantEntries {
				t.Fatalf("audit chain after migrating from v%d: %+v %v", v, rep, err)
			}
		})
	}
	// A fresh database is not "upgraded": no backup is written.
	dir := t.TempDir()
	s, err := Open(context.Background(), filepath.Join(dir, "new.db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if b, _ := filepath.Glob(filepath.Join(dir, "*.pre-v*")); len(b) != 0 || strings.Contains(fmt.Sprint(b), "pre") {
		t.Fatalf("backup of a new database: %v", b)
	}
}
