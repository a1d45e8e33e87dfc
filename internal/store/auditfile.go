package store

import (
	"context"
	"crypto/ecdsa"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"

	"github.com/custodysigner/appliance/internal/audit"
)

// AuditFile reads the audit chain of a database file without the appliance:
// read-only, never migrated, so an auditor can verify a copy (or the live
// file) with nothing but the audit public key.
type AuditFile struct {
	db *sql.DB
}

// OpenAuditFile opens path read-only. It refuses a file without the audit
// chain (schema older than 7).
func OpenAuditFile(ctx context.Context, path string) (*AuditFile, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	u := url.URL{Scheme: "file", Path: abs, RawQuery: url.Values{"mode": {"ro"}, "_query_only": {"1"}}.Encode()}
	db, err := sql.Open("sqlite3", u.String())
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	db.SetMaxOpenConns(2)
	v, err := schemaVersion(ctx, db)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("store: %s is not an appliance database: %w", abs, err), db.Close())
	}
	if v < 7 {
		return nil, errors.Join(fmt.Errorf("store: %s is at schema %d, before the audit chain (7)", abs, v), db.Close())
	}
	return &AuditFile{db: db}, nil
}

// Close closes the file.
func (f *AuditFile) Close() error { return f.db.Close() }

// Entries streams entries after seq after, oldest first.
func (f *AuditFile) Entries(ctx context.Context, after int64, fn func(*audit.Entry) error) error {
	return scanAuditEntries(ctx, f.db, after, math.MaxInt64, 0, fn)
}

// Checkpoints returns every checkpoint.
func (f *AuditFile) Checkpoints(ctx context.Context) ([]audit.Checkpoint, error) {
	return readCheckpoints(ctx, f.db)
}

// Verify checks the whole chain in the file against the given audit keys
// and anchors (seq → hash recorded earlier). The chain may start after
// entry 1 only where an audit_archived entry in it says the entries before
// were archived (Report.FirstSeq).
//
// Everything is read in one read transaction, so a live database is seen
// as of one moment while the appliance goes on appending. Checkpoints (one
// every audit.checkpoint_interval: millions in a year) are read in batches
// as the entries reach them and let go once passed, so memory stays bounded.
func (f *AuditFile) Verify(ctx context.Context, keys []*ecdsa.PublicKey, anchors map[int64][]byte) (audit.Report, error) {
	tx, err := f.readTx(ctx)
	if err != nil {
		return audit.Report{}, err
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	v := audit.NewStreamingVerifier(keys)
	// The checkpoints the archive records name are compared with them
	// after the entries have passed those checkpoints.
	throughs, err := archiveThroughs(ctx, tx)
	if err != nil {
		return audit.Report{}, err
	}
	for _, seq := range throughs {
		v.KeepCheckpoint(seq)
	}
	for seq, h := range anchors {
		v.Anchor(seq, h)
	}
	pages := &checkpointPages{q: tx, through: math.MaxInt64, batch: verifyCheckpointBatch}
	feed := audit.NewCheckpointFeed(v, func() ([]audit.Checkpoint, bool, error) { return pages.next(ctx) })
	if err := scanAuditEntries(ctx, tx, 0, math.MaxInt64, 0, feed.Add); err != nil {
		return audit.Report{}, err
	}
	// Checkpoints past the last entry: a truncated chain (Finish says so).
	return feed.Finish()
}

// readTx begins a read transaction: what it reads is the file as of one
// moment, while the appliance may go on appending.
func (f *AuditFile) readTx(ctx context.Context) (*sql.Tx, error) { return readTx(ctx, f.db) }

func readTx(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return tx, nil
}

// verifyCheckpointBatch is how many checkpoints Verify reads at a time,
// and exportCheckpointBatch how many exportAudit does (variables for the
// tests).
var (
	verifyCheckpointBatch = 4096
	exportCheckpointBatch = 4096
)

// checkpointPages reads checkpoints in ascending seq, batch at a time:
// those after seq after (which each batch advances) up to seq through.
type checkpointPages struct {
	q              rowsQueryer
	after, through int64
	batch          int
}

// next reads the next batch, and says whether more may follow it.
func (p *checkpointPages) next(ctx context.Context) ([]audit.Checkpoint, bool, error) {
	cps, err := readCheckpointsLimit(ctx, p.q, p.after, p.through, p.batch)
	if err != nil || len(cps) == 0 {
		return nil, false, err
	}
	p.after = cps[len(cps)-1].Seq
	return cps, len(cps) == p.batch, nil
}

// archiveThroughs lists the entries the chain's archive records end at.
func archiveThroughs(ctx context.Context, q rowsQueryer) ([]int64, error) {
	rows, err := q.QueryContext(ctx, `SELECT json_extract(fields, '$.through') FROM events WHERE kind = ?`, audit.KindArchived)
	if err != nil {
		return nil, fmt.Errorf("store: read archive records: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var seq sql.NullInt64
		if err := rows.Scan(&seq); err != nil {
			return nil, fmt.Errorf("store: read archive records: %w", err)
		}
		if seq.Valid { // a malformed record fails verification anyway
			out = append(out, seq.Int64)
		}
	}
	return out, rows.Err()
}

// Export writes every entry after seq after as JSON lines, each checkpoint
// right after the entry it covers. Everything is read in one read
// transaction, as Verify reads.
func (f *AuditFile) Export(ctx context.Context, w io.Writer, after int64) (int64, error) {
	tx, err := f.readTx(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	return exportAudit(ctx, tx, w, after, math.MaxInt64)
}

// exportAudit writes the entries after seq after up to seq through as JSON
// lines, each checkpoint right after the entry it covers, and returns how
// many entries it wrote. The checkpoints (one every
// audit.checkpoint_interval: millions in a year) are read a batch at a
// time as the entries reach them, through q as the entries are; those of
// entries not in the range are not written.
func exportAudit(ctx context.Context, q rowsQueryer, w io.Writer, after, through int64) (int64, error) {
	pages := &checkpointPages{q: q, after: after, through: through, batch: exportCheckpointBatch}
	var cps []audit.Checkpoint // read, not yet passed by the entries
	more := true
	x := audit.NewExporter(w)
	var n int64
	err := scanAuditEntries(ctx, q, after, through, 0, func(e *audit.Entry) error {
		if err := x.Entry(e); err != nil {
			return err
		}
		n++
		for more && (len(cps) == 0 || cps[len(cps)-1].Seq < e.Seq) {
			pages.after = max(pages.after, e.Seq-1) // those before e are never written
			var err error
			if cps, more, err = pages.next(ctx); err != nil {
				return err
			}
		}
		for len(cps) > 0 && cps[0].Seq < e.Seq {
			cps = cps[1:]
		}
		if len(cps) == 0 || cps[0].Seq != e.Seq {
			return nil
		}
		c := &cps[0]
		cps = cps[1:]
		return x.Checkpoint(c)
	})
	if err != nil {
		return n, err
	}
	return n, x.Flush()
}

// AuditKeys returns every audit key registered in the file.
func (f *AuditFile) AuditKeys(ctx context.Context) ([]AuditKey, error) {
	return readAuditKeys(ctx, f.db)
}

// Pragma runs quick_check or integrity_check on the file.
func (f *AuditFile) Pragma(ctx context.Context, which string) error {
	if which != "quick_check" && which != "integrity_check" {
		return fmt.Errorf("store: unknown check %q", which)
	}
	return pragmaCheck(ctx, f.db, which)
}
