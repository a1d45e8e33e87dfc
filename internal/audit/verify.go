package audit

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"sort"
	"time"
)

// ErrTampered is wrapped by every verification failure caused by the data
// (as opposed to an I/O error reading it).
var ErrTampered = errors.New("audit chain verification failed")

// BadEntry is a verification failure that names the first entry found bad.
type BadEntry struct {
	Seq    int64 // the first bad entry; 0 when the failure is about a checkpoint
	Reason string
}

func (e *BadEntry) Error() string {
	if e.Seq == 0 {
		return e.Reason
	}
	return fmt.Sprintf("entry %d: %s", e.Seq, e.Reason)
}

func (e *BadEntry) Unwrap() error { return ErrTampered }

func bad(seq int64, format string, a ...any) error {
	return &BadEntry{Seq: seq, Reason: fmt.Sprintf(format, a...)}
}

// AnchorError: an anchor names an entry before the first one verified. It
// is not tampering: that entry was archived, and the archive holding it is
// where it can be checked.
type AnchorError struct{ Anchor, First int64 }

func (e *AnchorError) Error() string {
	return fmt.Sprintf("anchor %d is before the first retained entry %d: verify the archive that holds it", e.Anchor, e.First)
}

// Report summarises a verified chain.
type Report struct {
	// FirstSeq is the first entry verified: 1, or later when the entries
	// before it are archived (0 for an empty chain).
	FirstSeq          int64     `json:"first_seq"`
	Entries           int64     `json:"entries"` // entries verified, FirstSeq..HeadSeq
	HeadSeq           int64     `json:"head_seq"`
	HeadHash          string    `json:"head_hash"`
	Checkpoints       int       `json:"checkpoints"`
	LastCheckpointSeq int64     `json:"last_checkpoint_seq"`
	LastCheckpointAt  time.Time `json:"last_checkpoint_at,omitzero"`
	// Unprotected counts entries after the last checkpoint: they are
	// chained, but no signature covers them yet.
	Unprotected int64    `json:"unprotected"`
	Keys        []string `json:"keys"` // audit key ids that signed checkpoints
}

// Verifier checks a chain entry by entry, in order, against checkpoints
// signed by known audit keys. It holds one entry in memory, whatever the
// length of the chain, and the checkpoints: all of them (NewVerifier), or
// a bounded window of them (NewStreamingVerifier).
type Verifier struct {
	keys    map[string]*ecdsa.PublicKey
	cps     map[int64]Checkpoint
	nCps    int        // checkpoints taken, one per seq
	last    Checkpoint // the checkpoint with the highest Seq
	prevAt  int64      // its time: checkpoints come in order of seq and of time
	used    map[string]bool
	n       int64
	first   int64  // the first entry's seq, 0 before it
	firstH  []byte // and its hash
	prevSeq int64
	prev    []byte
	err     error

	// A chain may start after entry 1 only for a stated reason (see start).
	checkpointedStart bool // an export may start at a checkpointed entry
	startExplained    bool

	anchors   map[int64][]byte
	maxAnchor int64

	// Streaming: checkpoints come in batches (AddCheckpoints) and are let go
	// once the entries have passed them (DropBefore), but for those kept
	// for the archive records (KeepCheckpoint).
	streaming bool
	queue     []int64 // the seqs in cps, ascending
	keep      map[int64]bool
}

// NewVerifier checks every checkpoint's signature first (naming the first
// bad one) and prepares to verify entries from seq 1, or from a later entry
// whose predecessors are archived (see Add). A checkpoint signed by a key
// not in keys is a failure: an auditor supplies the keys they trust.
func NewVerifier(keys []*ecdsa.PublicKey, cps []Checkpoint) (*Verifier, error) {
	v := newVerifier(keys)
	sorted := append([]Checkpoint(nil), cps...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Seq < sorted[j].Seq })
	if err := v.addCheckpoints(sorted); err != nil {
		return nil, err
	}
	return v, nil
}

// NewStreamingVerifier is a Verifier whose checkpoints are given in
// batches, in ascending seq, as the entries reach them (AddCheckpoints),
// and let go once the entries have passed them (DropBefore), so that
// memory does not grow with their number: a database holds one every
// audit.checkpoint_interval. Checkpoints that an audit_archived entry
// names must be kept for it (KeepCheckpoint).
func NewStreamingVerifier(keys []*ecdsa.PublicKey) *Verifier {
	v := newVerifier(keys)
	v.streaming, v.keep = true, map[int64]bool{}
	return v
}

func newVerifier(keys []*ecdsa.PublicKey) *Verifier {
	v := &Verifier{keys: map[string]*ecdsa.PublicKey{}, cps: map[int64]Checkpoint{}, used: map[string]bool{}, prev: Genesis()}
	for _, k := range keys {
		v.keys[KeyID(k)] = k
	}
	return v
}

