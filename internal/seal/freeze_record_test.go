package seal

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/custodysigner/appliance/internal/store"
)

// failingWrites fails the first n write transactions, as a full disk does.
type failingWrites struct {
	*store.Store
	n atomic.Int32
}

func (f *failingWrites) WriteTx(ctx context.Context, fn func(tx *store.Tx) error) error {
	if f.n.Add(-1) >= 0 {
		return errors.New("database or disk is full")
	}
	return f.Store.WriteTx(ctx, fn)
}

type nopUnsealer struct{}

func (nopUnsealer) Unseal(context.Context, []byte) error { return nil }
func (nopUnsealer) Seal()                                {}

// A freeze that could not be written when it happened is written as soon
// as writes work again, so a restart after that starts frozen.
func TestFreezeRecordedOnceWritesWork(t *testing.T) {
	freezeRetry = [2]time.Duration{10 * time.Millisecond, 50 * time.Millisecond}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "appliance.db")
	st, err := store.Open(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fw := &failingWrites{Store: st}
	fw.n.Store(5)
	m, err := New(ctx, fw, nopUnsealer{}, Options{Log: zaptest.NewLogger(t), AutoPIN: func() ([]byte, error) { return []byte("x"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Freeze(ctx, "tripwire", "3 consecutive failures to record"); err == nil {
		t.Fatal("Freeze reported success although the write failed")
	}
	if !m.Frozen() {
		t.Fatal("not frozen in memory")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := st.GetFreeze(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if f.Frozen {
			if f.By != "tripwire" {
				t.Fatalf("recorded freeze %+v", f)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the freeze was never recorded after writes came back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// What a restart reads.
	m2, err := New(ctx, st, nopUnsealer{}, Options{Log: zaptest.NewLogger(t), AutoPIN: func() ([]byte, error) { return []byte("x"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	if !m2.Frozen() {
		t.Fatal("a restart after the late record starts unfrozen")
	}
}
