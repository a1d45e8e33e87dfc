package hsm_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/custodysigner/appliance/hsm"
)

func TestPoolExhaustedTimesOut(t *testing.T) {
	const timeout = 200 * time.Millisecond
	m, _ := openModule(t, func(o *hsm.Options) { o.PoolSize = 1; o.AcquireTimeout = timeout })
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "pool")
	if err != nil {
		t.Fatal(err)
	}
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
	d := sha256.Sum256([]byte("x"))

	release, err := m.Borrow(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = m.Sign(ctxT(t), ref, d[:])
	took := time.Since(start)
	if !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("Sign with the pool exhausted = %v, want ErrUnavailable", err)
	}
	if took < timeout || took > timeout+time.Second {
		t.Fatalf("Sign gave up after %s, want about %s", took, timeout)
	}
	if h := m.Health(); !h.Healthy || h.InUse != 1 || h.PoolSize != 1 {
		t.Fatalf("Health = %+v: an exhausted pool is busy, not unhealthy", h)
	}

	// A cancelled context ends the wait early and still says ErrUnavailable.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = m.Sign(ctx, ref, d[:])
	if !errors.Is(err, hsm.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > timeout {
		t.Fatalf("Sign with a short ctx = %v after %s", err, time.Since(start))
	}

	release()
	if _, err := m.Sign(ctxT(t), ref, d[:]); err != nil {
		t.Fatalf("Sign after release: %v", err)
	}
}

func TestConcurrentSigning(t *testing.T) {
	m, _ := openModule(t, func(o *hsm.Options) { o.PoolSize = 4 })
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "conc")
	if err != nil {
		t.Fatal(err)
	}
	ref := hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			for i := range 25 {
				d := sha256.Sum256(fmt.Appendf(nil, "%d/%d", g, i))
				sig, err := m.Sign(context.Background(), ref, d[:])
				if err != nil {
					errs <- err
					return
				}
				if err := checkSecp256k1(k.PublicKey, d[:], sig); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if h := m.Health(); !h.Healthy || h.InUse != 0 || h.Waiters != 0 {
		t.Fatalf("Health after the storm = %+v", h)
	}
}
