package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// chain builds n entries with a checkpoint every cpEvery entries, signed by key.
func chain(t testing.TB, n int, cpEvery int, key *ecdsa.PrivateKey, red *Redactor) ([]Entry, []Checkpoint) {
	t.Helper()
	var es []Entry
	var cps []Checkpoint
	var prev []byte
	for i := 0; i < n; i++ {
		rec := Record{Kind: "sign_request", Principal: "client", Detail: fmt.Sprintf("request %d", i),
			Fields:    map[string]string{"request_id": fmt.Sprintf("req_%d", i), "state": "signed"},
			Sensitive: map[string]string{"idempotency_key": fmt.Sprintf("idem-%d", i)}}
		e, err := rec.Build(int64(i), prev, int64(1_700_000_000_000_000_000+i), red)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
		prev = e.Hash
		if cpEvery > 0 && (i+1)%cpEvery == 0 {
			cps = append(cps, sign(t, key, e.Seq, e.Hash, e.At))
		}
	}
	return es, cps
}

func sign(t testing.TB, key *ecdsa.PrivateKey, seq int64, h []byte, at int64) Checkpoint {
	t.Helper()
	c := Checkpoint{Seq: seq, Hash: h, At: at, KeyID: KeyID(&key.PublicKey)}
	r, s, err := ecdsa.Sign(rand.Reader, key, c.Digest())
	if err != nil {
		t.Fatal(err)
	}
	c.Signature = append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	return c
}

func verify(keys []*ecdsa.PublicKey, es []Entry, cps []Checkpoint, anchors map[int64][]byte) (Report, error) {
	return verifyWith(keys, es, cps, anchors, false)
}

