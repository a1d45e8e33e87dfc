package audit

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
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

// exportScanner reads an export line by line, numbering the lines for the
// errors.
type exportScanner struct {
	sc *bufio.Scanner
	n  int // the current line's number
}

func newExportScanner(r io.Reader) *exportScanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	return &exportScanner{sc: sc}
}

// scan moves to the next line that is not empty; false at the end or on
// a read error (err).
func (s *exportScanner) scan() bool {
	for s.sc.Scan() {
		s.n++
		if len(s.sc.Bytes()) > 0 {
			return true
		}
	}
	return false
}

// line parses the current line: an entry or a checkpoint.
func (s *exportScanner) line() (Line, error) {
	var l Line
	if err := json.Unmarshal(s.sc.Bytes(), &l); err != nil {
		return Line{}, fmt.Errorf("audit: export line %d: %w: %w", s.n, ErrTampered, err)
	}
	if l.Type != "entry" && l.Type != "checkpoint" {
		return Line{}, fmt.Errorf("audit: export line %d: unknown type %q: %w", s.n, l.Type, ErrTampered)
	}
	return l, nil
}

// entry and checkpoint convert the current line, parsed as l.
func (s *exportScanner) entry(l *Line) (Entry, error) {
	e, err := l.Entry()
	if err != nil {
		return Entry{}, fmt.Errorf("export line %d: %w: %w", s.n, ErrTampered, err)
	}
	return e, nil
}

func (s *exportScanner) checkpoint(l *Line) (Checkpoint, error) {
	c, err := l.Checkpoint()
	if err != nil {
		return Checkpoint{}, fmt.Errorf("export line %d: %w: %w", s.n, ErrTampered, err)
	}
	return c, nil
}

// err is the error that ended scan, if any.
func (s *exportScanner) err() error {
	if err := s.sc.Err(); err != nil {
		return fmt.Errorf("audit: reading export: %w", err)
	}
	return nil
}

// ScanExport reads an export, calling entry for every entry line and cp for
// every checkpoint line, in file order. A malformed line is an error naming
// its line number.
func ScanExport(r io.Reader, entry func(*Entry) error, cp func(*Checkpoint) error) error {
	s := newExportScanner(r)
	for s.scan() {
		l, err := s.line()
		if err != nil {
			return err
		}
		switch {
		case l.Type == "entry" && entry != nil:
			e, err := s.entry(&l)
			if err != nil {
				return err
			}
			if err := entry(&e); err != nil {
				return err
			}
		case l.Type == "checkpoint" && cp != nil:
			c, err := s.checkpoint(&l)
			if err != nil {
				return err
			}
			if err := cp(&c); err != nil {
				return err
			}
		}
	}
	return s.err()
}

// CheckpointFeed gives a streaming verifier its checkpoints a batch at a
// time, ahead of the entries, and lets them go once the entries have
// passed them (but those kept: Verifier.KeepCheckpoint), so that memory
// does not grow with their number. Add each entry through it, then Finish.
type CheckpointFeed struct {
	v     *Verifier
	next  func() ([]Checkpoint, bool, error)
	fed   int64 // the checkpoints up to this seq have been given
	more  bool
	watch func(*Verifier) // the tests': called once the entry is reached
}

// NewCheckpointFeed feeds v from next, which returns the next batch of
// checkpoints, in ascending seq after those it returned before (a batch
// that is not, AddCheckpoints refuses), and whether more may follow it.
func NewCheckpointFeed(v *Verifier, next func() (cps []Checkpoint, more bool, err error)) *CheckpointFeed {
	return &CheckpointFeed{v: v, next: next, more: true}
}

// reach gives the checkpoints up to entry seq and lets those before it go.
func (f *CheckpointFeed) reach(seq int64) error {
	for f.more && f.fed < seq {
		cps, more, err := f.next()
		if err != nil {
			return err
		}
		if f.more = more && len(cps) > 0; len(cps) > 0 {
			if err := f.v.AddCheckpoints(cps); err != nil {
				return err
			}
			f.fed = cps[len(cps)-1].Seq
		}
		f.v.DropBefore(min(seq, f.fed+1))
	}
	f.v.DropBefore(seq)
	if f.watch != nil {
		f.watch(f.v)
	}
	return nil
}

// Add verifies the next entry, once the checkpoints up to it are given.
func (f *CheckpointFeed) Add(e *Entry) error {
	if err := f.reach(e.Seq); err != nil {
		return err
	}
	return f.v.Add(e)
}

// Finish gives the checkpoints left, past the last entry (there should be
// none: a chain truncated behind a signed checkpoint, which Finish then
// reports), and reports on the chain.
func (f *CheckpointFeed) Finish() (Report, error) {
	if err := f.reach(math.MaxInt64); err != nil {
		return Report{}, err
	}
	return f.v.Finish()
}

