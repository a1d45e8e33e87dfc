package audit

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"strings"
	"testing"
)

// archivedChain is a chain of 30 entries, checkpoints at 10 and 20, and at
// 26 the record of an archive of entries 1..10: what a database holds once
// its first retention pass has run (from entry 10 on), or part-way through
// its deletion.
func archivedChain(t testing.TB, key *ecdsa.PrivateKey) ([]Entry, []Checkpoint) {
	t.Helper()
	es, all := chain(t, 25, 10, key, nil)
	cps := all[:2] // 10 and 20
	a := Archived{From: 1, Through: 10, ThroughHash: es[9].Hash, File: "audit-000000000001-000000000010.jsonl", SHA256: strings.Repeat("ab", 32), Size: 1234}
	return appendRecords(t, es, a.Record(), Record{Kind: "start"}, Record{Kind: "stop"}, Record{Kind: "start"}, Record{Kind: "stop"}), cps
}

// appendRecords builds recs onto es.
func appendRecords(t testing.TB, es []Entry, recs ...Record) []Entry {
	t.Helper()
	for _, r := range recs {
		last := es[len(es)-1]
		e, err := r.Build(last.Seq, last.Hash, last.At+1, nil)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	return es
}

// verifyExportMode is verify with AcceptCheckpointedStart, as VerifyExport.
func verifyExportMode(keys []*ecdsa.PublicKey, es []Entry, cps []Checkpoint, anchors map[int64][]byte) (Report, error) {
	return verifyWith(keys, es, cps, anchors, true)
}

// TestChainStartingAfterOne: a chain may start after entry 1 where an
// audit_archived entry of it covers the start (a database, also part-way
// through the deletion), or, for an export, at a checkpointed entry (the
// archive file of a later segment). Anything else is a deletion without an
// archive record, named at the first entry.
func TestChainStartingAfterOne(t *testing.T) {
	key := newKey(t)
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	es, cps := archivedChain(t, key)
	cases := []struct {
		name           string
		from           int64 // first entry given
		db, export     bool  // verifies as a database, as an export
		unprotected    int64
		wantInFailures string
	}{
		{"whole chain", 1, true, true, 10, ""},
		{"archived through 10", 10, true, true, 10, ""},
		{"part-way through the deletion", 5, true, true, 10, ""},
		{"after the archived range", 11, false, false, 0, "without an archive record"},
		{"at a later checkpoint, no archive record", 20, false, true, 10, "without an archive record"},
		{"inside the chain, neither", 15, false, false, 0, "no signed checkpoint covers it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			part := es[tc.from-1:]
			for _, mode := range []struct {
				name string
				ok   bool
				run  func([]*ecdsa.PublicKey, []Entry, []Checkpoint, map[int64][]byte) (Report, error)
			}{{"database", tc.db, verify}, {"export", tc.export, verifyExportMode}} {
				r, err := mode.run(keys, part, cps, nil)
				if !mode.ok {
					var be *BadEntry
					if !errors.As(err, &be) || !errors.Is(err, ErrTampered) || be.Seq != tc.from {
						t.Fatalf("%s: %v, want entry %d named", mode.name, err, tc.from)
					}
					if mode.name == "database" && !strings.Contains(err.Error(), "without an archive record") ||
						mode.name == "export" && !strings.Contains(err.Error(), tc.wantInFailures) {
						t.Fatalf("%s: %v", mode.name, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", mode.name, err)
				}
				if r.FirstSeq != tc.from || r.HeadSeq != 30 || r.Entries != 30-tc.from+1 || r.Checkpoints != 2 ||
					r.LastCheckpointSeq != 20 || r.Unprotected != tc.unprotected {
					t.Fatalf("%s: report %+v", mode.name, r)
				}
			}
		})
	}
}

// TestArchiveRecordForgeries: an archive record must agree with the chain
// and the checkpoints. Each forgery below sits after the last checkpoint,
// where hashes can be recomputed without the audit key, and is caught by
// that agreement alone.
func TestArchiveRecordForgeries(t *testing.T) {
	key := newKey(t)
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	base, cps := archivedChain(t, key)
	forge := func(a Archived) []Entry {
		es := clone(base)
		rec := a.Record()
		e, err := rec.Build(25, es[24].Hash, es[25].At, nil)
		if err != nil {
			t.Fatal(err)
		}
		es[25] = e
		rehash(es, 26)
		return es
	}
	good := Archived{From: 1, Through: 10, ThroughHash: base[9].Hash, File: "f", SHA256: "00", Size: 1}
	wrongHash := good
	wrongHash.ThroughHash = base[10].Hash
	late := good
	late.Through, late.ThroughHash = 28, base[27].Hash
	noCheckpoint := good
	noCheckpoint.Through, noCheckpoint.ThroughHash = 15, base[14].Hash
	cases := []struct {
		name string
		es   []Entry
		from int64
		want string
	}{
		{"hash of the archive's last entry differs from its checkpoint", forge(wrongHash), 1, "differs from that entry's signed checkpoint"},
		{"same, the chain starting there", forge(wrongHash), 10, "differs from that entry's signed checkpoint"},
		{"archive of entries that come after the record", forge(late), 1, "come after it"},
		{"archive ending at an entry no checkpoint covers", forge(noCheckpoint), 12, "no checkpoint covers"},
		{"malformed record", appendRecords(t, clone(base), Record{Kind: KindArchived, Fields: map[string]string{"from": "1", "through": "x"}}), 10, "archive record"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verify(keys, tc.es[tc.from-1:], cps, nil)
			var be *BadEntry
			if !errors.As(err, &be) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := verify(keys, forge(good)[9:], cps, nil); err != nil {
		t.Fatalf("the genuine record rebuilt: %v", err)
	}
}

// TestAnchorBeforeFirstEntry: an anchor before the first entry cannot be
// checked; it is a usage error naming the archive to check, not tampering.
// Anchors from the first entry on are checked as ever.
func TestAnchorBeforeFirstEntry(t *testing.T) {
	key := newKey(t)
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	es, cps := archivedChain(t, key)
	_, err := verify(keys, es[9:], cps, map[int64][]byte{5: es[4].Hash, 7: es[6].Hash})
	var ae *AnchorError
	if !errors.As(err, &ae) || errors.Is(err, ErrTampered) || ae.Anchor != 5 || ae.First != 10 ||
		err.Error() != "anchor 5 is before the first retained entry 10: verify the archive that holds it" {
		t.Fatalf("anchor before the chain: %v", err)
	}
	if _, err := verify(keys, es[9:], cps, map[int64][]byte{10: es[9].Hash, 30: es[29].Hash}); err != nil {
		t.Fatalf("anchors in the chain: %v", err)
	}
	_, err = verify(keys, es[9:], cps, map[int64][]byte{10: es[10].Hash})
	var be *BadEntry
	if !errors.As(err, &be) || be.Seq != 10 {
		t.Fatalf("wrong anchor at the first entry: %v", err)
	}
}

// FuzzParseArchived: any fields of an audit_archived entry are refused or
// read into a record that holds its bounds (a plain file name among them)
// and that, written again, reads back the same.
func FuzzParseArchived(f *testing.F) {
	ok := Archived{From: 3, Through: 9, ThroughHash: make([]byte, HashSize), File: "audit-000000000003-000000000009.jsonl", SHA256: "ff", Size: 10}
	e, err := ok.Record().Build(11, make([]byte, HashSize), 1, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(e.Fields)
	f.Add(`{"from":"1","through":"1","through_hash":"` + strings.Repeat("00", HashSize) + `","file":"../x","size":"0"}`)
	f.Add(`{"from":"1"}`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, fields string) {
		a, err := ParseArchived(&Entry{Seq: 11, Kind: KindArchived, Fields: fields})
		if err != nil {
			return
		}
		if a.From < 1 || a.Through < a.From || len(a.ThroughHash) != HashSize || a.Size < 0 ||
			a.File == "" || strings.ContainsAny(a.File, "/\x00\n") || a.File == "." || a.File == ".." {
			t.Fatalf("accepted a record out of bounds: %+v", a)
		}
		e, err := a.Record().Build(12, make([]byte, HashSize), 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ParseArchived(&e)
		if err != nil || b.From != a.From || b.Through != a.Through || !bytes.Equal(b.ThroughHash, a.ThroughHash) ||
			b.File != a.File || b.SHA256 != a.SHA256 || b.Size != a.Size {
			t.Fatalf("%+v written again reads %+v, %v", a, b, err)
		}
	})
}

func TestParseArchived(t *testing.T) {
	a := Archived{From: 3, Through: 9, ThroughHash: make([]byte, HashSize), File: "audit-000000000003-000000000009.jsonl", SHA256: "ff", Size: 10}
	e, err := a.Record().Build(11, make([]byte, HashSize), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseArchived(&e)
	if err != nil || got.From != 3 || got.Through != 9 || got.File != a.File || got.SHA256 != "ff" || got.Size != 10 {
		t.Fatalf("%+v %v", got, err)
	}
	for _, f := range []map[string]string{
		{"from": "0", "through": "9"},
		{"from": "5", "through": "4"},
		{"from": "1", "through": "9", "through_hash": "00", "file": "f", "size": "1"},
		{"from": "1", "through": "9", "through_hash": strings.Repeat("00", 32), "file": "", "size": "1"},
		{"from": "1", "through": "9", "through_hash": strings.Repeat("00", 32), "file": "f", "size": "-1"},
		{"from": "1", "through": "9", "through_hash": strings.Repeat("00", 32), "file": "../f", "size": "1"},
		{"from": "1", "through": "9", "through_hash": strings.Repeat("00", 32), "file": "..", "size": "1"},
		{"from": "1", "through": "9", "through_hash": strings.Repeat("00", 32), "file": "/etc/passwd", "size": "1"},
		{"from": "1", "through": "9", "through_hash": strings.Repeat("00", 32), "file": "f\n", "size": "1"},
	} {
		e, _ := Record{Kind: KindArchived, Fields: f}.Build(11, nil, 1, nil)
		if _, err := ParseArchived(&e); err == nil {
			t.Fatalf("accepted %v", f)
		}
	}
}