// verifyWith is verify, with AcceptCheckpointedStart when checkpointedStart.
func verifyWith(keys []*ecdsa.PublicKey, es []Entry, cps []Checkpoint, anchors map[int64][]byte, checkpointedStart bool) (Report, error) {
	v, err := NewVerifier(keys, cps)
	if err != nil {
		return Report{}, err
	}
	if checkpointedStart {
		v.AcceptCheckpointedStart()
	}
	for s, h := range anchors {
		v.Anchor(s, h)
	}
	for i := range es {
		if err := v.Add(&es[i]); err != nil {
			return Report{}, err
		}
	}
	return v.Finish()
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newRedactor(t testing.TB) *Redactor {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	r, err := NewRedactor(key)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// rehash recomputes the hashes of es from index i on, as an attacker with
// the database (but not the audit key) can.
func rehash(es []Entry, i int) {
	for ; i < len(es); i++ {
		if i > 0 {
			es[i].PrevHash = es[i-1].Hash
		}
		es[i].Hash = es[i].ComputeHash()
	}
}

func clone(es []Entry) []Entry {
	out := make([]Entry, len(es))
	copy(out, es)
	return out
}

func TestVerifyIntactChain(t *testing.T) {
	key := newKey(t)
	es, cps := chain(t, 50, 20, key, newRedactor(t))
	r, err := verify([]*ecdsa.PublicKey{&key.PublicKey}, es, cps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Entries != 50 || r.HeadSeq != 50 || r.Checkpoints != 2 || r.LastCheckpointSeq != 40 || r.Unprotected != 10 {
		t.Fatalf("report %+v", r)
	}
}

// TestTamperingDetected: each kind of tampering is detected and the first
// bad entry is named.
func TestTamperingDetected(t *testing.T) {
	key := newKey(t)
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	base, cps := chain(t, 50, 20, key, newRedactor(t))
	cases := []struct {
		name    string
		tamper  func([]Entry) ([]Entry, []Checkpoint)
		wantSeq int64
		want    string
	}{
		{"modified", func(es []Entry) ([]Entry, []Checkpoint) {
			es[9].Detail = "request 9 (edited)"
			return es, cps
		}, 10, "modified"},
		{"modified field", func(es []Entry) ([]Entry, []Checkpoint) {
			es[44].Fields = strings.Replace(es[44].Fields, "signed", "denied", 1)
			return es, cps
		}, 45, "modified"},
		{"modified and its own hash recomputed", func(es []Entry) ([]Entry, []Checkpoint) {
			es[9].Principal = "someone-else"
			es[9].Hash = es[9].ComputeHash()
			return es, cps
		}, 11, "does not follow"},
		{"rewritten from entry 10 on, every hash recomputed", func(es []Entry) ([]Entry, []Checkpoint) {
			es[9].Detail = "rewritten"
			rehash(es, 9)
			return es, cps
		}, 20, "checkpoint"},
		{"rewritten after the last checkpoint, anchored", func(es []Entry) ([]Entry, []Checkpoint) {
			es[44].Detail = "rewritten"
			rehash(es, 44)
			return es, cps
		}, 50, "expected head"},
		{"deleted", func(es []Entry) ([]Entry, []Checkpoint) {
			return append(es[:29:29], es[30:]...), cps
		}, 30, "missing"},
		{"deleted and renumbered", func(es []Entry) ([]Entry, []Checkpoint) {
			es = append(es[:29:29], es[30:]...)
			for i := 29; i < len(es); i++ {
				es[i].Seq--
			}
			rehash(es, 29)
			return es, cps
		}, 40, "checkpoint"},
		{"inserted", func(es []Entry) ([]Entry, []Checkpoint) {
			fake, _ := Record{Kind: "sign_request", Detail: "inserted"}.Build(30, es[29].Hash, es[29].At+1, nil)
			out := append(append(es[:30:30], fake), es[30:]...)
			for i := 31; i < len(out); i++ {
				out[i].Seq++
			}
			return out, cps
		}, 32, "does not follow"},
		{"reordered", func(es []Entry) ([]Entry, []Checkpoint) {
			es[24], es[25] = es[25], es[24]
			return es, cps
		}, 25, "missing"},
		{"reordered, sequence numbers kept", func(es []Entry) ([]Entry, []Checkpoint) {
			es[24], es[25] = es[25], es[24]
			es[24].Seq, es[25].Seq = 25, 26
			return es, cps
		}, 25, "does not follow"},
		{"truncated behind the last checkpoint", func(es []Entry) ([]Entry, []Checkpoint) {
			return es[:35], cps
		}, 36, "truncated"},
		{"truncated after the last checkpoint, anchored", func(es []Entry) ([]Entry, []Checkpoint) {
			return es[:45], cps
		}, 46, "truncated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			es, c := tc.tamper(clone(base))
			anchors := map[int64][]byte{50: base[49].Hash}
			_, err := verify(keys, es, c, anchors)
			var be *BadEntry
			if !errors.As(err, &be) || !errors.Is(err, ErrTampered) {
				t.Fatalf("not detected: %v", err)
			}
			if be.Seq != tc.wantSeq || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %q (seq %d), want seq %d mentioning %q", err, be.Seq, tc.wantSeq, tc.want)
			}
		})
	}
	// Without the anchor, a chain rewritten after the last checkpoint
	// verifies: that tail is what the token's head and frequent checkpoints
	// protect. The report says how many entries are unprotected.
	es := clone(base)
	es[44].Detail = "rewritten"
	rehash(es, 44)
	if r, err := verify(keys, es, cps, nil); err != nil || r.Unprotected != 10 {
		t.Fatalf("unanchored tail: %v %+v", err, r)
	}
}

func TestCheckpointForgeries(t *testing.T) {
	key, other := newKey(t), newKey(t)
	es, cps := chain(t, 30, 10, key, nil)
	keys := []*ecdsa.PublicKey{&key.PublicKey}

	forged := append([]Checkpoint(nil), cps...)
	forged[1].Signature = bytes.Clone(forged[1].Signature)
	forged[1].Signature[5] ^= 1
	if _, err := verify(keys, es, forged, nil); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("altered signature: %v", err)
	}
	moved := append([]Checkpoint(nil), cps...)
	moved[1].Seq = 15
	if _, err := verify(keys, es, moved, nil); !errors.Is(err, ErrTampered) {
		t.Fatalf("moved checkpoint: %v", err)
	}
	// A checkpoint by a key the auditor did not supply.
	byOther := append(append([]Checkpoint(nil), cps...), sign(t, other, 30, es[29].Hash, es[29].At))
	if _, err := verify(keys, es, byOther, nil); !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "not supplied") {
		t.Fatalf("foreign key: %v", err)
	}
	// The same chain verifies under the right keys only.
	if _, err := verify([]*ecdsa.PublicKey{&other.PublicKey}, es, cps, nil); err == nil {
		t.Fatal("verified under the wrong key")
	}
}

func TestRedaction(t *testing.T) {
	red := newRedactor(t)
	e, err := Record{Kind: "auth_failure", Sensitive: map[string]string{"remote_addr": "10.1.2.3:4444"}}.Build(0, nil, 1, red)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.Fields, "10.1.2.3") || !strings.Contains(e.Fields, "hmac-sha256:"+red.ID()+":") {
		t.Fatalf("fields %s", e.Fields)
	}
	// An auditor with the key can test a known value.
	if !strings.Contains(e.Fields, red.Value("10.1.2.3:4444")) || strings.Contains(e.Fields, red.Value("10.1.2.3:4445")) {
		t.Fatal("HMAC does not match its value")
	}
	sealed, _ := Record{Kind: "auth_failure", Sensitive: map[string]string{"remote_addr": "10.1.2.3:4444"}}.Build(0, nil, 1, nil)
	if !strings.Contains(sealed.Fields, `"remote_addr":"redacted"`) {
		t.Fatalf("sealed fields %s", sealed.Fields)
	}
	if _, err := (Record{Kind: "x", Fields: map[string]string{"a": "1"}, Sensitive: map[string]string{"a": "2"}}).Build(0, nil, 1, red); err == nil {
		t.Fatal("a field both plain and sensitive was accepted")
	}
}

