package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// migrationFiles holds the schema history. Files are named NNNN_name.sql,
// numbered from 0001 without gaps, and never edited once released: a change
// is a new file. There are no down migrations; restoring a backup is the way back.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// goSteps run after a migration's SQL, in the same transaction, for what SQL
// cannot do (hashing, 256-bit sums). Like the SQL files, a released step
// never changes.
var goSteps = map[int]func(ctx context.Context, tx *Tx) error{
	7: chainExistingEvents,
	9: sumPolicyUsage,
}

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations parses the embedded files. A gap or duplicate is a build
// mistake, reported at Open rather than half-applied.
func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("store: read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("store: migration file %q is not NNNN_name.sql", e.Name())
		}
		body, err := migrationFiles.ReadFile(path.Join("migrations", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("store: read migration %s: %w", e.Name(), err)
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("store: migrations must be numbered 1..n without gaps; found %s at position %d", m.name, i+1)
		}
	}
	return ms, nil
}

// migrate applies every migration newer than the database, each in its own
// write transaction together with its schema_migrations row, so a crash
// leaves the database at some whole version. The version is re-read inside
// each transaction: another process may have migrated in the meantime. The
// first iteration always runs, so a newer database is refused even when
// there is nothing to apply.
//
// Before upgrading a database that already has a schema, it writes a
// consistent copy beside it (<path>.pre-v<N>-<time>.db): migrations are
// forward-only, so that copy is the way back.
func (s *Store) migrate(ctx context.Context, path string) (rerr error) {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	known := len(ms)
	if err := s.backupBeforeUpgrade(ctx, path, known); err != nil {
		return err
	}
	// A migration may build an index over a whole table: its sort spills to
	// temporary files, not to the writer's in-memory temp store (store.go).
	if _, err := s.w.ExecContext(ctx, "PRAGMA temp_store = FILE"); err != nil {
		return fmt.Errorf("store: temp_store for migrations: %w", err)
	}
	defer func() {
		if _, err := s.w.ExecContext(context.WithoutCancel(ctx), "PRAGMA temp_store = MEMORY"); err != nil && rerr == nil {
			rerr = fmt.Errorf("store: temp_store after migrations: %w", err)
		}
	}()
	err = s.WriteTx(ctx, func(tx *Tx) error {
		_, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    INTEGER PRIMARY KEY,
			name       TEXT    NOT NULL,
			applied_at INTEGER NOT NULL
		) STRICT`)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: create schema_migrations: %w", err)
	}
	for _, m := range ms {
		applied := false
		err := s.WriteTx(ctx, func(tx *Tx) error {
			cur, err := schemaVersion(ctx, tx)
			if err != nil {
				return err
			}
			if cur > known {
				return fmt.Errorf("store: database is at version %d, this binary knows up to %d: %w", cur, known, ErrSchemaTooNew)
			}
			if cur >= m.version {
				return nil
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("store: apply migration %s: %w", m.name, err)
			}
			if step := goSteps[m.version]; step != nil {
				if err := step(ctx, tx); err != nil {
					return fmt.Errorf("store: apply migration %s: %w", m.name, err)
				}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, s.now().UTC().UnixNano()); err != nil {
				return fmt.Errorf("store: record migration %s: %w", m.name, err)
			}
			applied = true
			return nil
		})
		if err != nil {
			return err
		}
		if applied {
			s.log.Info("applied database migration", zap.Int("version", m.version), zap.String("name", m.name))
		}
	}
	return nil
}

// backupBeforeUpgrade snapshots a database whose schema is older than known
// (and not new): the copy a failed or regretted upgrade goes back to.
func (s *Store) backupBeforeUpgrade(ctx context.Context, path string, known int) error {
	var exists int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE name = 'schema_migrations'`).Scan(&exists); err != nil {
		return fmt.Errorf("store: read schema: %w", err)
	}
	if exists == 0 {
		return nil
	}
	cur, err := schemaVersion(ctx, s.r)
	if err != nil || cur == 0 || cur >= known {
		return err
	}
	dest := fmt.Sprintf("%s.pre-v%d-%s.db", path, known, s.now().UTC().Format("20060102T150405Z"))
	if err := s.Snapshot(ctx, dest); err != nil {
		return fmt.Errorf("store: back up before upgrading from schema %d: %w", cur, err)
	}
	s.log.Info("database backed up before upgrading its schema", zap.Int("from", cur), zap.Int("to", known), zap.String("backup", dest))
	return nil
}

// SchemaVersion returns the highest migration applied to the database.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	return schemaVersion(ctx, s.r)
}

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func schemaVersion(ctx context.Context, q queryer) (int, error) {
	var v int
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("store: read schema version: %w", err)
	}
	return v, nil
}
