package store

import (
	"context"
	"database/sql"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/mattn/go-sqlite3"
	"go.uber.org/zap/zaptest"
)

func openAt(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func openTest(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "db", "appliance.db")
	return openAt(t, path), path
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestOpenMigrateReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "missing", "dir", "appliance.db")
	s, err := Open(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.SchemaVersion(ctx); err != nil || v != len(ms) {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, len(ms))
	}
	if err := s.Probe(ctx); err != nil { // forces a -wal file to exist
		t.Fatal(err)
	}
	if m := mode(t, filepath.Dir(path)); m != 0o700 {
		t.Errorf("directory mode %v, want 0700", m)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if m := mode(t, p); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", filepath.Base(p), m)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openAt(t, path)
	if v, err := s.SchemaVersion(ctx); err != nil || v != len(ms) {
		t.Fatalf("after reopen SchemaVersion = %d, %v; want %d", v, err, len(ms))
	}
	var rows int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != len(ms) {
		t.Fatalf("schema_migrations has %d rows (%v), want %d: a migration ran twice", rows, err, len(ms))
	}
}

func TestPragmasInEffect(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	var journal string
	var syncMode, fk, busy int
	row := func(db *sql.DB, q string, dst any) {
		t.Helper()
		if err := db.QueryRowContext(ctx, q).Scan(dst); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for name, db := range map[string]*sql.DB{"writer": s.w, "reader": s.r} {
		row(db, "PRAGMA journal_mode", &journal)
		row(db, "PRAGMA synchronous", &syncMode)
		row(db, "PRAGMA foreign_keys", &fk)
		row(db, "PRAGMA busy_timeout", &busy)
		if journal != "wal" || syncMode != 2 || fk != 1 || busy != int(busyTimeout.Milliseconds()) {
			t.Errorf("%s: journal_mode=%s synchronous=%d foreign_keys=%d busy_timeout=%d; want wal 2(FULL) 1 %d",
				name, journal, syncMode, fk, busy, busyTimeout.Milliseconds())
		}
	}
	// The read pool must not be able to write, so no code path can bypass
	// the single writer by accident.
	_, err := s.r.ExecContext(ctx, `INSERT INTO health (id, probed_at, probes) VALUES (1, 0, 0)`)
	var se sqlite3.Error
	if !errors.As(err, &se) || se.Code != sqlite3.ErrReadonly {
		t.Fatalf("write through the read pool: err = %v, want SQLITE_READONLY", err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	err := s.WriteTx(ctx, func(tx *Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, '9999_future.sql', 0)`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(ctx, path, zaptest.NewLogger(t))
	if err == nil {
		s2.Close()
		t.Fatal("Open accepted a database from a newer binary")
	}
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open: %v, want ErrSchemaTooNew", err)
	}
}

func TestOpenTightensExistingMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "loose.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	openAt(t, path)
	if m := mode(t, path); m != 0o600 {
		t.Fatalf("mode %v, want 0600", m)
	}
}

func TestOpenUnusualPath(t *testing.T) {
	// Characters that mean something in a file: URI must reach the filesystem verbatim.
	path := filepath.Join(t.TempDir(), "a b#c?d%20e", "x&y=z.db")
	s := openAt(t, path)
	if err := s.Probe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the literal path: %v", err)
	}
}

func TestOpenRequiresLoggerAndPath(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, filepath.Join(t.TempDir(), "x.db"), nil); err == nil {
		t.Error("Open without a logger succeeded")
	}
	if _, err := Open(ctx, "", zaptest.NewLogger(t)); !errors.Is(err, ErrInvalid) {
		t.Errorf("Open(\"\") = %v, want ErrInvalid", err)
	}
}

func TestQuickCheckAndProbe(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if err := s.QuickCheck(ctx); err != nil {
		t.Fatalf("QuickCheck: %v", err)
	}
	for range 3 {
		if err := s.Probe(ctx); err != nil {
			t.Fatalf("Probe: %v", err)
		}
	}
	var probes int
	if err := s.r.QueryRowContext(ctx, `SELECT probes FROM health WHERE id = 1`).Scan(&probes); err != nil || probes != 3 {
		t.Fatalf("health.probes = %d (%v), want 3", probes, err)
	}
}

// Tests run as root, which ignores file modes, so a read-only store is made
// by reopening the writer with SQLite's mode=ro instead of chmod.
func TestProbeFailsOnReadOnlyStore(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	if err := s.w.Close(); err != nil {
		t.Fatal(err)
	}
	u := url.URL{Scheme: "file", Path: path, RawQuery: "mode=ro&_txlock=immediate"}
	ro, err := sql.Open("sqlite3", u.String())
	if err != nil {
		t.Fatal(err)
	}
	ro.SetMaxOpenConns(1)
	s.w = ro

	err = s.Probe(ctx)
	var se sqlite3.Error
	if !errors.As(err, &se) || se.Code != sqlite3.ErrReadonly {
		t.Fatalf("Probe on a read-only store: %v, want a wrapped SQLITE_READONLY", err)
	}
	// Failing the probe must not break reads: health still reports the rest.
	if err := s.QuickCheck(ctx); err != nil {
		t.Fatalf("QuickCheck after failed probe: %v", err)
	}
}

func TestProbeAfterClose(t *testing.T) {
	s, _ := openTest(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Probe(context.Background()); err == nil {
		t.Fatal("Probe on a closed store succeeded")
	}
}

func TestWriteTxRollsBackOnErrorAndPanic(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	probe := func(tx *Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO health (id, probed_at, probes) VALUES (1, 0, 0)`)
		return err
	}
	boom := errors.New("boom")
	if err := s.WriteTx(ctx, func(tx *Tx) error { _ = probe(tx); return boom }); !errors.Is(err, boom) {
		t.Fatalf("WriteTx = %v, want boom", err)
	}
	func() {
		defer func() { _ = recover() }()
		_ = s.WriteTx(ctx, func(tx *Tx) error { _ = probe(tx); panic("hook bug") })
	}()
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM health`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("health rows = %d (%v), want 0", n, err)
	}
	// The one writer connection was returned: writes still work.
	if err := s.Probe(ctx); err != nil {
		t.Fatal(err)
	}
}
