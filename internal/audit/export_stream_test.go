package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// streamChain is a chain of 605 entries with a checkpoint every 3 (200 of
// them, up to entry 600), then at 601 the record of an archive of entries
// 1..30, and four more entries: the archive record names a checkpoint
// hundreds of checkpoints before it, which the streaming verification must
// have kept.
func streamChain(t testing.TB, key *ecdsa.PrivateKey, throughHash func(es []Entry) []byte) ([]Entry, []Checkpoint) {
	t.Helper()
	es, cps := chain(t, 600, 3, key, nil)
	a := Archived{From: 1, Through: 30, ThroughHash: throughHash(es), File: "audit-000000000001-000000000030.jsonl", SHA256: strings.Repeat("ab", 32), Size: 1}
	return appendRecords(t, es, a.Record(), Record{Kind: "start"}, Record{Kind: "stop"}, Record{Kind: "start"}, Record{Kind: "stop"}), cps
}

// writeExport writes data to a file and opens it: the streaming path reads
// an *os.File through io.ReaderAt.
func writeExport(t *testing.T, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "export.jsonl")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// withExportBatch runs fn with VerifyExport giving checkpoints batch at a
// time, and returns the most checkpoints its verifier ever held.
func withExportBatch(t *testing.T, batch int, fn func()) int {
	t.Helper()
	defer func(n int, w func(*Verifier)) { exportCheckpointBatch, watchExportFeed = n, w }(exportCheckpointBatch, watchExportFeed)
	held := 0
	exportCheckpointBatch = batch
	watchExportFeed = func(v *Verifier) { held = max(held, len(v.cps)) }
	fn()
	return held
}

// bothPaths verifies data streaming (a file, so an io.ReaderAt) and holding
// every checkpoint (verifyExportAll, the path before streaming), with each
// batch size.
func bothPaths(t *testing.T, data []byte, keys []*ecdsa.PublicKey, anchors map[int64][]byte, batch int) (stream Report, errStream error, all Report, errAll error) {
	t.Helper()
	withExportBatch(t, batch, func() { stream, errStream = VerifyExport(writeExport(t, data), keys, anchors) })
	all, errAll = verifyExportAll(bytes.NewReader(data), keys, anchors)
	return stream, errStream, all, errAll
}

// sameOutcome fails unless both paths agree exactly: the same report, or
// the same error (text, ErrTampered, the entry named), which it returns.
func sameOutcome(t *testing.T, name string, data []byte, keys []*ecdsa.PublicKey, anchors map[int64][]byte) error {
	t.Helper()
	var out error
	for _, batch := range []int{1, 7, 4096} {
		rs, es, ra, ea := bothPaths(t, data, keys, anchors, batch)
		if (es == nil) != (ea == nil) || es != nil && es.Error() != ea.Error() || errors.Is(es, ErrTampered) != errors.Is(ea, ErrTampered) {
			t.Fatalf("%s, batch %d: streaming %v; all at once %v", name, batch, es, ea)
		}
		var bs, ba *BadEntry
		if errors.As(es, &bs) != errors.As(ea, &ba) || bs != nil && *bs != *ba {
			t.Fatalf("%s, batch %d: streaming names %+v, all at once %+v", name, batch, bs, ba)
		}
		if !reflect.DeepEqual(rs, ra) {
			t.Fatalf("%s, batch %d: streaming %+v; all at once %+v", name, batch, rs, ra)
		}
		out = es
	}
	return out
}

// exportLines is an export of es with each checkpoint of cps after its
// entry, as lines (without the final newline's empty string).
func exportLines(es []Entry, cps []Checkpoint) []string {
	return strings.Split(strings.TrimSuffix(string(exportOf(es, cps)), "\n"), "\n")
}

func joinLines(lines []string) []byte { return []byte(strings.Join(lines, "\n") + "\n") }

// checkpointLine is the index in lines of the checkpoint line of entry seq.
func checkpointLine(t *testing.T, lines []string, seq int64) int {
	t.Helper()
	for i, l := range lines {
		if strings.HasPrefix(l, `{"type":"checkpoint","seq":`+strconv.FormatInt(seq, 10)+`,`) {
			return i
		}
	}
	t.Fatalf("no checkpoint line of entry %d", seq)
	return 0
}

