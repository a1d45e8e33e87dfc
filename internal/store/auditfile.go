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
func (f *AuditFile) Verify(ctx context.Context, keys []*ecdsa.PublicKey, anchors map[int64][]byte) (audit.Report, error) {
	cps, err := f.Checkpoints(ctx)
	if err != nil {
		return audit.Report{}, err
	}
	v, err := audit.NewVerifier(keys, cps)
	if err != nil {
		return audit.Report{}, err
	}
	for seq, h := range anchors {
		v.Anchor(seq, h)
	}
	if err := f.Entries(ctx, 0, v.Add); err != nil {
		return audit.Report{}, err
	}
	return v.Finish()
}

// Export writes every entry after seq after as JSON lines, each checkpoint
// right after the entry it covers.
func (f *AuditFile) Export(ctx context.Context, w io.Writer, after int64) (int64, error) {
	return exportAudit(ctx, f.db, w, after, math.MaxInt64)
}

// exportAudit writes the entries after seq after up to seq through as JSON
// lines, each checkpoint right after the entry it covers, and returns how
// many entries it wrote.
func exportAudit(ctx context.Context, q rowsQueryer, w io.Writer, after, through int64) (int64, error) {
	cps, err := readCheckpointsIn(ctx, q, after, through)
	if err != nil {
		return 0, err
	}
	bySeq := make(map[int64]*audit.Checkpoint, len(cps))
	for i := range cps {
		bySeq[cps[i].Seq] = &cps[i]
	}
	x := audit.NewExporter(w)
	var n int64
	err = scanAuditEntries(ctx, q, after, through, 0, func(e *audit.Entry) error {
		if err := x.Entry(e); err != nil {
			return err
		}
		n++
		if c := bySeq[e.Seq]; c != nil {
			return x.Checkpoint(c)
		}
		return nil
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
