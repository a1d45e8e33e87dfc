package store

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

// Audit retention (retention.audit). A pass archives the entries from the
// chain's first one up to the newest signed checkpoint old enough, and only
// then deletes them, so that at every moment each entry is in the database,
// in a verified archive file recorded in audit_archives, or both:
//
//  1. the entries and their checkpoints are written to a file in the export
//     format (temporary name, fsync, rename, fsync of the directory);
//  2. the file is read back and verified with the registered audit keys;
//  3. one transaction records it in audit_archives and appends an
//     audit_archived entry to the chain;
//  4. the entries before the checkpointed one are deleted in short batches
//     (the trigger allows nothing else); the checkpointed entry stays as the
//     chain's first.
//
// Before a pass archives or deletes anything it checks that the newest
// archive is recorded alike in audit_archives and in the chain, and that the
// chain starts inside it (archiveState). A pass that dies after 1 or 2
// leaves a file without a record: the next pass writes the same again (or a
// longer one, under another name). One that dies during 4 leaves archived entries
// behind: the next pass deletes them first, once it has checked the file is
// still the one recorded.
const (
	// archiveBatch bounds each deleting transaction: signers waiting for
	// the writer wait for one short batch at most.
	archiveBatch = 5000
	// archivePause is the gap between batches, when signers have the writer
	// to themselves.
	archivePause = 20 * time.Millisecond
)

// ArchiveBounds is the most one archive file holds: a pass archives up to
// the newest old enough checkpoint within both bounds (or, if there is none,
// the first checkpoint after them), so that a file stays a size an operator
// can copy, and its read-back verification, in the serving process, holds a
// bounded number of checkpoints. The first pass over years of entries thus
// writes one file of many; the caller runs passes until one writes nothing.
type ArchiveBounds struct {
	Entries     int64 // entries after the first one in the file
	Checkpoints int64 // checkpoints after the first entry
}

// DefaultArchiveBounds: about 750 MB of JSON lines at most.
var DefaultArchiveBounds = ArchiveBounds{Entries: 1_000_000, Checkpoints: 50_000}

// SetArchiveBounds changes the bounds on the next archive files (tests;
// each bound at least 1).
func (s *Store) SetArchiveBounds(b ArchiveBounds) {
	s.archive = ArchiveBounds{Entries: max(b.Entries, 1), Checkpoints: max(b.Checkpoints, 1)}
}

// ArchiveResult is what one ArchiveAudit pass did.
type ArchiveResult struct {
	File          string // path of the archive written by this pass, "" if none
	From, Through int64  // the entries in that file
	Deleted       int64  // entries deleted by this pass, those an interrupted pass left included
}

// archiveRecord is one row of audit_archives.
type archiveRecord struct {
	audit.Archived
	At int64
}

// archiveName is the file name of the archive of entries from..through.
func archiveName(from, through int64) string {
	return fmt.Sprintf("audit-%012d-%012d.jsonl", from, through)
}

// ArchiveAudit runs one retention pass: it finishes the deletion an
// interrupted pass left, then archives into dir the entries from the first
// one up to the newest checkpoint signed at or before `before`, if there is
// one past the first entry, and deletes them but the checkpointed one. It
// never signs anything: it archives through existing checkpoints only. It
// stops between batches when ctx ends.
func (s *Store) ArchiveAudit(ctx context.Context, dir string, before time.Time) (ArchiveResult, error) {
	var res ArchiveResult
	if dir == "" {
		return res, fmt.Errorf("store: audit archive: no directory: %w", ErrInvalid)
	}
	n, err := s.finishArchive(ctx, dir)
	res.Deleted += n
	if err != nil {
		return res, err
	}
	a, err := s.writeArchive(ctx, dir, before)
	if err != nil || a == nil {
		return res, err
	}
	res.File, res.From, res.Through = filepath.Join(dir, a.File), a.From, a.Through
	n, err = s.deleteArchived(ctx, archiveBatch, archivePause)
	res.Deleted += n
	return res, err
}