// TestVerifyExportStreaming: an export verified with its checkpoints read
// a batch ahead of the entries, by a second reader of the same file, gives
// the same report and the same failure as with all of them in memory, for
// each kind of tampering, while holding about a batch of checkpoints.
func TestVerifyExportStreaming(t *testing.T) {
	key := newKey(t)
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	es, cps := streamChain(t, key, func(es []Entry) []byte { return es[29].Hash })
	head := map[int64][]byte{605: es[604].Hash}

	// Intact: the whole chain, a later segment (from checkpointed entry
	// 30), an archived database (from entry 30, which the record covers),
	// all with and without the anchor of the head.
	for _, part := range []struct {
		name string
		data []byte
	}{
		{"whole chain", exportOf(es, cps)},
		{"segment from a checkpoint", exportOf(es[29:], cps)},
		{"archived database part-way through its deletion", exportOf(es[28:], cps)},
	} {
		if err := sameOutcome(t, part.name, part.data, keys, nil); err != nil {
			t.Fatalf("%s: %v", part.name, err)
		}
		if err := sameOutcome(t, part.name+", anchored", part.data, keys, head); err != nil {
			t.Fatalf("%s, anchored: %v", part.name, err)
		}
	}
	r, err := VerifyExport(writeExport(t, exportOf(es, cps)), keys, head)
	if err != nil || r.Entries != 605 || r.Checkpoints != 200 || r.LastCheckpointSeq != 600 || r.Unprotected != 5 {
		t.Fatalf("report %+v %v", r, err)
	}

	// Bounded: the verifier never holds more than a batch of checkpoints
	// (and the one the archive record names), where all at once holds 200.
	for _, batch := range []int{1, 7, 50} {
		held := withExportBatch(t, batch, func() {
			if _, err := VerifyExport(writeExport(t, exportOf(es, cps)), keys, nil); err != nil {
				t.Fatal(err)
			}
		})
		if held < 1 || held > batch+1 {
			t.Fatalf("batch %d: %d checkpoints held", batch, held)
		}
	}

	tampered := func(name string, data []byte, anchors map[int64][]byte, want string) {
		t.Helper()
		err := sameOutcome(t, name, data, keys, anchors)
		if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v, want %q", name, err, want)
		}
	}
	lines := exportLines(es, cps)

	edited := clone(es)
	edited[300].Detail = "edited"
	tampered("edited entry", exportOf(edited, cps), nil, "entry 301: its contents do not match its hash")

	// Truncated: the file cut after the checkpoint line of entry 501 (the
	// anchor catches it), or the entries after 500 deleted but the later
	// checkpoint lines left (those catch it), or cut in the middle of a line.
	cut := checkpointLine(t, lines, 501)
	tampered("file cut after a checkpoint, anchored", joinLines(lines[:cut+1]), head, "before the expected head 605 (truncated)")
	if err := sameOutcome(t, "file cut after a checkpoint", joinLines(lines[:cut+1]), keys, nil); err != nil {
		t.Fatalf("cut without an anchor: %v", err)
	}
	var kept []string
	for i, l := range lines {
		if i <= cut || strings.HasPrefix(l, `{"type":"checkpoint"`) {
			kept = append(kept, l)
		}
	}
	tampered("entries after a checkpoint deleted", joinLines(kept), nil, "covers entry 600 (truncated)")
	half := joinLines(lines[:cut+1])
	tampered("file cut in a line", append(half, lines[cut+1][:40]...), nil, "export line")

	forged := append([]Checkpoint(nil), cps...)
	forged[150].Signature = bytes.Clone(forged[150].Signature)
	forged[150].Signature[5] ^= 1
	tampered("forged checkpoint signature", exportOf(es, forged), nil, "does not verify")

	other := append([]Checkpoint(nil), cps...)
	other[100] = sign(t, key, other[100].Seq, es[0].Hash, other[100].At)
	tampered("checkpoint of another history", exportOf(es, other), nil, "entry 303: differs from the signed checkpoint")

	wrong, wrongCps := streamChain(t, key, func(es []Entry) []byte { return es[30].Hash })
	tampered("archive record's hash differs from its checkpoint", exportOf(wrong, wrongCps), nil,
		"entry 601: archive record's hash of entry 30 differs from that entry's signed checkpoint")
	tampered("same, from the checkpointed entry", exportOf(wrong[29:], wrongCps), nil, "differs from that entry's signed checkpoint")

	// Malformed lines are named by number, whichever reader meets them.
	bad := append([]string(nil), lines...)
	bad[checkpointLine(t, lines, 450)] = `{"type":"checkpoint","seq":450,"hash":"zz"}`
	tampered("checkpoint line that does not parse", joinLines(bad), nil, "export line")
	bad = append([]string(nil), lines...)
	bad[700] = `{"type":"something"}`
	tampered("unknown line", joinLines(bad), nil, "export line 701: unknown type")

	// Checkpoint lines need not follow their entries, as long as they come
	// in ascending seq: all of them at the end verify the same.
	var entriesFirst, cpLines []string
	for _, l := range lines {
		if strings.HasPrefix(l, `{"type":"checkpoint"`) {
			cpLines = append(cpLines, l)
		} else {
			entriesFirst = append(entriesFirst, l)
		}
	}
	if err := sameOutcome(t, "checkpoints at the end", joinLines(append(entriesFirst, cpLines...)), keys, head); err != nil {
		t.Fatalf("checkpoints at the end: %v", err)
	}
	// A checkpoint line repeated verbatim is read once, as before.
	dup := append([]string(nil), lines[:cut+1]...)
	dup = append(append(dup, lines[cut]), lines[cut+1:]...)
	if err := sameOutcome(t, "repeated checkpoint line", joinLines(dup), keys, head); err != nil {
		t.Fatalf("repeated checkpoint line: %v", err)
	}
}