// AddCheckpoints checks the next batch of a streaming verifier's
// checkpoints, each after every one given before, as NewVerifier checks
// all of them. A failure is the verification's: Add and Finish return it
// too.
func (v *Verifier) AddCheckpoints(cps []Checkpoint) error {
	if v.err != nil {
		return v.err
	}
	if !v.streaming {
		return errors.New("audit: AddCheckpoints needs a streaming verifier")
	}
	for _, c := range cps {
		if c.Seq <= v.last.Seq {
			v.err = bad(0, "checkpoint at entry %d comes after the checkpoint of entry %d", c.Seq, v.last.Seq)
			return v.err
		}
	}
	v.err = v.addCheckpoints(cps)
	return v.err
}

// addCheckpoints checks and takes checkpoints sorted by seq.
func (v *Verifier) addCheckpoints(sorted []Checkpoint) error {
	for _, c := range sorted {
		pub, ok := v.keys[c.KeyID]
		if !ok {
			return bad(0, "checkpoint at entry %d is signed by audit key %s, which was not supplied", c.Seq, c.KeyID)
		}
		if !c.Verify(pub) {
			return bad(0, "checkpoint at entry %d: signature by audit key %s does not verify (checkpoint forged or altered)", c.Seq, c.KeyID)
		}
		if c.Seq < 1 || len(c.Hash) != HashSize {
			return bad(0, "checkpoint at entry %d is malformed", c.Seq)
		}
		prev, dup := v.cps[c.Seq]
		if dup && !bytes.Equal(prev.Hash, c.Hash) {
			return bad(c.Seq, "two signed checkpoints disagree about this entry's hash (the chain was rewritten after it was checkpointed)")
		}
		if c.At < v.prevAt {
			return bad(0, "checkpoint at entry %d is dated before the checkpoint of an earlier entry", c.Seq)
		}
		v.prevAt = c.At
		if !dup {
			v.nCps++
			if v.streaming {
				v.queue = append(v.queue, c.Seq)
			}
		}
		v.cps[c.Seq] = c
		v.used[c.KeyID] = true
		v.last = c
	}
	return nil
}

// KeepCheckpoint keeps a streaming verifier's checkpoint of entry seq after
// the entries have passed it: an audit_archived entry further on names it.
// Call it before the first AddCheckpoints.
func (v *Verifier) KeepCheckpoint(seq int64) {
	if v.keep != nil {
		v.keep[seq] = true
	}
}

// DropBefore lets a streaming verifier's checkpoints of the entries before
// seq go (but those kept): call it with the seq of the next entry to add.
// The entries before it have been compared with them already, or are not
// in the chain (archived before its first entry).
func (v *Verifier) DropBefore(seq int64) {
	i := 0
	for ; i < len(v.queue) && v.queue[i] < seq; i++ {
		if !v.keep[v.queue[i]] {
			delete(v.cps, v.queue[i])
		}
	}
	v.queue = v.queue[i:]
}

// AcceptCheckpointedStart lets the chain start after entry 1 at an entry
// that a signed checkpoint covers, as an export or archive file may: the
// archive of a later segment starts with the entry that ends the previous
// one. A database's chain needs an audit_archived entry instead. Call it
// before the first Add.
func (v *Verifier) AcceptCheckpointedStart() { v.checkpointedStart = true }

// Add verifies the next entry. After the first failure every later call
// returns the same error.
//
// The first entry may come after entry 1 when the entries before it were
// archived. Its previous-hash cannot be checked then (its predecessor is in
// the archive), but its own hash, and every hash after it, is still covered
// by the next signed checkpoint. Finish fails unless the start is explained:
// an audit_archived entry in the chain covers it, or (after
// AcceptCheckpointedStart) a signed checkpoint covers it.
func (v *Verifier) Add(e *Entry) error {
	if v.err != nil {
		return v.err
	}
	v.err = v.add(e)
	return v.err
}