// exportCheckpointBatch is how many checkpoints VerifyExport gives the
// verifier at a time, and watchExportFeed is called once each entry is
// reached (variables for the tests).
var (
	exportCheckpointBatch = 4096
	watchExportFeed       func(*Verifier)
)

// VerifyExport verifies an export with the given audit keys. An export may
// start after entry 1 at a checkpointed entry (an archive file of a later
// segment, an export --after a checkpoint) or at an entry an audit_archived
// entry in it covers (an archived database).
//
// When r is also an io.ReaderAt (a file), memory does not grow with the
// number of checkpoints: the export is read three times, once for the
// checkpoints its audit_archived entries name, then the entries and, a
// batch ahead of them, the checkpoints, which must come in ascending seq
// (as the exporter writes them); a line repeating the checkpoint line
// before it is read once. Otherwise r is read twice and every checkpoint
// is held, in any order.
func VerifyExport(r io.ReadSeeker, keys []*ecdsa.PublicKey, anchors map[int64][]byte) (Report, error) {
	ra, ok := r.(io.ReaderAt)
	if !ok {
		return verifyExportAll(r, keys, anchors)
	}
	size, err := r.Seek(0, io.SeekEnd)
	if err != nil {
		return Report{}, err
	}
	// Every pass reads the same bytes, even of a file still growing.
	part := func() io.Reader { return io.NewSectionReader(ra, 0, size) }
	v := NewStreamingVerifier(keys)
	v.AcceptCheckpointedStart()
	for seq, h := range anchors {
		v.Anchor(seq, h)
	}
	if err := keepArchivedCheckpoints(v, part()); err != nil {
		return Report{}, err
	}
	cps := &checkpointLines{s: newExportScanner(part()), batch: exportCheckpointBatch}
	feed := NewCheckpointFeed(v, cps.next)
	feed.watch = watchExportFeed
	if err := ScanExport(part(), feed.Add, nil); err != nil {
		return Report{}, err
	}
	return feed.Finish()
}

// verifyExportAll is VerifyExport holding every checkpoint: it reads the
// export twice, checkpoints first.
func verifyExportAll(r io.ReadSeeker, keys []*ecdsa.PublicKey, anchors map[int64][]byte) (Report, error) {
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

// keepArchivedCheckpoints has v keep the checkpoints the export's
// audit_archived entries end at: v compares each record with its
// checkpoint after the entries have passed it. Only the lines that may be
// such an entry are parsed: those holding the kind, or a \u escape that may
// spell it. A line that does not parse, or a record that is malformed, is
// left to the verification, which refuses it.
func keepArchivedCheckpoints(v *Verifier, r io.Reader) error {
	s := newExportScanner(r)
	for s.scan() {
		if b := s.sc.Bytes(); !bytes.Contains(b, []byte(KindArchived)) && !bytes.Contains(b, []byte(`\u`)) {
			continue
		}
		l, err := s.line()
		if err != nil || l.Type != "entry" || l.Kind != KindArchived {
			continue
		}
		e, err := l.Entry()
		if err != nil {
			continue
		}
		if a, err := ParseArchived(&e); err == nil {
			v.KeepCheckpoint(a.Through)
		}
	}
	return s.err()
}

// checkpointLines reads the checkpoint lines of an export in file order,
// a batch at a time, for a CheckpointFeed. A batch ends before a
// checkpoint whose seq is not after the one before it, so that it starts
// the next batch and AddCheckpoints refuses it; a line that repeats the
// checkpoint line before it exactly is skipped (verifying it again would
// change nothing).
type checkpointLines struct {
	s     *exportScanner
	batch int
	prev  *Checkpoint // the last checkpoint read
	held  *Checkpoint // read, out of order: it starts the next batch
}

func (c *checkpointLines) next() ([]Checkpoint, bool, error) {
	var out []Checkpoint
	if c.held != nil {
		out, c.held = append(out, *c.held), nil
	}
	for len(out) < c.batch {
		cp, err := c.read()
		if err != nil || cp == nil {
			return out, false, err
		}
		if len(out) > 0 && cp.Seq <= out[len(out)-1].Seq {
			c.held = cp
			break
		}
		out = append(out, *cp)
	}
	return out, true, nil
}

// read returns the next checkpoint that does not repeat the one before
// it, or nil at the end.
func (c *checkpointLines) read() (*Checkpoint, error) {
	for c.s.scan() {
		l, err := c.s.line()
		if err != nil {
			return nil, err
		}
		if l.Type != "checkpoint" {
			continue
		}
		cp, err := c.s.checkpoint(&l)
		if err != nil {
			return nil, err
		}
		if c.prev != nil && sameCheckpoint(&cp, c.prev) {
			continue
		}
		c.prev = &cp
		return &cp, nil
	}
	return nil, c.s.err()
}

func sameCheckpoint(a, b *Checkpoint) bool {
	return a.Seq == b.Seq && a.At == b.At && a.KeyID == b.KeyID && bytes.Equal(a.Hash, b.Hash) && bytes.Equal(a.Signature, b.Signature)
}
