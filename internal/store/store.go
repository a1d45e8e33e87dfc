// Package store is the appliance's SQLite database: the key registry, signing
// requests, and the write transaction that later packages (policy counters,
// approvals, the audit chain) join so that a request and everything decided
// about it commit together or not at all.
//
// There is exactly one writer path: a *sql.DB limited to one connection whose
// transactions start with BEGIN IMMEDIATE, so every write transaction holds
// the database write lock from its first statement and check-then-write
// sequences (idempotency, limits) cannot interleave, even across processes.
// Reads use a separate pool that is query-only, so a read can never write.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/mattn/go-sqlite3"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/audit"
)

// Errors callers compare with errors.Is. Returned errors wrap them with context.
var (
	// ErrNotFound: no row with that id.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a uniqueness rule or a state transition was violated.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: the caller passed a value the store will not record.
	ErrInvalid = errors.New("invalid")
	// ErrSchemaTooNew: the database was migrated by a newer binary; opening it
	// could silently ignore columns or rules this binary does not know.
	ErrSchemaTooNew = errors.New("database schema is newer than this binary")
	// ErrIntegrity: SQLite's quick_check found corruption.
	ErrIntegrity = errors.New("database integrity check failed")
)

// Tx is the write transaction handed to hooks and WriteTx callbacks. It is an
// alias, so a func(*sql.Tx, *Request) error and a func(*store.Tx, *Request)
// error are the same type and callers may spell it either way.
type Tx = sql.Tx

// busyTimeout bounds how long a statement waits for another process's lock
// (a backup tool, an operator's sqlite3 shell) before failing.
const busyTimeout = 5 * time.Second

// stmtCacheSize is how many prepared statements each connection keeps.
const stmtCacheSize = 128

// Store is the appliance database. It is safe for concurrent use.
type Store struct {
	w   *sql.DB // one connection, BEGIN IMMEDIATE: the only writer
	r   *sql.DB // query-only pool for reads
	log *zap.Logger
	now func() time.Time

	redactor atomic.Pointer[audit.Redactor] // HMAC key for sensitive audit fields; nil while sealed

	gc groupCommit // concurrent write transactions share one commit (groupcommit.go)
}

// Open opens (creating if missing) the database at path and migrates it to
// the newest schema this binary knows. A missing parent directory is created
// 0700 and a missing file 0600, because the database holds request payloads
// and policy state that only the appliance should read.
func Open(ctx context.Context, path string, log *zap.Logger) (*Store, error) {
	if log == nil {
		return nil, errors.New("store: a logger is required")
	}
	if path == "" {
		return nil, fmt.Errorf("store: empty path: %w", ErrInvalid)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store: resolve %q: %w", path, err)
	}
	if err := ensureFile(abs, log); err != nil {
		return nil, err
	}

	s := &Store{log: log, now: time.Now}
	s.w, err = openDB(writerDriver, abs, url.Values{
		"_journal_mode": {"WAL"},
		"_synchronous":  {"FULL"},
		"_foreign_keys": {"on"},
		"_txlock":       {"immediate"},
	})
	if err != nil {
		return nil, err
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)
	if err := s.checkPragmas(ctx); err != nil {
		return nil, errors.Join(err, s.w.Close())
	}

	// The read pool opens before migrating: an upgrade snapshots the
	// database through it first.
	s.r, err = openDB("sqlite3", abs, url.Values{
		"_query_only":   {"1"},
		"_foreign_keys": {"on"},
		// A reader may be the last connection and run the closing checkpoint.
		"_synchronous": {"FULL"},
	})
	if err != nil {
		return nil, errors.Join(err, s.w.Close())
	}
	s.r.SetMaxOpenConns(max(4, runtime.GOMAXPROCS(0)))
	if err := s.r.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("store: open read pool: %w", err), s.Close())
	}
	if err := s.migrate(ctx, abs); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

// Close closes both pools.
func (s *Store) Close() error {
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	errs = append(errs, s.w.Close())
	return errors.Join(errs...)
}

// openDB opens a pool on a file: URI so that unusual characters in the path
// ('?', '#', '%') are escaped rather than parsed as URI syntax.
func openDB(driver, abs string, params url.Values) (*sql.DB, error) {
	params.Set("_busy_timeout", fmt.Sprint(busyTimeout.Milliseconds()))
	// Prepared statements are kept per connection and reused: the hot path
	// runs the same few dozen statements for every request, and parsing
	// them again each time was a measurable part of its cost.
	params.Set("_stmt_cache_size", fmt.Sprint(stmtCacheSize))
	u := url.URL{Scheme: "file", Path: abs, RawQuery: params.Encode()}
	db, err := sql.Open(driver, u.String())
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	return db, nil
}

// writerDriver is go-sqlite3 with the writer's settings that its DSN has no
// parameter for, applied to every connection it opens (a pool may reopen one).
const writerDriver = "sqlite3_appliance_writer"

func init() {
	sql.Register(writerDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		// Statement journals in memory. Group commit runs each caller's
		// writes inside a SAVEPOINT, and a savepoint keeps the original of
		// every page it changes in the statement journal, which SQLite
		// spills to a temporary file past 64 KiB: under load that was a
		// new unlinked file per batch and about six extra pwrites per
		// signed request (docs/BENCHMARKS.md, "third pass"). The journal
		// holds at most a batch's pages, and it is not needed for
		// durability: a crash loses the open transaction either way. Only
		// the writer: readers take no savepoints, and their large sorts
		// (exports, listings) keep spilling to files, not memory; the
		// migrations, which may build indexes over whole tables, switch
		// the writer back to files while they run (migrate.go).
		_, err := c.Exec("PRAGMA temp_store = MEMORY", nil)
		return err
	}})
}

