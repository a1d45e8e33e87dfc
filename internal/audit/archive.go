package audit

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// KindArchived is the kind of the entry that records an archive: entries
// From..Through were written to a file, verified, and the ones before
// Through are then deleted from the database. Through is always a
// checkpointed entry and is kept: it becomes the database's first entry, and
// the archive file of the next segment starts with it, so the files link.
//
// This entry is what lets a database's chain start after entry 1: the
// verifier accepts a first entry F > 1 only when an audit_archived entry of
// the chain covers it (From ≤ F ≤ Through).
const KindArchived = "audit_archived"

// Archived is what an audit_archived entry records.
type Archived struct {
	From, Through int64
	ThroughHash   []byte // entry Through's hash, as its checkpoint signs it
	File          string // base name in the archive directory
	SHA256        string // of the file, lower-case hex
	Size          int64  // of the file, in bytes
}

// Record is the audit record of a.
func (a Archived) Record() Record {
	return Record{Kind: KindArchived,
		Detail: fmt.Sprintf("audit entries %d to %d archived to %s; the entries before %d are deleted from the database", a.From, a.Through, a.File, a.Through),
		Fields: map[string]string{"from": strconv.FormatInt(a.From, 10), "through": strconv.FormatInt(a.Through, 10),
			"through_hash": hex.EncodeToString(a.ThroughHash), "file": a.File, "sha256": a.SHA256, "size": strconv.FormatInt(a.Size, 10)}}
}

// ParseArchived reads the fields of an audit_archived entry.
func ParseArchived(e *Entry) (Archived, error) {
	if e.Kind != KindArchived {
		return Archived{}, fmt.Errorf("audit: entry %d is a %q, not an archive record", e.Seq, e.Kind)
	}
	var f map[string]string
	if err := json.Unmarshal([]byte(e.Fields), &f); err != nil {
		return Archived{}, fmt.Errorf("audit: archive record fields: %w", err)
	}
	from, err1 := strconv.ParseInt(f["from"], 10, 64)
	through, err2 := strconv.ParseInt(f["through"], 10, 64)
	size, err3 := strconv.ParseInt(f["size"], 10, 64)
	h, err4 := hex.DecodeString(f["through_hash"])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return Archived{}, fmt.Errorf("audit: archive record fields: %w", err)
	}
	a := Archived{From: from, Through: through, ThroughHash: h, File: f["file"], SHA256: f["sha256"], Size: size}
	if a.From < 1 || a.Through < a.From || len(a.ThroughHash) != HashSize || !plainFileName(a.File) || a.Size < 0 {
		return Archived{}, fmt.Errorf("audit: archive record of entries %d to %d is malformed", a.From, a.Through)
	}
	return a, nil
}

// plainFileName reports whether name is a file name the archive directory
// can hold directly: not empty, no directory, no "." or "..", no control
// character. The tools join it to the archive directory, so a record naming
// "../x" would otherwise send them outside it.
func plainFileName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= 255 &&
		!strings.ContainsRune(name, '/') && !strings.ContainsFunc(name, unicode.IsControl)
}