func (v *Verifier) add(e *Entry) error {
	if v.n == 0 && e.Seq > 1 {
		if err := v.start(e); err != nil {
			return err
		}
	} else {
		want := v.prevSeq + 1
		switch {
		case e.Seq < want:
			return bad(e.Seq, "out of order or duplicated: it comes after entry %d", v.prevSeq)
		case e.Seq > want:
			return bad(want, "missing: entry %d follows entry %d (entries deleted)", e.Seq, v.prevSeq)
		}
		if !bytes.Equal(e.PrevHash, v.prev) {
			return bad(e.Seq, "does not follow entry %d: its previous-hash differs (an entry before it was changed, inserted or removed)", v.prevSeq)
		}
	}
	if !bytes.Equal(e.ComputeHash(), e.Hash) {
		return bad(e.Seq, "its contents do not match its hash (modified)")
	}
	if c, ok := v.cps[e.Seq]; ok && !bytes.Equal(c.Hash, e.Hash) {
		return bad(e.Seq, "differs from the signed checkpoint of %s (the chain up to here was rewritten)",
			time.Unix(0, c.At).UTC().Format(time.RFC3339))
	}
	if h, ok := v.anchors[e.Seq]; ok && !bytes.Equal(h, e.Hash) {
		return bad(e.Seq, "differs from the expected head recorded earlier")
	}
	if v.n == 0 {
		v.first, v.firstH = e.Seq, e.Hash
	}
	if e.Kind == KindArchived {
		if err := v.archived(e); err != nil {
			return err
		}
	}
	v.n++
	v.prevSeq, v.prev = e.Seq, e.Hash
	return nil
}

// start takes a first entry after 1. An anchor before it cannot be checked.
func (v *Verifier) start(e *Entry) error {
	var early int64
	for seq := range v.anchors {
		if seq < e.Seq && (early == 0 || seq < early) {
			early = seq
		}
	}
	if early != 0 {
		return &AnchorError{Anchor: early, First: e.Seq}
	}
	if _, ok := v.cps[e.Seq]; ok && v.checkpointedStart {
		v.startExplained = true // add compares the entry with the checkpoint
	}
	return nil
}

// archived checks an archive record against the chain and the checkpoints,
// and notes whether it explains where the chain starts.
func (v *Verifier) archived(e *Entry) error {
	a, err := ParseArchived(e)
	if err != nil {
		return bad(e.Seq, "archive record: %v", err)
	}
	if a.Through >= e.Seq {
		return bad(e.Seq, "archive record of entries up to %d, which come after it", a.Through)
	}
	c, checkpointed := v.cps[a.Through]
	switch {
	case checkpointed && !bytes.Equal(c.Hash, a.ThroughHash):
		return bad(e.Seq, "archive record's hash of entry %d differs from that entry's signed checkpoint", a.Through)
	case a.Through == v.first && !bytes.Equal(v.firstH, a.ThroughHash):
		return bad(e.Seq, "archive record's hash of entry %d differs from that entry", a.Through)
	case a.Through > v.first && !checkpointed:
		// Entry Through is in this chain; archives end at a checkpointed entry.
		return bad(e.Seq, "archive record ends at entry %d, which no checkpoint covers", a.Through)
	}
	if a.From <= v.first && v.first <= a.Through {
		v.startExplained = true
	}
	return nil
}

// Finish reports on the whole chain. It fails if a checkpoint covers an
// entry that never came: the chain was truncated behind a signed head.
func (v *Verifier) Finish() (Report, error) {
	if v.err != nil {
		return Report{}, v.err
	}
	if v.first > 1 && !v.startExplained {
		why := "entries before it were deleted without an archive record (no audit_archived entry covers it)"
		if v.checkpointedStart {
			why += ", and no signed checkpoint covers it"
		}
		return Report{}, bad(v.first, "the chain starts here, but %s", why)
	}
	if v.last.Seq > v.prevSeq {
		return Report{}, bad(v.prevSeq+1, "missing: the chain ends at entry %d but a checkpoint signed at %s covers entry %d (truncated)",
			v.prevSeq, time.Unix(0, v.last.At).UTC().Format(time.RFC3339), v.last.Seq)
	}
	if v.maxAnchor > v.prevSeq {
		return Report{}, bad(v.prevSeq+1, "missing: the chain ends at entry %d, before the expected head %d (truncated)", v.prevSeq, v.maxAnchor)
	}
	r := Report{FirstSeq: v.first, Entries: v.n, HeadSeq: v.prevSeq, HeadHash: fmt.Sprintf("%x", v.prev), Checkpoints: v.nCps,
		LastCheckpointSeq: v.last.Seq, Unprotected: v.prevSeq - max(v.last.Seq, v.first-1)}
	if v.last.Seq > 0 {
		r.LastCheckpointAt = time.Unix(0, v.last.At).UTC()
	}
	for k := range v.used {
		r.Keys = append(r.Keys, k)
	}
	sort.Strings(r.Keys)
	return r, nil
}

// Anchor additionally requires entry seq to exist with the given hash: a
// head the auditor recorded earlier (from a previous export, or the HSM's
// copy of the last checkpoint). It catches truncation after the last
// checkpoint in the file. An anchor before the chain's first entry is an
// *AnchorError: that entry is archived. Call it before the first Add.
func (v *Verifier) Anchor(seq int64, hash []byte) {
	if v.anchors == nil {
		v.anchors = map[int64][]byte{}
	}
	v.anchors[seq] = append([]byte(nil), hash...)
	v.maxAnchor = max(v.maxAnchor, seq)
}
