package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

// appendOnlyTriggers make the chain append-only for every SQL client, not
// just for this code: an UPDATE or DELETE on an entry or a checkpoint
// aborts. (Someone with the file can drop them; the chain and the signed
// checkpoints are what catch that.) They are migration 7's, and stay as
// released: migration 10 replaces events_append_only_delete with one that
// lets archived entries go (0010_audit_archives.sql), and migration 11
// audit_checkpoints_append_only_delete with one that lets their checkpoints
// go (0011_checkpoint_retention.sql), so new and upgraded databases end
// with the same triggers.
const appendOnlyTriggers = `
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
CREATE TRIGGER audit_checkpoints_append_only_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_append_only_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
`

// chainExistingEvents is migration 7's Go step: it links the events recorded
// before the chain existed, in seq order, then installs the triggers.
func chainExistingEvents(ctx context.Context, tx *Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT seq, at, kind, principal, detail FROM events ORDER BY seq`)
	if err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	var entries []audit.Entry
	for rows.Next() {
		var e audit.Entry
		if err := rows.Scan(&e.Seq, &e.At, &e.Kind, &e.Principal, &e.Detail); err != nil {
			rows.Close()
			return err
		}
		entries = append(entries, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	prev := audit.Genesis()
	for i := range entries {
		e := &entries[i]
		e.Fields, e.PrevHash = "{}", prev
		e.Hash = e.ComputeHash()
		if _, err := tx.ExecContext(ctx, `UPDATE events SET fields = ?, prev_hash = ?, hash = ? WHERE seq = ?`,
			e.Fields, e.PrevHash, e.Hash, e.Seq); err != nil {
			return fmt.Errorf("chain event %d: %w", e.Seq, err)
		}
		prev = e.Hash
	}
	if _, err := tx.ExecContext(ctx, appendOnlyTriggers); err != nil {
		return fmt.Errorf("install append-only triggers: %w", err)
	}
	return nil
}

// AppendEvent appends an audit entry without sensitive fields inside tx.
// detail must never hold a secret: callers pass share indexes, never shares.
func AppendEvent(ctx context.Context, tx *Tx, kind, principal, detail string) error {
	return appendAudit(ctx, tx, audit.Record{Kind: kind, Principal: principal, Detail: detail}, nil)
}

// RecordEvent appends one event in its own transaction.
func (s *Store) RecordEvent(ctx context.Context, kind, principal, detail string) error {
	return s.WriteTx(ctx, func(tx *Tx) error { return AppendEvent(ctx, tx, kind, principal, detail) })
}

// Audit appends rec inside tx, HMACing its sensitive fields with the key set
// by SetAuditKey (or redacting them while there is none). If it fails, the
// caller's transaction must fail with it: that is what makes the audit fail
// closed.
func (s *Store) Audit(ctx context.Context, tx *Tx, rec audit.Record) error {
	return appendAudit(ctx, tx, rec, s.redactor.Load())
}

// RecordAudit appends rec in its own transaction.
func (s *Store) RecordAudit(ctx context.Context, rec audit.Record) error {
	return s.WriteTx(ctx, func(tx *Tx) error { return s.Audit(ctx, tx, rec) })
}

// SetAuditKey sets (nil: clears) the HMAC key for sensitive audit fields.
func (s *Store) SetAuditKey(r *audit.Redactor) { s.redactor.Store(r) }

// AuditKeyID is the id of the HMAC key in use, "" while there is none.
func (s *Store) AuditKeyID() string { return s.redactor.Load().ID() }

func appendAudit(ctx context.Context, tx *Tx, rec audit.Record, red *audit.Redactor) error {
	var seq int64
	var prev []byte
	err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("store: audit head: %w", err)
	}
	e, err := rec.Build(seq, prev, time.Now().UTC().UnixNano(), red)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (seq, at, kind, principal, detail, fields, prev_hash, hash)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, e.Seq, e.At, e.Kind, e.Principal, e.Detail, e.Fields, e.PrevHash, e.Hash); err != nil {
		return fmt.Errorf("store: append audit entry: %w", err)
	}
	return nil
}

// AuditHead is the newest entry's seq and hash (0 and nil for an empty chain).
func (s *Store) AuditHead(ctx context.Context) (int64, []byte, error) {
	var seq int64
	var h []byte
	err := s.r.QueryRowContext(ctx, `SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &h)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("store: audit head: %w", err)
	}
	return seq, h, nil
}

