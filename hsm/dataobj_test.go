package hsm_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/custodysigner/appliance/hsm"
	"github.com/miekg/pkcs11"
)

func dataByLabel(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

func TestDataObject(t *testing.T) {
	m, uri := openModule(t, nil)
	p, sh := rawSession(t, uri, m.Slot())
	shRW, err := p.OpenSession(m.Slot(), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseSession(shRW)
	const label = "audit-head"

	if _, err := m.ReadData(ctxT(t), label); !errors.Is(err, hsm.ErrDataNotFound) {
		t.Fatalf("ReadData before any write = %v, want ErrDataNotFound", err)
	}
	for i, v := range [][]byte{[]byte("checkpoint 1"), bytes.Repeat([]byte{0xa5}, 300), {}} {
		if err := m.WriteData(ctxT(t), label, v); err != nil {
			t.Fatalf("WriteData %d: %v", i, err)
		}
		got, err := m.ReadData(ctxT(t), label)
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("ReadData after write %d = %q, %v; want %q", i, got, err, v)
		}
		if n := countObjects(t, p, sh, dataByLabel(label)); n != 1 {
			t.Fatalf("%d data objects after write %d, want 1 (the old one destroyed)", n, i)
		}
	}
	h := findObject(t, p, sh, dataByLabel(label))
	wantAttrs(t, p, sh, h, map[uint]bool{pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true})
	got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, nil)})
	if err != nil || string(got[0].Value) != hsm.DataApplication {
		t.Fatalf("CKA_APPLICATION = %q, %v", got[0].Value, err)
	}

	// Labels are independent.
	if err := m.WriteData(ctxT(t), "other", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got, err := m.ReadData(ctxT(t), label); err != nil || len(got) != 0 {
		t.Fatalf("ReadData(%q) after writing another label = %q, %v", label, got, err)
	}

	// A crash between create and destroy leaves two versions: the newest wins
	// and the next write removes the stale one.
	stale := make([]byte, 8+len("stale"))
	binary.BigEndian.PutUint64(stale, 0)
	copy(stale[8:], "stale")
	if _, err := p.CreateObject(shRW, append(dataByLabel(label),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, hsm.DataApplication), pkcs11.NewAttribute(pkcs11.CKA_VALUE, stale))); err != nil {
		t.Fatal(err)
	}
	if got, err := m.ReadData(ctxT(t), label); err != nil || len(got) != 0 {
		t.Fatalf("ReadData with a stale older version = %q, %v; want the newest (empty)", got, err)
	}
	if err := m.WriteData(ctxT(t), label, []byte("after crash")); err != nil {
		t.Fatal(err)
	}
	if n := countObjects(t, p, sh, dataByLabel(label)); n != 1 {
		t.Fatalf("%d data objects after cleanup, want 1", n)
	}

	if err := m.WriteData(ctxT(t), "", []byte("x")); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Errorf("WriteData with an empty label = %v, want ErrInvalidInput", err)
	}
	if err := m.WriteData(ctxT(t), label, make([]byte, hsm.MaxDataLen+1)); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Errorf("WriteData too large = %v, want ErrInvalidInput", err)
	}
}

// TestDataObjectReadersNeverSeeAGap reads while another goroutine keeps
// replacing the value: every read must succeed, and values never go backwards.
func TestDataObjectReadersNeverSeeAGap(t *testing.T) {
	m, _ := openModule(t, nil)
	const label, writes = "head", 80
	if err := m.WriteData(ctxT(t), label, fmt.Appendf(nil, "%06d", 0)); err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		reads atomic.Int64
	)
	done := make(chan struct{})
	errs := make(chan error, 3)
	for range 2 {
		wg.Go(func() {
			last := -1
			for {
				select {
				case <-done:
					return
				default:
				}
				v, err := m.ReadData(ctxT(t), label)
				if err != nil {
					errs <- fmt.Errorf("ReadData during updates: %w", err)
					return
				}
				var n int
				if _, err := fmt.Sscanf(string(v), "%06d", &n); err != nil || n < last {
					errs <- fmt.Errorf("read %q after %d", v, last)
					return
				}
				last = n
				reads.Add(1)
			}
		})
	}
	for i := 1; i <= writes; i++ {
		if err := m.WriteData(ctxT(t), label, fmt.Appendf(nil, "%06d", i)); err != nil {
			t.Fatalf("WriteData %d: %v", i, err)
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := reads.Load(); n < writes {
		t.Errorf("only %d reads overlapped %d writes", n, writes)
	}
	if v, err := m.ReadData(ctxT(t), label); err != nil || string(v) != fmt.Sprintf("%06d", writes) {
		t.Fatalf("final ReadData = %q, %v", v, err)
	}
}
