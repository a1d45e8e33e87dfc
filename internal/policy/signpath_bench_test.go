package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

// harnessRules are the rules scripts/bench.sh gives eth-dev: every part of
// the engine that reads or writes state runs, and nothing is ever refused.
var harnessRules = Rules{
	PerTxMax:             map[string]string{"ETH": "1000000000000000000"},
	Windows:              []Window{{"ETH", "24h", "1000000000000000000000000"}},
	MaxFeePerGas:         "500000000000",
	MaxPriorityFeePerGas: "10000000000",
	RatePerClient:        &Rate{PerSecond: 100000, Burst: 100000},
	RatePerKey:           &Rate{PerSecond: 100000, Burst: 100000},
	ApprovalAbove:        map[string]string{"ETH": "10000000000000000000"},
	Approvals:            2,
}

// BenchmarkSigningPathStore is the database work of one signed request as
// internal/signing does it, from 8 concurrent callers per core (group
// commit): CreateRequest with the policy evaluation in its hook (the
// harness's rules), then CompleteRequestWith: everything but the HSM, TLS,
// HTTP, decoding and the signature check. cpu-us/op is the process's user+system CPU per
// request (a shared machine: compare CPU, not wall time).
func BenchmarkSigningPathStore(b *testing.B) {
	s, _ := newStore(b)
	e := newEngine(b)
	addKey(b, s, "bench")
	setRules(b, s, "bench", harnessRules)
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(8)
	cpu0 := processCPU(b)
	b0, j0 := s.GroupCommitStats()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			payload := []byte(fmt.Sprint("payload-", i))
			h := sha256.Sum256(payload)
			rec, created, err := s.CreateRequest(ctx, store.Request{
				Principal: "client", IdempotencyKey: fmt.Sprint("idem-", i), KeyID: "bench", Chain: "ethereum", Network: "1337",
				Payload: payload, PayloadHash: h[:], Intent: []byte(`{"kind":"transfer","to":"0x1111111111111111111111111111111111111111","value":"1000000000000"}`),
				Digest: bytes.Repeat([]byte{7}, 32),
			}, func(tx *store.Tx, r *store.Request) error {
				d, err := e.Evaluate(context.WithoutCancel(ctx), tx, Request{KeyID: "bench", Principal: "client", RequestID: r.ID,
					Intent: ethTransfer(alice, "1000000000000")})
				if err == nil && d.Outcome != Allow {
					err = fmt.Errorf("decision %+v", d)
				}
				return err
			})
			if err != nil || !created {
				b.Errorf("create: %v (created %v)", err, created)
				return
			}
			if err := s.CompleteRequestWith(ctx, rec.ID, store.Completion{SignedTx: bytes.Repeat([]byte{2}, 110), TxHash: "0xabc"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b1, j1 := s.GroupCommitStats()
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64(b1-b0)/float64(b.N), "commits/op")
	b.ReportMetric(float64(j1-j0)/float64(max(b1-b0, 1)), "writes/commit")
}

// processCPU is the user+system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
