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
	// ErrNoDatabase: where an existing database was required there is none:
	// the file is missing or empty, or holds no appliance schema. SQLite
	// would take a zero-length file for an empty database and the
	// migrations would build a new one over a lost installation.
	ErrNoDatabase = errors.New("no appliance database")
)

// The two states in which Open may start a new database; OpenExisting
// refuses them like every other ErrNoDatabase.
var (
	errMissing = fmt.Errorf("the file does not exist: %w", ErrNoDatabase)
	errEmpty   = fmt.Errorf("the file is empty (0 bytes): %w", ErrNoDatabase)
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

	archive ArchiveBounds // the most one audit archive file holds (auditarchive.go)
}

// Open opens the database at path, creating it when there is none, and
// migrates it to the newest schema this binary knows: the initialisation
// path (appliance init; test fixtures). A missing or zero-length file is
// taken as a new database; a missing parent directory is created 0700 and a
// missing file 0600, because the database holds request payloads and policy
// state that only the appliance should read. A missing or empty file whose
// write-ahead log is still there is refused (ErrNoDatabase): SQLite would
// apply the lost database's log to the new one.
//
// Everything that opens an installation rather than creating one uses
// OpenExisting.
func Open(ctx context.Context, path string, log *zap.Logger) (*Store, error) {
	return open(ctx, path, log, true)
}

// OpenExisting is Open for an installation that already exists: the
// appliance's start and every command but init. It never creates a
// database: a missing or empty file is refused with an error wrapping
// ErrNoDatabase before anything on disk is touched, and so is a file that
// holds no appliance schema, before anything is written to it.
func OpenExisting(ctx context.Context, path string, log *zap.Logger) (*Store, error) {
	return open(ctx, path, log, false)
}

func open(ctx context.Context, path string, log *zap.Logger, create bool) (*Store, error) {
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
	if err := ensureFile(abs, log, create); err != nil {
		return nil, err
	}

	s := &Store{log: log, now: time.Now, archive: DefaultArchiveBounds}
	// The read pool opens first: an existing file's schema is checked
	// through it before the writer (whose DSN switches the file to WAL)
	// touches the file, and an upgrade snapshots the database through it.
	s.r, err = openDB("sqlite3", abs, url.Values{
		"_query_only":   {"1"},
		"_foreign_keys": {"on"},
		// A reader may be the last connection and run the closing checkpoint.
		"_synchronous": {"FULL"},
	})
	if err != nil {
		return nil, err
	}
	s.r.SetMaxOpenConns(max(4, runtime.GOMAXPROCS(0)))
	if err := s.r.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("store: open read pool: %w", err), s.r.Close())
	}
	if create {
		err = s.refuseForeign(ctx, abs)
	} else {
		err = s.requireSchema(ctx, abs)
	}
	if err != nil {
		return nil, errors.Join(err, s.r.Close())
	}
	s.w, err = openDB(writerDriver, abs, url.Values{
		"_journal_mode": {"WAL"},
		"_synchronous":  {"FULL"},
		"_foreign_keys": {"on"},
		"_txlock":       {"immediate"},
	})
	if err != nil {
		return nil, errors.Join(err, s.r.Close())
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)
	if err := s.checkPragmas(ctx); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	if err := s.migrate(ctx, abs); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

// requireSchema refuses a database that no appliance has migrated: no
// schema_migrations table, or no migration recorded in it.
func (s *Store) requireSchema(ctx context.Context, abs string) error {
	var tables int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&tables); err != nil {
		return fmt.Errorf("store: read the schema of %s: %w", abs, err)
	}
	v := 0
	if tables > 0 {
		var err error
		if v, err = schemaVersion(ctx, s.r); err != nil {
			return err
		}
	}
	if v == 0 {
		return fmt.Errorf("store: %s: the file holds no appliance schema: %w", abs, ErrNoDatabase)
	}
	return nil
}

// refuseForeign refuses, where a database may be created, a file that
// already holds another application's tables (a store.path pointing at the
// wrong file): the migrations would add the appliance's schema to it. A
// file with no tables (a new database begun and not finished) or with the
// appliance's schema is fine.
func (s *Store) refuseForeign(ctx context.Context, abs string) error {
	var tables, ours int
	err := s.r.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(*) FILTER (WHERE name = 'schema_migrations')
		FROM sqlite_master WHERE type = 'table'`).Scan(&tables, &ours)
	if err != nil {
		return fmt.Errorf("store: read the schema of %s: %w", abs, err)
	}
	if tables > 0 && ours == 0 {
		return fmt.Errorf("store: %s holds %d tables of another application and no appliance schema: %w", abs, tables, ErrInvalid)
	}
	return nil
}

// Close closes both pools.
func (s *Store) Close() error {
	var errs []error
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
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

// Existing reports whether path holds a database file to open rather than
// to create: nil for a non-empty regular file, else an error naming the
// path and wrapping ErrNoDatabase (ErrInvalid for something that is not a
// regular file). The schema is checked by OpenExisting when it opens the
// file.
func Existing(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("store: resolve %q: %w", path, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		err = fmt.Errorf("store: %s: %w", abs, errMissing)
	case err != nil:
		return fmt.Errorf("store: stat %s: %w", abs, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("store: %s is not a regular file: %w", abs, ErrInvalid)
	case fi.Size() == 0:
		err = fmt.Errorf("store: %s: %w", abs, errEmpty)
	default:
		return nil
	}
	// A log without its database: the database was deleted or truncated
	// after a crash or while the appliance ran.
	if _, werr := os.Lstat(abs + "-wal"); werr == nil {
		return fmt.Errorf("store: %s: the file is missing or empty, but its write-ahead log %s-wal is there: %w",
			abs, filepath.Base(abs), ErrNoDatabase)
	}
	return err
}

// ensureFile checks the database file (Existing) and, when create allows
// it, creates the parent directory and the file with owner-only
// permissions. SQLite gives its -wal and -shm files the main file's mode,
// so getting the main file right covers them too. An existing file readable
// by others is tightened rather than refused: it is the appliance's own file.
func ensureFile(abs string, log *zap.Logger, create bool) error {
	err := Existing(abs)
	switch {
	case err == nil:
	case create && errors.Is(err, errMissing):
		return createFile(abs)
	case create && errors.Is(err, errEmpty):
		// A new database, begun and not finished (or prepared by the
		// operator): init goes on building it.
	default:
		return err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("store: stat %s: %w", abs, err)
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

// createFile creates a new, empty database file and its directory.
func createFile(abs string) error {
	dir := filepath.Dir(abs)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("store: create directory %s: %w", dir, err)
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, os.ErrExist):
		// Another process created it meanwhile (with the same mode), or
		// the path is a dangling symbolic link, which is not followed.
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("store: create %s: %w", abs, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("store: create %s: %w", abs, err)
	}
	// Chmod as well: the process umask could only remove bits, but a
	// created file must not depend on the caller's umask being sane.
	return errors.Join(f.Chmod(0o600), f.Close())
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