// TestVerifyExportCheckpointsOutOfOrder: checkpoint lines out of ascending
// seq, or two different checkpoints of one entry, are refused as
// tampering when streaming. (All at once, the old path sorted them and
// accepted the swap; it refused the conflicting pair with its own reason.)
// A reader without io.ReaderAt still takes that path.
func TestVerifyExportCheckpointsOutOfOrder(t *testing.T) {
	key := newKey(t)
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	es, cps := chain(t, 60, 3, key, nil)
	lines := exportLines(es, cps)
	a, b := checkpointLine(t, lines, 30), checkpointLine(t, lines, 33)
	swapped := append([]string(nil), lines...)
	swapped[a], swapped[b] = swapped[b], swapped[a]
	again := append([]string(nil), lines...)
	again[checkpointLine(t, lines, 36)] = lines[a] // entry 30's checkpoint again, after 33's
	conflicting := append([]string(nil), lines...)
	c := sign(t, key, 30, es[31].Hash, cps[9].At)
	var line bytes.Buffer
	x := NewExporter(&line)
	_ = x.Checkpoint(&c)
	_ = x.Flush()
	conflicting = append(conflicting[:a+1:a+1], append([]string{strings.TrimSuffix(line.String(), "\n")}, conflicting[a+1:]...)...)

	for _, tc := range []struct {
		name    string
		lines   []string
		oldOK   bool
		oldWant string
	}{
		{"two checkpoint lines swapped", swapped, true, ""},
		{"a checkpoint line repeated later", again, true, ""},
		{"two checkpoints of one entry", conflicting, false, "two signed checkpoints disagree"},
	} {
		data := joinLines(tc.lines)
		for _, batch := range []int{1, 2, 4096} {
			rs, errStream, _, errAll := bothPaths(t, data, keys, nil, batch)
			var be *BadEntry
			if !errors.Is(errStream, ErrTampered) || !errors.As(errStream, &be) || be.Seq != 0 ||
				!strings.Contains(errStream.Error(), "comes after the checkpoint of entry") {
				t.Fatalf("%s, batch %d: streaming %+v %v", tc.name, batch, rs, errStream)
			}
			if tc.oldOK != (errAll == nil) || errAll != nil && !strings.Contains(errAll.Error(), tc.oldWant) {
				t.Fatalf("%s: all at once %v", tc.name, errAll)
			}
		}
		// Without io.ReaderAt, the old path.
		_, err := VerifyExport(struct{ io.ReadSeeker }{bytes.NewReader(data)}, keys, nil)
		if (err == nil) != tc.oldOK {
			t.Fatalf("%s: a plain ReadSeeker: %v", tc.name, err)
		}
	}
}

// FuzzVerifyExportStreaming compares the streaming verification of an
// export (small batches) with the all-at-once one: whatever streaming
// accepts, all at once accepts with the same report; whatever all at once
// accepts, streaming accepts the same, unless checkpoint lines are out of
// order; and a refusal is tampering in both or in neither.
func FuzzVerifyExportStreaming(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	es, cps := chain(f, 12, 2, key, nil)
	f.Add(exportOf(es, cps))
	f.Add(exportOf(es[3:], cps))
	archived := appendRecords(f, es, Archived{From: 1, Through: 4, ThroughHash: es[3].Hash, File: "a", SHA256: "00", Size: 1}.Record())
	f.Add(exportOf(archived, cps))
	f.Add(exportOf(archived[3:], cps))
	lines := strings.Split(string(exportOf(es, cps)), "\n")
	lines[2], lines[5] = lines[5], lines[2] // checkpoints of 2 and 4 swapped
	f.Add([]byte(strings.Join(lines, "\n")))
	f.Add([]byte(`{"type":"checkpoint","seq":1,"hash":"00"}` + "\n" + `{"type":"checkpoint","seq":1,"hash":"00"}`))
	defer func(n int) { exportCheckpointBatch = n }(exportCheckpointBatch)
	exportCheckpointBatch = 2
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, errStream := VerifyExport(bytes.NewReader(data), keys, nil)
		ra, errAll := verifyExportAll(bytes.NewReader(data), keys, nil)
		switch {
		case errStream == nil:
			if errAll != nil || !reflect.DeepEqual(rs, ra) {
				t.Fatalf("streaming accepted %+v; all at once %+v, %v", rs, ra, errAll)
			}
		case errAll == nil:
			if !errors.Is(errStream, ErrTampered) || !strings.Contains(errStream.Error(), "comes after the checkpoint of entry") {
				t.Fatalf("all at once accepted %+v; streaming %v", ra, errStream)
			}
		case errors.Is(errStream, ErrTampered) != errors.Is(errAll, ErrTampered):
			t.Fatalf("streaming %v; all at once %v", errStream, errAll)
		}
	})
}
