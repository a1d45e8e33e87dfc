package store

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/custodysigner/appliance/internal/testfs"
)

// foreignSQLite writes a valid SQLite file without the appliance's schema.
func foreignSQLite(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE notes (body TEXT)`); err != nil {
		t.Fatal(err)
	}
}

// begunSQLite writes what a first open leaves before the migrations run: a
// valid, non-empty SQLite file in WAL mode with no tables.
func begunSQLite(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
}

// TestNoDatabaseRefused: where a database must already exist (the
// appliance's start, every command but init) a missing, empty or
// schema-less file is refused with ErrNoDatabase, naming the path, and
// nothing on disk changes. Where one may be created (init), a missing or
// empty file still becomes a new database, but never one whose lost
// predecessor's write-ahead log is still beside it.
func TestNoDatabaseRefused(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name      string
		prepare   func(t *testing.T, path string)
		createsOK bool // Open (init) builds a database there
		nonEmpty  bool // Existing cannot tell: only opening it shows there is no schema
	}{
		{"missing", func(t *testing.T, path string) {}, true, false},
		{"missing with its directory", func(t *testing.T, path string) {
			if err := os.Remove(filepath.Dir(path)); err != nil {
				t.Fatal(err)
			}
		}, true, false},
		{"zero-length", func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, true, false},
		{"missing, its write-ahead log left", func(t *testing.T, path string) {
			if err := os.WriteFile(path+"-wal", []byte("the lost database's log"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, false, false},
		{"zero-length, its write-ahead log left", func(t *testing.T, path string) {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path+"-wal", []byte("the lost database's log"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, false, false},
		{"no appliance schema", begunSQLite, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			path := filepath.Join(root, "data", "appliance.db")
			if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			c.prepare(t, path)
			before := testfs.Snapshot(t, nil, root)

			if err := Existing(path); !c.nonEmpty && !errors.Is(err, ErrNoDatabase) {
				t.Errorf("Existing = %v, want ErrNoDatabase", err)
			}
			s, err := OpenExisting(ctx, path, zaptest.NewLogger(t))
			if err == nil {
				s.Close()
				t.Fatal("OpenExisting accepted it")
			}
			if !errors.Is(err, ErrNoDatabase) || !strings.Contains(err.Error(), path) {
				t.Fatalf("OpenExisting = %v, want ErrNoDatabase naming %s", err, path)
			}
			testfs.Unchanged(t, before, testfs.Snapshot(t, nil, root))
			if _, err := os.Stat(filepath.Dir(path)); c.name == "missing with its directory" && err == nil {
				t.Error("OpenExisting created the directory")
			}

			s, err = Open(ctx, path, zaptest.NewLogger(t))
			if !c.createsOK {
				if err == nil {
					s.Close()
					t.Fatal("Open built a database beside a lost one's write-ahead log")
				}
				if !errors.Is(err, ErrNoDatabase) {
					t.Fatalf("Open = %v, want ErrNoDatabase", err)
				}
				testfs.Unchanged(t, before, testfs.Snapshot(t, nil, root))
				return
			}
			if err != nil {
				t.Fatalf("Open (init) = %v", err)
			}
			ms, err := loadMigrations()
			if err != nil {
				t.Fatal(err)
			}
			if v, err := s.SchemaVersion(ctx); err != nil || v != len(ms) {
				t.Fatalf("SchemaVersion = %d, %v", v, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if m := mode(t, path); m != 0o600 {
				t.Errorf("mode %v, want 0600", m)
			}
			// Now an installation: it opens as one.
			if err := Existing(path); err != nil {
				t.Fatal(err)
			}
			s, err = OpenExisting(ctx, path, zaptest.NewLogger(t))
			if err != nil {
				t.Fatalf("OpenExisting after init: %v", err)
			}
			s.Close()
		})
	}
}

// TestOpenRefusesAnotherApplicationsDatabase: where a database may be
// created (init), a store.path pointing at another application's SQLite
// file is refused (ErrInvalid, naming the path) and the file is left as it
// was; a file with no tables at all, a new database begun and not finished,
// is still built on.
func TestOpenRefusesAnotherApplicationsDatabase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	foreign := filepath.Join(dir, "other.db")
	foreignSQLite(t, foreign)
	before := testfs.Snapshot(t, nil, dir)
	_, err := Open(ctx, foreign, zaptest.NewLogger(t))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), foreign) || !strings.Contains(err.Error(), "another application") {
		t.Fatalf("Open on another application's database: %v; want ErrInvalid naming %s", err, foreign)
	}
	testfs.Unchanged(t, before, testfs.Snapshot(t, nil, dir))

	begun := filepath.Join(dir, "begun.db")
	begunSQLite(t, begun)
	if fi, err := os.Stat(begun); err != nil || fi.Size() == 0 {
		t.Fatalf("the begun database should be a non-empty file without tables: %v", err)
	}
	s, err := Open(ctx, begun, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Open on a database with no tables: %v", err)
	}
	s.Close()
}
