package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/audit"
)

// benchAuditRecord is the entry every sign request appends: the
// sign_request record of a realistic Ethereum request, its idempotency key
// HMAC'd.
func benchAuditRecord(i int) audit.Record {
	return requestRecord(Request{
		ID: fmt.Sprintf("req_%026d", i), Principal: "spiffe://acme/svc/withdrawals", IdempotencyKey: fmt.Sprintf("withdrawal-%d", i),
		KeyID: "eth-hot", Chain: "ethereum", Network: "1", State: StateSigning,
		Payload: make([]byte, 120), Digest: make([]byte, 32),
		Intent: []byte(`{"kind":"transfer","chain_id":"1","nonce":4711,"to":"0x00000000219ab540356cBB839Cbe05303d7705Fa",` +
			`"value":"1234567000000000000","gas":21000,"max_fee_per_gas":"42000000000","max_priority_fee_per_gas":"1500000000","data_len":0,"type":2}`),
	})
}

// errRollback ends a benchmark's write transaction without committing it.
var errRollback = errors.New("rolled back by the benchmark")

// BenchmarkAuditAppend measures Store.Audit, the append every recorded
// operation makes inside its own write transaction: read the chain head,
// HMAC the sensitive field, canonicalise the fields, SHA-256 the entry and
// insert it. Appends run 100 to a transaction and ns/op is per append:
// rolled_back leaves the commit out entirely; commit_every_100 includes a
// hundredth of one committed (fsynced) transaction.
func BenchmarkAuditAppend(b *testing.B) {
	const perTx = 100
	for _, commit := range []bool{false, true} {
		name := "rolled_back"
		if commit {
			name = "commit_every_100"
		}
		b.Run(name, func(b *testing.B) {
			// A quiet logger: the test logger would print the migrations
			// into the benchmark output.
			s, err := Open(context.Background(), filepath.Join(b.TempDir(), "appliance.db"), zap.NewNop())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = s.Close() })
			red, err := audit.NewRedactor(make([]byte, 32))
			if err != nil {
				b.Fatal(err)
			}
			s.SetAuditKey(red)
			ctx := context.Background()
			recs := make([]audit.Record, perTx)
			for i := range recs {
				recs[i] = benchAuditRecord(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; done += perTx {
				n := min(perTx, b.N-done)
				err := s.WriteTx(ctx, func(tx *Tx) error {
					for i := range n {
						if err := s.Audit(ctx, tx, recs[i]); err != nil {
							return err
						}
					}
					if !commit {
						return errRollback
					}
					return nil
				})
				if err != nil && (commit || !errors.Is(err, errRollback)) {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAuditBuild is the CPU part of an append alone: Record.Build with
// the HMAC key (the sensitive field becomes hmac-sha256:<id>:<hex>) and
// sealed (no key: "redacted"), and the HMAC by itself.
func BenchmarkAuditBuild(b *testing.B) {
	red, err := audit.NewRedactor(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	rec := benchAuditRecord(1)
	prev := make([]byte, audit.HashSize)
	for _, c := range []struct {
		name string
		red  *audit.Redactor
	}{{"hmac", red}, {"sealed", nil}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := rec.Build(41, prev, 1_700_000_000_000_000_000, c.red); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("redactor_value", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = red.Value("withdrawal-123456")
		}
	})
}