// AuditEntryHash returns the hash of entry seq, or ErrNotFound.
func (s *Store) AuditEntryHash(ctx context.Context, seq int64) ([]byte, error) {
	var h []byte
	err := s.r.QueryRowContext(ctx, `SELECT hash FROM events WHERE seq = ?`, seq).Scan(&h)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: audit entry %d: %w", seq, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: audit entry %d: %w", seq, err)
	}
	return h, nil
}

// AuditEntries calls fn for every entry after seq, oldest first, at most
// limit (0: all). It streams: memory does not grow with the chain.
func (s *Store) AuditEntries(ctx context.Context, after int64, limit int, fn func(*audit.Entry) error) error {
	return scanAuditEntries(ctx, s.r, after, math.MaxInt64, limit, fn)
}

type rowsQueryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// scanAuditEntries calls fn for the entries after seq after up to seq
// through, at most limit (0: all).
func scanAuditEntries(ctx context.Context, q rowsQueryer, after, through int64, limit int, fn func(*audit.Entry) error) error {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	rows, err := q.QueryContext(ctx, `SELECT seq, at, kind, principal, detail, fields, prev_hash, hash
		FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?`, after, through, limit)
	if err != nil {
		return fmt.Errorf("store: read audit entries: %w", err)
	}
	defer rows.Close()
	var e audit.Entry
	for rows.Next() {
		if err := rows.Scan(&e.Seq, &e.At, &e.Kind, &e.Principal, &e.Detail, &e.Fields, &e.PrevHash, &e.Hash); err != nil {
			return fmt.Errorf("store: read audit entry: %w", err)
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	return rows.Err()
}

// AddCheckpoint records a signed head.
func (s *Store) AddCheckpoint(ctx context.Context, c audit.Checkpoint) error {
	return s.WriteTx(ctx, func(tx *Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (seq) DO NOTHING`, c.Seq, c.Hash, c.At, c.KeyID, c.Signature)
		if err != nil {
			return fmt.Errorf("store: add checkpoint: %w", err)
		}
		return nil
	})
}

// Checkpoints returns every checkpoint, oldest first. There is one every
// audit.checkpoint_interval: prefer CheckpointsIn on a serving path.
func (s *Store) Checkpoints(ctx context.Context) ([]audit.Checkpoint, error) {
	return readCheckpoints(ctx, s.r)
}

// CheckpointsIn returns the checkpoints of the entries after seq after up
// to seq through, oldest first.
func (s *Store) CheckpointsIn(ctx context.Context, after, through int64) ([]audit.Checkpoint, error) {
	return readCheckpointsIn(ctx, s.r, after, through)
}

func readCheckpoints(ctx context.Context, q rowsQueryer) ([]audit.Checkpoint, error) {
	return readCheckpointsIn(ctx, q, 0, math.MaxInt64)
}

// readCheckpointsIn returns the checkpoints of the entries after seq after
// up to seq through, oldest first.
func readCheckpointsIn(ctx context.Context, q rowsQueryer, after, through int64) ([]audit.Checkpoint, error) {
	return readCheckpointsLimit(ctx, q, after, through, -1)
}

// readCheckpointsLimit is readCheckpointsIn, at most limit of them (-1: all).
func readCheckpointsLimit(ctx context.Context, q rowsQueryer, after, through int64, limit int) ([]audit.Checkpoint, error) {
	rows, err := q.QueryContext(ctx, `SELECT seq, hash, at, key_id, signature FROM audit_checkpoints
		WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?`, after, through, limit)
	if err != nil {
		return nil, fmt.Errorf("store: read checkpoints: %w", err)
	}
	defer rows.Close()
	var out []audit.Checkpoint
	for rows.Next() {
		var c audit.Checkpoint
		if err := rows.Scan(&c.Seq, &c.Hash, &c.At, &c.KeyID, &c.Signature); err != nil {
			return nil, fmt.Errorf("store: read checkpoint: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// LastCheckpoint returns the newest checkpoint, or ErrNotFound.
func (s *Store) LastCheckpoint(ctx context.Context) (audit.Checkpoint, error) {
	var c audit.Checkpoint
	err := s.r.QueryRowContext(ctx, `SELECT seq, hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1`).
		Scan(&c.Seq, &c.Hash, &c.At, &c.KeyID, &c.Signature)
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("store: no checkpoint yet: %w", ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("store: last checkpoint: %w", err)
	}
	return c, nil
}

// AuditKey is an audit signing key's registration.
type AuditKey struct {
	KeyID     string
	HSMID     []byte
	PublicKey []byte // 65-byte uncompressed P-256 point
	CreatedAt time.Time
}

// ActiveAuditKey returns the audit key in use, or ErrNotFound.
func (s *Store) ActiveAuditKey(ctx context.Context) (AuditKey, error) {
	var k AuditKey
	var at int64
	err := s.r.QueryRowContext(ctx, `SELECT key_id, hsm_id, public_key, created_at FROM audit_keys
		WHERE retired_at = 0 ORDER BY created_at DESC LIMIT 1`).Scan(&k.KeyID, &k.HSMID, &k.PublicKey, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return k, fmt.Errorf("store: no audit key: %w", ErrNotFound)
	}
	if err != nil {
		return k, fmt.Errorf("store: audit key: %w", err)
	}
	k.CreatedAt = time.Unix(0, at).UTC()
	return k, nil
}

// AuditKeys returns every audit key ever registered, oldest first.
func (s *Store) AuditKeys(ctx context.Context) ([]AuditKey, error) {
	return readAuditKeys(ctx, s.r)
}

func readAuditKeys(ctx context.Context, q rowsQueryer) ([]AuditKey, error) {
	rows, err := q.QueryContext(ctx, `SELECT key_id, hsm_id, public_key, created_at FROM audit_keys ORDER BY created_at`)
	if err != nil {
		return nil, fmt.Errorf("store: audit keys: %w", err)
	}
	defer rows.Close()
	var out []AuditKey
	for rows.Next() {
		var k AuditKey
		var at int64
		if err := rows.Scan(&k.KeyID, &k.HSMID, &k.PublicKey, &at); err != nil {
			return nil, err
		}
		k.CreatedAt = time.Unix(0, at).UTC()
		out = append(out, k)
	}
	return out, rows.Err()
}

// RegisterAuditKey records a new audit key, retiring the previous one, with
// an audit entry, in one transaction.
func (s *Store) RegisterAuditKey(ctx context.Context, k AuditKey) error {
	now := s.now().UTC().UnixNano()
	return s.WriteTx(ctx, func(tx *Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE audit_keys SET retired_at = ? WHERE retired_at = 0`, now); err != nil {
			return fmt.Errorf("store: retire audit key: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_keys (key_id, hsm_id, public_key, created_at) VALUES (?, ?, ?, ?)`,
			k.KeyID, k.HSMID, k.PublicKey, now); err != nil {
			return fmt.Errorf("store: register audit key: %w", err)
		}
		return appendAudit(ctx, tx, audit.Record{Kind: "audit_key_created", Detail: "audit checkpoint key " + k.KeyID,
			Fields: map[string]string{"key_id": k.KeyID, "public_key": fmt.Sprintf("%x", k.PublicKey)}}, nil)
	})
}

// BackupRecipient returns the public key backups are encrypted to (its
// text form), or ErrNotFound before the quorum has registered one.
func (s *Store) BackupRecipient(ctx context.Context) (string, error) {
	var k string
	err := s.r.QueryRowContext(ctx, `SELECT public_key FROM backup_recipient WHERE id = 1`).Scan(&k)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("store: no backup recipient: %w", ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("store: backup recipient: %w", err)
	}
	return k, nil
}

// SetBackupRecipientTx records the backup public key inside tx (the
// ceremony's, a re-share's), audited.
func SetBackupRecipientTx(ctx context.Context, tx *Tx, pub string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO backup_recipient (id, public_key, created_at) VALUES (1, ?, ?)
		ON CONFLICT (id) DO UPDATE SET public_key = excluded.public_key, created_at = excluded.created_at`, pub, time.Now().UTC().UnixNano())
	if err != nil {
		return fmt.Errorf("store: set backup recipient: %w", err)
	}
	return appendAudit(ctx, tx, audit.Record{Kind: "backup_recipient", Detail: "backups are encrypted to this key; only a quorum can derive its private half",
		Fields: map[string]string{"public_key": pub}}, nil)
}

// LastConfigSHA returns the configuration hash of the newest start or
// reload entry that recorded one ("" if none). An archive record carries
// the hash in force when it was written, so the comparison at start
// survives the archiving of those entries.
func (s *Store) LastConfigSHA(ctx context.Context) (string, error) {
	return lastConfigSHA(ctx, s.r, 0)
}

// lastConfigSHA is LastConfigSHA among the entries after seq after.
func lastConfigSHA(ctx context.Context, q queryer, after int64) (string, error) {
	var sha sql.NullString
	err := q.QueryRowContext(ctx, `SELECT json_extract(fields, '$.config_sha256') FROM events
		WHERE seq > ? AND kind IN ('start', 'config_reload', 'config_changed', 'audit_archived') AND json_extract(fields, '$.config_sha256') IS NOT NULL
		ORDER BY seq DESC LIMIT 1`, after).Scan(&sha)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("store: last configuration hash: %w", err)
	}
	return sha.String, nil
}
