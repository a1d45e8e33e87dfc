package store

import (
	"context"
	"crypto/ecdsa"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

// Archive file states, as ArchiveStatus reports them.
const (
	ArchiveIntact  = "intact"  // in the directory, with the recorded SHA-256 and size
	ArchiveAbsent  = "absent"  // not in the directory: copied off the box and removed, or lost
	ArchiveAltered = "altered" // in the directory, but not the file recorded
)

// ArchiveFile is one recorded archive and what the directory holds of it.
type ArchiveFile struct {
	File        string    `json:"file"`
	From        int64     `json:"from"`
	Through     int64     `json:"through"`
	ThroughHash string    `json:"through_hash"` // hex: the anchor that verifies the file
	SHA256      string    `json:"sha256"`
	Size        int64     `json:"size"`
	At          time.Time `json:"at"`
	State       string    `json:"state"` // intact, absent or altered
	// Deleting: the pass that wrote it has not finished deleting its
	// entries from the database; the file must stay until it has.
	Deleting bool   `json:"deleting,omitempty"`
	Verified bool   `json:"verified,omitempty"` // verified with the given audit keys
	Problem  string `json:"problem,omitempty"`  // why it is not intact or does not verify
}

// ArchivesReport is ArchiveStatus's answer.
type ArchivesReport struct {
	Dir      string        `json:"dir"`
	FirstSeq int64         `json:"first_seq"` // the first entry the database holds
	Archives []ArchiveFile `json:"archives"`
	// Broken counts archives altered, failing verification, or not linking
	// to the one before (each must start with the entry the previous one
	// ends with).
	Broken int `json:"broken"`
}

// ArchiveStatus lists the audit archives the database records (table
// audit_archives, oldest first) and checks each against dir: present with
// the recorded SHA-256 and size, absent, or altered; and that each starts
// where the one before ends. With keys, each file present is also verified
// with them, anchored at the recorded hash of its last entry: what an
// operator runs before copying archives off the box, and an auditor after.
// A database from before audit retention (schema 10) records none.
func (f *AuditFile) ArchiveStatus(ctx context.Context, dir string, keys []*ecdsa.PublicKey) (ArchivesReport, error) {
	rep := ArchivesReport{Dir: dir, Archives: []ArchiveFile{}}
	v, err := schemaVersion(ctx, f.db)
	if err != nil {
		return rep, err
	}
	if err := f.db.QueryRowContext(ctx, `SELECT coalesce(min(seq), 0) FROM events`).Scan(&rep.FirstSeq); err != nil {
		return rep, fmt.Errorf("store: %w", err)
	}
	if v < 10 {
		return rep, nil
	}
	rows, err := f.db.QueryContext(ctx, `SELECT from_seq, through_seq, through_hash, file, sha256, size, at FROM audit_archives ORDER BY through_seq`)
	if err != nil {
		return rep, fmt.Errorf("store: read audit archives: %w", err)
	}
	var recs []archiveRecord
	for rows.Next() {
		var r archiveRecord
		if err := rows.Scan(&r.From, &r.Through, &r.ThroughHash, &r.File, &r.SHA256, &r.Size, &r.At); err != nil {
			rows.Close()
			return rep, fmt.Errorf("store: read audit archives: %w", err)
		}
		recs = append(recs, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("store: read audit archives: %w", err)
	}
	prev := int64(1) // where the next archive must start
	for i, r := range recs {
		a := ArchiveFile{File: r.File, From: r.From, Through: r.Through, ThroughHash: hex.EncodeToString(r.ThroughHash),
			SHA256: r.SHA256, Size: r.Size, At: time.Unix(0, r.At).UTC(), Deleting: i == len(recs)-1 && rep.FirstSeq < r.Through}
		a.State, a.Problem = archiveFileState(filepath.Join(dir, r.File), r.Archived)
		if a.State == ArchiveIntact && len(keys) > 0 {
			if err := verifyArchiveFile(filepath.Join(dir, r.File), keys, r.Archived); err != nil {
				a.Problem = err.Error()
			} else {
				a.Verified = true
			}
		}
		if r.From != prev {
			a.Problem = joinProblems(a.Problem, fmt.Sprintf("starts at entry %d, but the archive before ends at entry %d", r.From, prev))
		}
		if a.State == ArchiveAltered || a.Problem != "" {
			rep.Broken++
		}
		prev = r.Through
		rep.Archives = append(rep.Archives, a)
	}
	return rep, nil
}

// archiveFileState compares the file at path with its record.
func archiveFileState(path string, want audit.Archived) (state, problem string) {
	sum, size, err := fileDigest(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return ArchiveAbsent, ""
	case err != nil:
		return ArchiveAltered, err.Error()
	case sum != want.SHA256 || size != want.Size:
		return ArchiveAltered, fmt.Sprintf("sha256 %s, %d bytes; recorded %s, %d bytes", sum, size, want.SHA256, want.Size)
	}
	return ArchiveIntact, ""
}

// verifyArchiveFile verifies the archive at path with keys: it must hold
// entries want.From to want.Through, reaching the recorded hash.
func verifyArchiveFile(path string, keys []*ecdsa.PublicKey, want audit.Archived) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rep, err := audit.VerifyExport(f, keys, map[int64][]byte{want.Through: want.ThroughHash})
	if err != nil {
		return err
	}
	if rep.FirstSeq != want.From || rep.HeadSeq != want.Through || rep.Entries != want.Through-want.From+1 {
		return fmt.Errorf("it holds entries %d to %d (%d), recorded %d to %d: %w",
			rep.FirstSeq, rep.HeadSeq, rep.Entries, want.From, want.Through, audit.ErrTampered)
	}
	return nil
}

func joinProblems(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