// TestExportRoundTrip: an export verifies, byte-identical hashes included,
// even with invalid UTF-8 and HTML characters in the entries.
func TestExportRoundTrip(t *testing.T) {
	key := newKey(t)
	es, cps := chain(t, 25, 10, key, newRedactor(t))
	odd, _ := Record{Kind: "odd", Principal: "p\xff<&>", Detail: "d\x00\"é", Fields: map[string]string{"k\xfe": "<v>"}}.Build(25, es[24].Hash, 99, nil)
	es = append(es, odd)
	var buf bytes.Buffer
	x := NewExporter(&buf)
	bySeq := map[int64]Checkpoint{}
	for _, c := range cps {
		bySeq[c.Seq] = c
	}
	for i := range es {
		if err := x.Entry(&es[i]); err != nil {
			t.Fatal(err)
		}
		if c, ok := bySeq[es[i].Seq]; ok {
			if err := x.Checkpoint(&c); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := x.Flush(); err != nil {
		t.Fatal(err)
	}
	r, err := VerifyExport(bytes.NewReader(buf.Bytes()), []*ecdsa.PublicKey{&key.PublicKey}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Entries != 26 || r.Checkpoints != 2 {
		t.Fatalf("report %+v", r)
	}
	// One edited line in the export is caught, naming its entry.
	lines := strings.Split(buf.String(), "\n")
	for i, l := range lines {
		if strings.Contains(l, `"seq":7,`) && strings.Contains(l, `"type":"entry"`) {
			lines[i] = strings.Replace(l, "request 6", "request 6!", 1)
		}
	}
	_, err = VerifyExport(strings.NewReader(strings.Join(lines, "\n")), []*ecdsa.PublicKey{&key.PublicKey}, nil)
	var be *BadEntry
	if !errors.As(err, &be) || be.Seq != 7 {
		t.Fatalf("edited export: %v", err)
	}
}

// exportOf writes es as an export, each checkpoint of cps right after the
// entry it covers.
func exportOf(es []Entry, cps []Checkpoint) []byte {
	bySeq := map[int64]*Checkpoint{}
	for i := range cps {
		bySeq[cps[i].Seq] = &cps[i]
	}
	var buf bytes.Buffer
	x := NewExporter(&buf)
	for i := range es {
		_ = x.Entry(&es[i])
		if c := bySeq[es[i].Seq]; c != nil {
			_ = x.Checkpoint(c)
		}
	}
	_ = x.Flush()
	return buf.Bytes()
}

// FuzzScanExport: whatever verifies has a consistent report, and a chain
// that starts after entry 1 says why in the export itself: a signed
// checkpoint of its first entry (the archive file of a later segment), or
// an audit_archived entry whose range holds it (an archived database).
func FuzzScanExport(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	es, cps := chain(f, 3, 2, key, nil)
	var buf bytes.Buffer
	x := NewExporter(&buf)
	for i := range es {
		_ = x.Entry(&es[i])
	}
	_ = x.Checkpoint(&cps[0])
	_ = x.Flush()
	f.Add(buf.Bytes())
	f.Add([]byte(`{"type":"entry","seq":1}` + "\n" + `{"type":"checkpoint","seq":1,"hash":"zz"}`))
	// Chains starting after 1: the second segment of an archive, from
	// entry 3 (checkpointed); an archived database part-way through its
	// deletion, from entry 2, which the audit_archived entry covers.
	seg, segCps := chain(f, 6, 3, key, nil)
	f.Add(exportOf(seg[2:], segCps))
	archived := appendRecords(f, seg, Archived{From: 1, Through: 3, ThroughHash: seg[2].Hash, File: "a", SHA256: "00", Size: 1}.Record())
	f.Add(exportOf(archived[1:], segCps))
	f.Fuzz(func(t *testing.T, data []byte) {
		// Never a panic; whatever verifies has a consistent report.
		r, err := VerifyExport(bytes.NewReader(data), []*ecdsa.PublicKey{&key.PublicKey}, nil)
		if err != nil {
			return
		}
		if r.Entries == 0 {
			if r.FirstSeq != 0 || r.HeadSeq != 0 {
				t.Fatalf("empty chain reported from %d to %d", r.FirstSeq, r.HeadSeq)
			}
			return
		}
		if r.FirstSeq < 1 || r.HeadSeq-r.FirstSeq+1 != r.Entries || r.Unprotected < 0 || r.Unprotected > r.Entries {
			t.Fatalf("verified chain %d..%d with %d entries, %d unprotected", r.FirstSeq, r.HeadSeq, r.Entries, r.Unprotected)
		}
		if r.FirstSeq == 1 {
			return
		}
		explained := false
		_ = ScanExport(bytes.NewReader(data), func(e *Entry) error {
			if a, err := ParseArchived(e); err == nil && a.From <= r.FirstSeq && r.FirstSeq <= a.Through {
				explained = true
			}
			return nil
		}, func(c *Checkpoint) error {
			explained = explained || c.Seq == r.FirstSeq
			return nil
		})
		if !explained {
			t.Fatalf("a chain starting at entry %d verified with no checkpoint or archive record for it", r.FirstSeq)
		}
	})
}
