package hsm_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
)

// benchPoolSize is the appliance's default hsm.pool_size.
const benchPoolSize = 4

// BenchmarkSign measures Module.Sign on a real SoftHSM token: acquiring a
// pooled session, C_SignInit and C_Sign with the cached key handle, and the
// low-S normalisation. secp256k1 is the signing path's algorithm;
// parallel_N runs N concurrent callers (GOMAXPROCS and 4×GOMAXPROCS)
// through the pool of benchPoolSize sessions; ns/op is then wall time per
// signature across all of them. SoftHSM signs in the caller's thread, so
// the ceiling is the cores, not the pool. P-256 (the audit checkpoint key) and
// Ed25519 are for reference. One module and three keys are made once.
func BenchmarkSign(b *testing.B) {
	uri, _ := softhsmtest.NewToken(b)
	m, err := hsm.Open(context.Background(), hsm.Options{URI: uri, Logger: zap.NewNop(), PoolSize: benchPoolSize, AcquireTimeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := m.Close(); err != nil {
			b.Error(err)
		}
	})
	ctx := context.Background()
	refs := map[hsm.Algorithm]hsm.KeyRef{}
	for _, alg := range []hsm.Algorithm{hsm.Secp256k1, hsm.P256, hsm.Ed25519} {
		k, err := m.GenerateKey(ctx, alg, "bench-"+string(alg))
		if err != nil {
			b.Fatal(err)
		}
		refs[alg] = hsm.KeyRef{ID: k.ID, Algorithm: alg}
	}
	digest := sha256.Sum256([]byte("an unsigned transaction's signing hash"))
	sign := func(b *testing.B, alg hsm.Algorithm) {
		if _, err := m.Sign(ctx, refs[alg], digest[:]); err != nil {
			b.Fatal(err)
		}
	}
	for _, alg := range []hsm.Algorithm{hsm.Secp256k1, hsm.P256, hsm.Ed25519} {
		b.Run(string(alg), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sign(b, alg)
			}
		})
	}
	for _, p := range []int{1, 4} {
		b.Run(fmt.Sprintf("secp256k1/parallel_%d", p*runtime.GOMAXPROCS(0)), func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(p)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := m.Sign(ctx, refs[hsm.Secp256k1], digest[:]); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
