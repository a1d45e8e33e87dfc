package audit

import (
	"bufio"
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Line is one JSON line of an export: an entry, or a checkpoint placed right
// after the entry it covers. Entries carry a readable time for SIEMs and the
// exact nanoseconds the hash covers.
type Line struct {
	Type      string            `json:"type"` // "entry" or "checkpoint"
	Seq       int64             `json:"seq"`
	Time      string            `json:"time"`
	AtNS      int64             `json:"at_ns"`
	Kind      string            `json:"kind,omitempty"`
	Principal string            `json:"principal,omitempty"`
	Detail    string            `json:"detail,omitempty"`
	Fields    map[string]string `json:"fields,omitempty"`
	PrevHash  string            `json:"prev_hash,omitempty"`
	Hash      string            `json:"hash"`
	KeyID     string            `json:"key_id,omitempty"`
	Signature string            `json:"signature,omitempty"`
}

// EntryLine renders an entry for export or the API.
func EntryLine(e *Entry) (Line, error) {
	var fields map[string]string
	if e.Fields != "" && e.Fields != "{}" {
		if err := json.Unmarshal([]byte(e.Fields), &fields); err != nil {
			return Line{}, fmt.Errorf("audit: entry %d fields: %w", e.Seq, err)
		}
	}
	return Line{Type: "entry", Seq: e.Seq, Time: time.Unix(0, e.At).UTC().Format(time.RFC3339Nano), AtNS: e.At,
		Kind: e.Kind, Principal: e.Principal, Detail: e.Detail, Fields: fields,
		PrevHash: hex.EncodeToString(e.PrevHash), Hash: hex.EncodeToString(e.Hash)}, nil
}

// CheckpointLine renders a checkpoint for export or the API.
func CheckpointLine(c *Checkpoint) Line {
	return Line{Type: "checkpoint", Seq: c.Seq, Time: time.Unix(0, c.At).UTC().Format(time.RFC3339Nano), AtNS: c.At,
		Hash: hex.EncodeToString(c.Hash), KeyID: c.KeyID, Signature: hex.EncodeToString(c.Signature)}
}

// Entry converts an entry line back to the stored form.
func (l *Line) Entry() (Entry, error) {
	if l.Type != "entry" {
		return Entry{}, fmt.Errorf("audit: line for seq %d is a %q, not an entry", l.Seq, l.Type)
	}
	fields, err := CanonicalFields(l.Fields)
	if err != nil {
		return Entry{}, err
	}
	prev, err1 := hex.DecodeString(l.PrevHash)
	h, err2 := hex.DecodeString(l.Hash)
	if err := errors.Join(err1, err2); err != nil {
		return Entry{}, fmt.Errorf("audit: entry %d: %w", l.Seq, err)
	}
	return Entry{Seq: l.Seq, At: l.AtNS, Kind: l.Kind, Principal: l.Principal, Detail: l.Detail,
		Fields: fields, PrevHash: prev, Hash: h}, nil
}

// Checkpoint converts a checkpoint line back.
func (l *Line) Checkpoint() (Checkpoint, error) {
	if l.Type != "checkpoint" {
		return Checkpoint{}, fmt.Errorf("audit: line for seq %d is a %q, not a checkpoint", l.Seq, l.Type)
	}
	h, err1 := hex.DecodeString(l.Hash)
	sig, err2 := hex.DecodeString(l.Signature)
	if err := errors.Join(err1, err2); err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint %d: %w", l.Seq, err)
	}
	return Checkpoint{Seq: l.Seq, Hash: h, At: l.AtNS, KeyID: l.KeyID, Signature: sig}, nil
}

// Exporter writes JSON lines.
type Exporter struct {
	w   *bufio.Writer
	enc *json.Encoder
}

// NewExporter writes to w; call Flush at the end.
func NewExporter(w io.Writer) *Exporter {
	bw := bufio.NewWriterSize(w, 64<<10)
	return &Exporter{w: bw, enc: json.NewEncoder(bw)}
}

// Entry writes one entry line.
func (x *Exporter) Entry(e *Entry) error {
	l, err := EntryLine(e)
	if err != nil {
		return err
	}
	return x.enc.Encode(l)
}

// Checkpoint writes one checkpoint line.
func (x *Exporter) Checkpoint(c *Checkpoint) error { return x.enc.Encode(CheckpointLine(c)) }

// Flush writes out what is buffered.
func (x *Exporter) Flush() error { return x.w.Flush() }

// maxLine bounds one export line; entries are small, so a longer line is
// not ours.
const maxLine = 1 << 20

// ScanExport reads an export, calling entry for every entry line and cp for
// every checkpoint line, in file order. A malformed line is an error naming
// its line number.
func ScanExport(r io.Reader, entry func(*Entry) error, cp func(*Checkpoint) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var l Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("audit: export line %d: %w: %w", n, ErrTampered, err)
		}
		switch l.Type {
		case "entry":
			if entry == nil {
				continue
			}
			e, err := l.Entry()
			if err != nil {
				return fmt.Errorf("export line %d: %w: %w", n, ErrTampered, err)
			}
			if err := entry(&e); err != nil {
				return err
			}
		case "checkpoint":
			if cp == nil {
				continue
			}
			c, err := l.Checkpoint()
			if err != nil {
				return fmt.Errorf("export line %d: %w: %w", n, ErrTampered, err)
			}
			if err := cp(&c); err != nil {
				return err
			}
		default:
			return fmt.Errorf("audit: export line %d: unknown type %q: %w", n, l.Type, ErrTampered)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit: reading export: %w", err)
	}
	return nil
}

// VerifyExport verifies an export with the given audit keys. It reads the
// export twice (checkpoints first), so it needs a ReadSeeker. An export may
// start after entry 1 at a checkpointed entry (an archive file of a later
// segment, an export --after a checkpoint) or at an entry an audit_archived
// entry in it covers (an archived database).
func VerifyExport(r io.ReadSeeker, keys []*ecdsa.PublicKey, anchors map[int64][]byte) (Report, error) {
	var cps []Checkpoint
	if err := ScanExport(r, nil, func(c *Checkpoint) error { cps = append(cps, *c); return nil }); err != nil {
		return Report{}, err
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return Report{}, err
	}
	v, err := NewVerifier(keys, cps)
	if err != nil {
		return Report{}, err
	}
	v.AcceptCheckpointedStart()
	for seq, h := range anchors {
		v.Anchor(seq, h)
	}
	if err := ScanExport(r, v.Add, nil); err != nil {
		return Report{}, err
	}
	return v.Finish()
}
