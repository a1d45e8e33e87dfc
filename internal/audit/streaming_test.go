package audit

import (
	"crypto/ecdsa"
	"errors"
	"reflect"
	"testing"
)

// streamVerify verifies es the way a database is verified: checkpoints given
// in batches as the entries reach them, and let go once passed. It fails
// the test if more than batch+1 checkpoints are ever held.
func streamVerify(t *testing.T, keys []*ecdsa.PublicKey, es []Entry, cps []Checkpoint, batch int) (Report, error) {
	t.Helper()
	v := NewStreamingVerifier(keys)
	next := 0 // index of the next checkpoint to give
	feed := func(upTo int64) error {
		for next < len(cps) && (next == 0 || cps[next-1].Seq < upTo) {
			end := min(next+batch, len(cps))
			if err := v.AddCheckpoints(cps[next:end]); err != nil {
				return err
			}
			next = end
			v.DropBefore(min(upTo, cps[end-1].Seq+1))
		}
		v.DropBefore(upTo)
		if len(v.cps) > batch+1 {
			t.Fatalf("%d checkpoints held with batches of %d", len(v.cps), batch)
		}
		return nil
	}
	for i := range es {
		if err := feed(es[i].Seq); err != nil {
			return Report{}, err
		}
		if err := v.Add(&es[i]); err != nil {
			return Report{}, err
		}
	}
	if err := feed(1 << 62); err != nil {
		return Report{}, err
	}
	return v.Finish()
}

// TestStreamingVerifier: checkpoints given in batches and let go once the
// entries pass them give the same report and the same failures as all of
// them at once, holding a batch at most.
func TestStreamingVerifier(t *testing.T) {
	key := newKey(t)
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	es, cps := chain(t, 600, 3, key, newRedactor(t)) // 200 checkpoints
	want, err := verify(keys, es, cps, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, batch := range []int{1, 7, 500} {
		got, err := streamVerify(t, keys, es, cps, batch)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("batch %d: %+v, %v; want %+v", batch, got, err, want)
		}
	}

	tampered := func(name string, es []Entry, cps []Checkpoint) {
		t.Helper()
		_, errAll := verify(keys, es, cps, nil)
		_, errStream := streamVerify(t, keys, es, cps, 7)
		var a, b *BadEntry
		if !errors.As(errAll, &a) || !errors.As(errStream, &b) || !errors.Is(errStream, ErrTampered) {
			t.Fatalf("%s: at once %v, streaming %v", name, errAll, errStream)
		}
		if a.Seq != b.Seq && a.Seq != 0 { // a checkpoint's own failure may surface at its entry
			t.Fatalf("%s: at once names %d (%s), streaming %d (%s)", name, a.Seq, a.Reason, b.Seq, b.Reason)
		}
	}
	edited := append([]Entry(nil), es...)
	edited[300].Detail = "edited"
	tampered("modified", edited, cps)
	tampered("truncated behind a checkpoint", es[:500], cps)
	forged := append([]Checkpoint(nil), cps...)
	forged[150].Signature = append([]byte(nil), forged[150].Signature...)
	forged[150].Signature[5] ^= 1
	tampered("forged checkpoint", es, forged)
	rewritten := append([]Checkpoint(nil), cps...)
	rewritten[100].Hash = es[0].Hash
	rewritten[100] = sign(t, key, rewritten[100].Seq, rewritten[100].Hash, rewritten[100].At)
	tampered("checkpoint of another history", es, rewritten)

	// Out of order batches are refused.
	v := NewStreamingVerifier(keys)
	if err := v.AddCheckpoints(cps[5:6]); err != nil {
		t.Fatal(err)
	}
	if err := v.AddCheckpoints(cps[4:5]); !errors.Is(err, ErrTampered) {
		t.Fatalf("a batch before the last: %v", err)
	}
	if err := NewStreamingVerifier(keys).AddCheckpoints(nil); err != nil {
		t.Fatal(err)
	}
	if v2, _ := NewVerifier(keys, nil); v2.AddCheckpoints(cps[:1]) == nil {
		t.Fatal("AddCheckpoints on a verifier that has them all")
	}
}