// ensureFile creates the parent directory and the database file with owner-
// only permissions. SQLite gives its -wal and -shm files the main file's mode,
// so getting the main file right covers them too. An existing file readable
// by others is tightened rather than refused: it is the appliance's own file.
func ensureFile(abs string, log *zap.Logger) error {
	dir := filepath.Dir(abs)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("store: create directory %s: %w", dir, err)
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		// Chmod as well: the process umask could only remove bits, but a
		// created file must not depend on the caller's umask being sane.
		return errors.Join(f.Chmod(0o600), f.Close())
	case !errors.Is(err, os.ErrExist):
		return fmt.Errorf("store: create %s: %w", abs, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("store: stat %s: %w", abs, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("store: %s is not a regular file: %w", abs, ErrInvalid)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		log.Warn("database file was accessible to others; tightening to 0600",
			zap.String("path", abs), zap.Stringer("mode", fi.Mode().Perm()))
		if err := os.Chmod(abs, 0o600); err != nil {
			return fmt.Errorf("store: chmod %s: %w", abs, err)
		}
	}
	return nil
}

// checkPragmas reads back the durability settings rather than trusting the
// DSN: on a filesystem without shared-memory support WAL silently falls back,
// and a store that cannot guarantee FULL sync must not record signatures.
func (s *Store) checkPragmas(ctx context.Context) error {
	var mode string
	var syncMode, fk, temp int
	if err := s.w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("store: read journal_mode: %w", err)
	}
	if err := s.w.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&syncMode); err != nil {
		return fmt.Errorf("store: read synchronous: %w", err)
	}
	if err := s.w.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
		return fmt.Errorf("store: read foreign_keys: %w", err)
	}
	if err := s.w.QueryRowContext(ctx, "PRAGMA temp_store").Scan(&temp); err != nil {
		return fmt.Errorf("store: read temp_store: %w", err)
	}
	const syncFull, tempMemory = 2, 2
	if mode != "wal" || syncMode != syncFull || fk != 1 || temp != tempMemory {
		return fmt.Errorf("store: pragmas not in effect (journal_mode=%s synchronous=%d foreign_keys=%d temp_store=%d)", mode, syncMode, fk, temp)
	}
	return nil
}

// Probe proves the store can commit: a write transaction that rewrites the
// health row. The systemd watchdog is petted only while this succeeds.
func (s *Store) Probe(ctx context.Context) error {
	now := s.now().UTC().UnixNano()
	err := s.WriteTx(ctx, func(tx *Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO health (id, probed_at, probes) VALUES (1, ?, 1)
			ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at, probes = probes + 1`, now)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: probe: %w", err)
	}
	return nil
}

// QuickCheck runs PRAGMA quick_check and returns an error wrapping
// ErrIntegrity unless SQLite answers exactly "ok".
func (s *Store) QuickCheck(ctx context.Context) error { return pragmaCheck(ctx, s.r, "quick_check") }

// IntegrityCheck runs the full PRAGMA integrity_check (slower than
// quick_check: it also verifies indexes against their tables), for an
// operator's check on demand.
func (s *Store) IntegrityCheck(ctx context.Context) error {
	return pragmaCheck(ctx, s.r, "integrity_check")
}

// pragmaCheck runs one of SQLite's checking pragmas (a trusted constant).
func pragmaCheck(ctx context.Context, q rowsQueryer, pragma string) error {
	rows, err := q.QueryContext(ctx, "PRAGMA "+pragma)
	if err != nil {
		return fmt.Errorf("store: %s: %w", pragma, err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("store: %s: %w", pragma, err)
		}
		problems = append(problems, line)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("store: %s: %w", pragma, err)
	}
	if len(problems) == 1 && problems[0] == "ok" {
		return nil
	}
	return fmt.Errorf("store: %s: %q: %w", pragma, problems, ErrIntegrity)
}

// Unavailable reports whether err says the database cannot be written (or
// read) right now because of its environment, not because of what was asked:
// the filesystem is full (SQLITE_FULL), read-only (SQLITE_READONLY, or the
// SQLITE_IOERR_WRITE/FSYNC a filesystem that turned read-only under an open
// file gives), failing (any SQLITE_IOERR), the file cannot be opened
// (SQLITE_CANTOPEN), or another process held the lock past the busy timeout
// (SQLITE_BUSY). The same request may succeed once the condition is gone,
// so callers answer "unavailable, retry" instead of an internal error. The
// failed transaction is rolled back, except that an I/O error while syncing
// a commit may leave it durable after all: a retry with the same idempotency
// key then finds it. Corruption (SQLITE_CORRUPT, SQLITE_NOTADB) is not
// "unavailable": retrying does not help.
func Unavailable(err error) bool {
	var se sqlite3.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code {
	case sqlite3.ErrFull, sqlite3.ErrReadonly, sqlite3.ErrIoErr, sqlite3.ErrCantOpen, sqlite3.ErrBusy:
		return true
	}
	return false
}

// isUnique reports whether err is a UNIQUE or PRIMARY KEY violation.
func isUnique(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) &&
		(se.ExtendedCode == sqlite3.ErrConstraintUnique || se.ExtendedCode == sqlite3.ErrConstraintPrimaryKey)
}

// isForeignKey reports whether err is a FOREIGN KEY violation.
func isForeignKey(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.ExtendedCode == sqlite3.ErrConstraintForeignKey
}