// archiveBounds is where the chain starts and where the newest archive in
// audit_archives ends (0: none): what the delete trigger goes by.
func archiveBounds(ctx context.Context, q queryer) (first, archived int64, err error) {
	err = q.QueryRowContext(ctx, `SELECT (SELECT coalesce(min(seq), 0) FROM events),
		(SELECT coalesce(max(through_seq), 0) FROM audit_archives)`).Scan(&first, &archived)
	if err != nil {
		return 0, 0, fmt.Errorf("store: audit archive state: %w", err)
	}
	return first, archived, nil
}

// archiveState is where the chain starts and the newest archive (nil: none
// yet), checked before a pass archives or deletes anything. The newest
// archive is recorded twice and both records must agree: its audit_archives
// row (what the delete trigger goes by) and the chain's newest
// audit_archived entry (what the verifier goes by). The chain must start
// inside that archive, or at entry 1 before any. Anything else means
// entries or records were deleted or added outside retention: a row added
// by hand must not let a pass delete, or launder a deletion into an
// archive record.
func (s *Store) archiveState(ctx context.Context) (int64, *audit.Archived, error) {
	first, archived, err := archiveBounds(ctx, s.r)
	if err != nil {
		return 0, nil, err
	}
	tampered := func(format string, a ...any) error {
		return fmt.Errorf("store: audit archive: %s; nothing is archived or deleted (run appliance check): %w", fmt.Sprintf(format, a...), audit.ErrTampered)
	}
	if archived == 0 {
		if first > 1 {
			return 0, nil, tampered("the chain starts at entry %d, but nothing was ever archived", first)
		}
		return first, nil, nil
	}
	// The newest audit_archived entry is the one the previous pass
	// appended: this reads back the entries appended since.
	var e audit.Entry
	err = s.r.QueryRowContext(ctx, `SELECT seq, kind, fields FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1`, audit.KindArchived).
		Scan(&e.Seq, &e.Kind, &e.Fields)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, tampered("audit_archives holds an archive through entry %d that no audit_archived entry records", archived)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("store: audit archive record: %w", err)
	}
	a, err := audit.ParseArchived(&e)
	if err != nil {
		return 0, nil, tampered("entry %d: %v", e.Seq, err)
	}
	var row archiveRecord
	err = s.r.QueryRowContext(ctx, `SELECT from_seq, through_seq, through_hash, file, sha256, size FROM audit_archives WHERE through_seq = ?`, archived).
		Scan(&row.From, &row.Through, &row.ThroughHash, &row.File, &row.SHA256, &row.Size)
	if err != nil {
		return 0, nil, fmt.Errorf("store: audit archive: %w", err)
	}
	if a.From != row.From || a.Through != row.Through || !bytes.Equal(a.ThroughHash, row.ThroughHash) ||
		a.File != row.File || a.SHA256 != row.SHA256 || a.Size != row.Size {
		return 0, nil, tampered("audit_archives and entry %d disagree about the newest archive", e.Seq)
	}
	if first < a.From || first > a.Through {
		return 0, nil, tampered("the chain starts at entry %d, outside the newest archive (entries %d to %d)", first, a.From, a.Through)
	}
	return first, &a, nil
}

// finishArchive deletes what the newest archive holds but an interrupted
// pass left in the database, after checking the file is still there as
// recorded.
func (s *Store) finishArchive(ctx context.Context, dir string) (int64, error) {
	first, last, err := s.archiveState(ctx)
	if err != nil || last == nil || first == last.Through {
		return 0, err
	}
	path := filepath.Join(dir, last.File)
	sum, size, err := fileDigest(path)
	if err != nil {
		return 0, fmt.Errorf("store: audit archive: entries %d to %d are archived but not yet deleted, and their archive cannot be read (put it back; nothing is deleted until then): %w",
			first, last.Through-1, err)
	}
	if sum != last.SHA256 || size != last.Size {
		return 0, fmt.Errorf("store: audit archive: %s is not the file recorded (sha256 %s, %d bytes; recorded %s, %d bytes): nothing is deleted until it is put back: %w",
			path, sum, size, last.SHA256, last.Size, audit.ErrTampered)
	}
	return s.deleteArchived(ctx, archiveBatch, archivePause)
}

