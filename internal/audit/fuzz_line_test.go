package audit

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"reflect"
	"testing"
)

// FuzzExportLine: the lines of an export (appliance audit export, GET
// /v1/audit) and the token's head, read without keys. A malformed line is
// refused as tampering, naming it; every entry and checkpoint read is
// written back by the Exporter as a line that reads back to the same value
// (so verification of a re-exported chain sees exactly what was read), with
// canonical fields and lower-case hex; a checkpoint also survives the
// single-line JSON form the token's head is kept in.
func FuzzExportLine(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	es, cps := chain(f, 2, 2, key, nil)
	var buf bytes.Buffer
	x := NewExporter(&buf)
	for i := range es {
		_ = x.Entry(&es[i])
	}
	_ = x.Checkpoint(&cps[0])
	_ = x.Flush()
	f.Add(buf.Bytes())
	f.Add([]byte(`{"type":"entry","seq":1,"at_ns":5,"kind":"k","fields":{"b":"2","a":"\u00ff"},"prev_hash":"AB","hash":"00"}`))
	f.Add([]byte(`{"type":"checkpoint","seq":9,"at_ns":-1,"hash":"zz","key_id":"k","signature":""}` + "\n\n{}"))
	// An archived database's export: it starts after entry 1 and holds an
	// audit_archived entry.
	seg, segCps := chain(f, 6, 3, key, nil)
	archived := appendRecords(f, seg, Archived{From: 1, Through: 3, ThroughHash: seg[2].Hash, File: "a", SHA256: "00", Size: 1}.Record())
	f.Add(exportOf(archived[1:], segCps))
	f.Fuzz(func(t *testing.T, data []byte) {
		var entries []Entry
		var checkpoints []Checkpoint
		err := ScanExport(bytes.NewReader(data),
			func(e *Entry) error { entries = append(entries, *e); return nil },
			func(c *Checkpoint) error { checkpoints = append(checkpoints, *c); return nil })
		if err != nil && !errors.Is(err, ErrTampered) && !errors.Is(err, bufio.ErrTooLong) {
			t.Fatalf("refusal is not tampering: %v", err)
		}
		if lines := bytes.Count(data, []byte("\n")) + 1; len(entries)+len(checkpoints) > lines {
			t.Fatalf("%d entries and %d checkpoints from %d lines", len(entries), len(checkpoints), lines)
		}
		var out bytes.Buffer
		x := NewExporter(&out)
		for i := range entries {
			e := &entries[i]
			if canon, err := CanonicalFields(fieldsOf(t, e)); err != nil || canon != e.Fields {
				t.Fatalf("fields %q are not canonical (%q, %v)", e.Fields, canon, err)
			}
			if err := x.Entry(e); err != nil {
				t.Fatalf("entry %d read but not writable: %v", e.Seq, err)
			}
		}
		for i := range checkpoints {
			if err := x.Checkpoint(&checkpoints[i]); err != nil {
				t.Fatal(err)
			}
			head, err := json.Marshal(CheckpointLine(&checkpoints[i]))
			if err != nil {
				t.Fatal(err)
			}
			var l Line
			if err := json.Unmarshal(head, &l); err != nil {
				t.Fatal(err)
			}
			back, err := l.Checkpoint()
			if err != nil || !reflect.DeepEqual(back, checkpoints[i]) {
				t.Fatalf("head %s reads back as %+v (%v)", head, back, err)
			}
		}
		if err := x.Flush(); err != nil {
			t.Fatal(err)
		}
		var entries2 []Entry
		var checkpoints2 []Checkpoint
		if err := ScanExport(bytes.NewReader(out.Bytes()),
			func(e *Entry) error { entries2 = append(entries2, *e); return nil },
			func(c *Checkpoint) error { checkpoints2 = append(checkpoints2, *c); return nil }); err != nil {
			t.Fatalf("re-exported lines refused: %v\n%s", err, out.Bytes())
		}
		if !reflect.DeepEqual(entries2, entries) || !reflect.DeepEqual(checkpoints2, checkpoints) {
			t.Fatalf("re-exported lines read differently:\n%s", out.Bytes())
		}
		for _, e := range entries {
			l, _ := EntryLine(&e)
			if l.Hash != hex.EncodeToString(e.Hash) || l.PrevHash != hex.EncodeToString(e.PrevHash) {
				t.Fatal("hashes are not exported as lower-case hex")
			}
		}
	})
}

func fieldsOf(t *testing.T, e *Entry) map[string]string {
	var m map[string]string
	if e.Fields != "{}" {
		if err := json.Unmarshal([]byte(e.Fields), &m); err != nil {
			t.Fatalf("fields %q: %v", e.Fields, err)
		}
	}
	return m
}

// FuzzParsePublicKey: an audit public key as an auditor supplies it
// (appliance audit verify --key): raw point, DER or PEM. Whatever is
// accepted is a P-256 point that every accepted form of it names by the
// same key id, and its PEM form (GET /v1/audit/keys) reads back equal.
func FuzzParsePublicKey(f *testing.F) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	pemKey, _ := MarshalPublicKey(&key.PublicKey)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	raw, _ := key.PublicKey.Bytes()
	f.Add(pemKey)
	f.Add(der)
	f.Add(raw)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: raw}))
	f.Fuzz(func(t *testing.T, data []byte) {
		pub, err := ParsePublicKey(data)
		if err != nil {
			if pub != nil {
				t.Fatal("refusal with a key")
			}
			return
		}
		if pub.Curve != elliptic.P256() {
			t.Fatalf("accepted a key on %v", pub.Curve.Params().Name)
		}
		id := KeyID(pub)
		if len(id) != 16 {
			t.Fatalf("key id %q", id)
		}
		p, err := MarshalPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		point, err := pub.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		for _, form := range [][]byte{p, point} {
			again, err := ParsePublicKey(form)
			if err != nil || !again.Equal(pub) || KeyID(again) != id {
				t.Fatalf("%q reads back as another key (%v)", form, err)
			}
		}
	})
}
