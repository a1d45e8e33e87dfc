package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/mattn/go-sqlite3"
)

// snapshotSidecars are the files SQLite may keep next to a database. A stale
// one beside a fresh destination would be read as that database's journal or
// WAL (a "hot journal" is rolled back into the file on open), so Snapshot
// refuses to start while any of them exists.
var snapshotSidecars = []string{"-journal", "-wal", "-shm"}

// Snapshot writes a consistent copy of the live database to dest while the
// appliance keeps committing. dest must not exist: a snapshot never replaces
// a file, because the file it would replace might be the previous good
// backup. dest is created 0600 (it holds everything the database holds),
// written with SQLite's online backup API, switched to a rollback journal so
// that the copy is one self-contained file, checked with PRAGMA
// integrity_check, and fsynced together with its directory. On any error the
// partial file is removed, so a file at dest means a complete, checked copy.
//
// The source is a connection from the query-only read pool: the backup API
// only reads the source, so query_only does not get in its way, and the
// writer connection stays free for the appliance. The copy is made in a
// single sqlite3_backup_step(-1), which reads every page inside one read
// transaction. In WAL mode that transaction does not block writers, and it is
// what makes the copy consistent: a copy taken in several steps is restarted
// by SQLite whenever another connection commits between steps, so under a
// steady write load it might never finish. The cost is that ctx is only
// checked between attempts, not during the copy, which for a database of tens
// of megabytes takes well under a second.
func (s *Store) Snapshot(ctx context.Context, dest string) (err error) {
	if dest == "" {
		return fmt.Errorf("store: snapshot: empty destination: %w", ErrInvalid)
	}
	abs, err := filepath.Abs(dest)
	if err != nil {
		return fmt.Errorf("store: snapshot: resolve %q: %w", dest, err)
	}
	for _, suffix := range snapshotSidecars {
		if _, err := os.Lstat(abs + suffix); err == nil {
			return fmt.Errorf("store: snapshot: %s exists; remove it first: %w", abs+suffix, os.ErrExist)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("store: snapshot: %w", err)
		}
	}
	// O_EXCL refuses an existing file, and also a symlink planted at dest.
	f, err := os.OpenFile(abs, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("store: snapshot: create %s: %w", abs, err)
	}
	// From here on the file is ours: remove it, and any sidecar SQLite made
	// for it, unless everything succeeds.
	defer func() {
		if err != nil {
			for _, p := range []string{abs, abs + "-journal", abs + "-wal", abs + "-shm"} {
				_ = os.Remove(p)
			}
		}
	}()
	err = errors.Join(f.Chmod(0o600), f.Close())
	if err != nil {
		return fmt.Errorf("store: snapshot: create %s: %w", abs, err)
	}

	if err = s.backupTo(ctx, abs); err != nil {
		return err
	}
	if err = integrityCheck(ctx, abs); err != nil {
		return err
	}
	if err = syncFile(abs); err != nil {
		return err
	}
	if err = syncFile(filepath.Dir(abs)); err != nil {
		return err
	}
	return nil
}

// backupTo copies the live database into the empty file at abs and leaves it
// in rollback-journal mode, so the copy needs no -wal or -shm to be read and
// can be opened read-only (by an inspector, or from read-only media).
func (s *Store) backupTo(ctx context.Context, abs string) (err error) {
	dstDB, err := openDB("sqlite3", abs, url.Values{})
	if err != nil {
		return err
	}
	dstDB.SetMaxOpenConns(1)
	defer func() { err = errors.Join(err, closeErr("close destination", dstDB.Close())) }()

	dstConn, err := dstDB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("store: snapshot: open destination: %w", err)
	}
	defer func() { err = errors.Join(err, closeErr("release destination", dstConn.Close())) }()
	srcConn, err := s.r.Conn(ctx)
	if err != nil {
		return fmt.Errorf("store: snapshot: open source: %w", err)
	}
	defer func() { err = errors.Join(err, closeErr("release source", srcConn.Close())) }()

	err = srcConn.Raw(func(sc any) error {
		src, ok := sc.(*sqlite3.SQLiteConn)
		if !ok {
			return fmt.Errorf("store: snapshot: source driver connection is %T", sc)
		}
		return dstConn.Raw(func(dc any) error {
			dst, ok := dc.(*sqlite3.SQLiteConn)
			if !ok {
				return fmt.Errorf("store: snapshot: destination driver connection is %T", dc)
			}
			return copyAll(ctx, dst, src)
		})
	})
	if err != nil {
		return err
	}
	// The copied header says WAL, like the source. Switching back here
	// folds any WAL content into the main file before it is checked.
	var mode string
	if err := dstConn.QueryRowContext(ctx, "PRAGMA journal_mode=DELETE").Scan(&mode); err != nil {
		return fmt.Errorf("store: snapshot: set journal mode: %w", err)
	}
	if mode != "delete" {
		return fmt.Errorf("store: snapshot: journal mode is %q after switching to delete", mode)
	}
	return nil
}

// copyAll runs one backup_step(-1), retrying while the source is busy (a
// WAL recovery, an exclusive lock held by an operator's shell) for at most
// busyTimeout, as any other statement would wait.
func copyAll(ctx context.Context, dst, src *sqlite3.SQLiteConn) (err error) {
	b, err := dst.Backup("main", src, "main")
	if err != nil {
		return fmt.Errorf("store: snapshot: start backup: %w", err)
	}
	defer func() {
		// Finish repeats the error of a failed step; report it only when
		// it is news.
		if ferr := b.Finish(); err == nil {
			err = closeErr("finish backup", ferr)
		}
	}()
	deadline := time.Now().Add(busyTimeout)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("store: snapshot: %w", err)
		}
		// Step reports SQLITE_BUSY and SQLITE_LOCKED as (false, nil).
		done, err := b.Step(-1)
		if err != nil {
			return fmt.Errorf("store: snapshot: backup step: %w", err)
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("store: snapshot: source database stayed locked for %v", busyTimeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("store: snapshot: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// integrityCheck opens the finished copy on a fresh, read-only connection and
// requires PRAGMA integrity_check to answer exactly "ok". It is the full check
// rather than quick_check because a backup is read rarely and must be right
// when it is: the extra cost (index contents against tables) is paid once.
func integrityCheck(ctx context.Context, abs string) (err error) {
	db, err := openDB("sqlite3", abs, url.Values{"mode": {"ro"}, "_query_only": {"1"}})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeErr("close check", db.Close())) }()
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("store: snapshot: integrity_check: %w", err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("store: snapshot: integrity_check: %w", err)
		}
		problems = append(problems, line)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("store: snapshot: integrity_check: %w", err)
	}
	if len(problems) != 1 || problems[0] != "ok" {
		return fmt.Errorf("store: snapshot: integrity_check: %q: %w", problems, ErrIntegrity)
	}
	return nil
}

// syncFile fsyncs a file or directory. SQLite syncs what it writes, but the
// directory entry of a newly created file is only durable once the directory
// is synced, and the journal-mode switch must be on disk before Snapshot says
// the copy exists.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store: snapshot: sync %s: %w", path, err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("store: snapshot: sync %s: %w", path, err)
	}
	return nil
}

func closeErr(what string, err error) error {
	if err == nil || errors.Is(err, sql.ErrConnDone) {
		return nil
	}
	return fmt.Errorf("store: snapshot: %s: %w", what, err)
}