// writeArchive writes, verifies and records the next archive, or returns
// nil when no checkpoint is old enough.
func (s *Store) writeArchive(ctx context.Context, dir string, before time.Time) (*archiveRecord, error) {
	first, last, err := s.archiveState(ctx)
	if err != nil || first == 0 {
		return nil, err
	}
	var archived int64
	if last != nil {
		archived = last.Through
	}
	if first < archived {
		return nil, fmt.Errorf("store: audit archive: entries %d to %d are archived but not yet deleted", first, archived-1)
	}
	c, err := s.archiveCheckpoint(ctx, first, before)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: audit archive: checkpoint: %w", err)
	}
	a := &archiveRecord{Archived: audit.Archived{From: first, Through: c.Seq, ThroughHash: c.Hash, File: archiveName(first, c.Seq)}}
	path := filepath.Join(dir, a.File)
	if err := s.writeArchiveFile(ctx, path, a.From, a.Through); err != nil {
		return nil, fmt.Errorf("store: audit archive %s: %w", path, err)
	}
	if a.SHA256, a.Size, err = s.checkArchiveFile(ctx, path, a.Archived); err != nil {
		return nil, fmt.Errorf("store: audit archive %s: %w", path, err)
	}
	// The configuration hash in force goes into the record, so that the
	// next start still notices a changed configuration once the entries
	// that recorded it are archived (LastConfigSHA). It is read before the
	// transaction (the entry holding it may be far back), and again inside
	// it among the entries appended since.
	head, _, err := s.AuditHead(ctx)
	if err != nil {
		return nil, err
	}
	sha, err := s.LastConfigSHA(ctx)
	if err != nil {
		return nil, err
	}
	a.At = s.now().UTC().UnixNano()
	err = s.WriteTx(ctx, func(tx *Tx) error {
		ctx := context.WithoutCancel(ctx)
		_, now, err := archiveBounds(ctx, tx)
		if err != nil {
			return err
		}
		if now != archived {
			return fmt.Errorf("store: audit archive: another pass recorded an archive meanwhile: %w", ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_archives (through_seq, from_seq, through_hash, file, sha256, size, at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, a.Through, a.From, a.ThroughHash, a.File, a.SHA256, a.Size, a.At); err != nil {
			return fmt.Errorf("store: record audit archive: %w", err)
		}
		rec := a.Record()
		newer, err := lastConfigSHA(ctx, tx, head)
		switch {
		case err != nil:
			return err
		case newer != "":
			rec.Fields["config_sha256"] = newer
		case sha != "":
			rec.Fields["config_sha256"] = sha
		}
		return s.Audit(ctx, tx, rec)
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// archiveCheckpoint picks where the next archive ends: the newest
// checkpoint signed at or before `before` within the bounds on one file
// (s.archive after first), or, when none lies within them, the oldest one
// past them that is old enough. sql.ErrNoRows: none is old enough.
func (s *Store) archiveCheckpoint(ctx context.Context, first int64, before time.Time) (audit.Checkpoint, error) {
	limit := first + s.archive.Entries
	var nth int64
	err := s.r.QueryRowContext(ctx, `SELECT seq FROM audit_checkpoints WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?`,
		first, s.archive.Checkpoints-1).Scan(&nth)
	switch {
	case err == nil:
		limit = min(limit, nth)
	case !errors.Is(err, sql.ErrNoRows):
		return audit.Checkpoint{}, err
	}
	var c audit.Checkpoint
	at := before.UTC().UnixNano()
	err = s.r.QueryRowContext(ctx, `SELECT seq, hash, at, key_id, signature FROM audit_checkpoints
		WHERE seq > ? AND seq <= ? AND at <= ? ORDER BY seq DESC LIMIT 1`, first, limit, at).
		Scan(&c.Seq, &c.Hash, &c.At, &c.KeyID, &c.Signature)
	if errors.Is(err, sql.ErrNoRows) {
		// Checkpoints are signed in order of seq and of time, so a
		// checkpoint past the bounds is old enough only when none lies
		// within them: take the first (a file larger than the bounds).
		err = s.r.QueryRowContext(ctx, `SELECT seq, hash, at, key_id, signature FROM audit_checkpoints
			WHERE seq > ? AND at <= ? ORDER BY seq LIMIT 1`, limit, at).
			Scan(&c.Seq, &c.Hash, &c.At, &c.KeyID, &c.Signature)
	}
	return c, err
}

// writeArchiveFile exports entries from..through, with their checkpoints,
// to path: a temporary file in the same directory, fsynced, renamed to
// path, and the directory fsynced. A file already at path is never
// replaced: one left by a pass that died before recording it holds the
// same bytes (an export of the same entries is the same) and is kept; one
// with other bytes is an archive of another history (the database's before
// a restore, say) and the pass refuses until it is moved away.
func (s *Store) writeArchiveFile(ctx context.Context, path string, from, through int64) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	n, err := s.exportRange(ctx, f, from, through)
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
		return err
	}
	if n != through-from+1 {
		return fmt.Errorf("%d entries exported, want %d (entries %d to %d)", n, through-from+1, from, through)
	}
	if sum, size, err := fileDigest(path); err == nil {
		tsum, tsize, err := fileDigest(tmp)
		if err != nil {
			return err
		}
		if tsum != sum || tsize != size {
			return fmt.Errorf("a different file is already there (an archive of another history?): move it away; nothing is archived until then: %w", os.ErrExist)
		}
		return errors.Join(os.Remove(tmp), syncFile(dir))
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncFile(dir)
}

// exportRange exports entries from..through with their checkpoints, read
// in one read transaction: the entries and the pages of checkpoints as of
// one moment.
func (s *Store) exportRange(ctx context.Context, w io.Writer, from, through int64) (int64, error) {
	tx, err := readTx(ctx, s.r)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	return exportAudit(ctx, tx, w, from-1, through)
}

// checkArchiveFile reads the file back and verifies it with the registered
// audit keys: entries want.From..want.Through, reaching entry Through with
// the hash its checkpoint signs. It returns the file's SHA-256 and size.
func (s *Store) checkArchiveFile(ctx context.Context, path string, want audit.Archived) (string, int64, error) {
	aks, err := s.AuditKeys(ctx)
	if err != nil {
		return "", 0, err
	}
	keys := make([]*ecdsa.PublicKey, 0, len(aks))
	for _, k := range aks {
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.PublicKey)
		if err != nil {
			return "", 0, fmt.Errorf("audit key %s: %w", k.KeyID, err)
		}
		keys = append(keys, pub)
	}
	if err := verifyArchiveFile(path, keys, want); err != nil {
		return "", 0, fmt.Errorf("written, but it does not verify: %w", err)
	}
	return fileDigest(path)
}

// fileDigest is the SHA-256 (hex) and size of the file at path.
func fileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// deleteArchived deletes the archived entries still in the database, limit
// per transaction, pausing between transactions, until none is left or ctx
// ends. It returns how many it deleted.
func (s *Store) deleteArchived(ctx context.Context, limit int, pause time.Duration) (int64, error) {
	var total int64
	for {
		n, err := s.deleteArchivedBatch(ctx, limit)
		total += n
		if err != nil || n < int64(limit) {
			return total, err
		}
		select {
		case <-ctx.Done():
			return total, ctx.Err()
		case <-time.After(pause):
		}
	}
}

// deleteArchivedBatch deletes the oldest archived entries still in the
// database, at most limit, in one transaction.
func (s *Store) deleteArchivedBatch(ctx context.Context, limit int) (int64, error) {
	if limit < 1 {
		return 0, fmt.Errorf("store: delete archived entries: limit %d: %w", limit, ErrInvalid)
	}
	var n int64
	err := s.WriteTx(ctx, func(tx *Tx) error {
		ctx := context.WithoutCancel(ctx)
		first, archived, err := archiveBounds(ctx, tx)
		if err != nil || first >= archived {
			return err
		}
		// The last checkpoint's entry is the one the token's audit head
		// names, compared at every unseal: it must stay. Archives end at a
		// checkpointed entry and only the entries before it go, so this
		// holds by construction; a database where it does not is refused.
		var lastCP int64
		if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM audit_checkpoints`).Scan(&lastCP); err != nil {
			return fmt.Errorf("store: delete archived entries: %w", err)
		}
		if archived > lastCP {
			return fmt.Errorf("store: the newest audit archive ends at entry %d, after the last checkpoint (%d): nothing is deleted: %w", archived, lastCP, audit.ErrTampered)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE seq < ?`, min(first+int64(limit), archived))
		if err != nil {
			return fmt.Errorf("store: delete archived entries: %w", err)
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// ArchivedCheckpoint answers for a token's audit head whose entry is no
// longer in the database: when entry seq was archived (it comes before the
// chain's first entry and within a recorded archive), it returns the hash
// the database's signed checkpoint of entry seq holds (retention keeps the
// token head's checkpoint: PruneArchivedCheckpointsTx) and the chain's
// first entry. Otherwise it returns an error wrapping ErrNotFound.
func (s *Store) ArchivedCheckpoint(ctx context.Context, seq int64) (hash []byte, first int64, err error) {
	first, archived, err := archiveBounds(ctx, s.r)
	if err != nil {
		return nil, 0, err
	}
	if seq < 1 || seq >= first || seq > archived {
		return nil, 0, fmt.Errorf("store: audit entry %d is not archived: %w", seq, ErrNotFound)
	}
	err = s.r.QueryRowContext(ctx, `SELECT hash FROM audit_checkpoints WHERE seq = ?`, seq).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, fmt.Errorf("store: no checkpoint of archived entry %d: %w", seq, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("store: checkpoint of entry %d: %w", seq, err)
	}
	return hash, first, nil
}

// PruneArchivedCheckpointsTx deletes, inside tx, at most limit signed
// checkpoints of archived entries: those before the chain's first entry
// and before the end of the newest recorded archive (the only ones the
// delete trigger of migration 11 lets go), oldest first, all but the
// checkpoint of entry keep. It returns how many it deleted.
//
// They are in the archive files, which carry their own checkpoints, and
// nothing in the database needs them any more, with one exception the
// caller names in keep: the checkpoint of the token's audit head. The
// unseal compares that head with the database, and when its entry was
// archived (writes to the token failed for longer than retention.audit)
// the database's checkpoint of it is what stands in for the entry
// (ArchivedCheckpoint). The checkpoint of the chain's first entry, which
// the newest archive ends at, always stays.
func PruneArchivedCheckpointsTx(ctx context.Context, tx *Tx, keep int64, limit int) (int64, error) {
	if limit < 1 {
		return 0, fmt.Errorf("store: prune archived checkpoints: limit %d: %w", limit, ErrInvalid)
	}
	first, archived, err := archiveBounds(ctx, tx)
	if err != nil || archived == 0 {
		return 0, err
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM audit_checkpoints WHERE seq IN
		(SELECT seq FROM audit_checkpoints WHERE seq < ? AND seq <> ? ORDER BY seq LIMIT ?)`,
		min(first, archived), keep, limit)
	if err != nil {
		return 0, fmt.Errorf("store: prune archived checkpoints: %w", err)
	}
	return res.RowsAffected()
}
