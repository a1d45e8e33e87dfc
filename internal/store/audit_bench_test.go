package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/custodysigner/appliance/internal/audit"
)

// BenchmarkAuditVerify1M verifies a chain of 1,000,000 entries (checkpoint
// every 1,000) read from a real SQLite file, as `appliance audit verify`
// does. The goal is under 10 s per verification. Building the file is not
// timed.
func BenchmarkAuditVerify1M(b *testing.B) {
	const n, every = 1_000_000, 1000
	s, path := openTest(b)
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	red, _ := audit.NewRedactor(make([]byte, 32))
	err := s.WriteTx(ctx, func(tx *Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO events (seq, at, kind, principal, detail, fields, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		var prev []byte
		for i := 0; i < n; i++ {
			e, err := audit.Record{Kind: "sign_request", Principal: "withdrawals", Detail: "",
				Fields: map[string]string{"request_id": fmt.Sprintf("req_%016x", i), "key_id": "eth-hot", "chain": "ethereum",
					"network": "1", "state": "signed", "payload_sha256": fmt.Sprintf("%064x", i)},
				Sensitive: map[string]string{"idempotency_key": fmt.Sprint(i)}}.Build(int64(i), prev, int64(i), red)
			if err != nil {
				return err
			}
			if _, err := stmt.ExecContext(ctx, e.Seq, e.At, e.Kind, e.Principal, e.Detail, e.Fields, e.PrevHash, e.Hash); err != nil {
				return err
			}
			if e.Seq%every == 0 {
				c := signCheckpoint(b, key, e.Seq, e.Hash)
				if _, err := tx.ExecContext(ctx, `INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?)`,
					c.Seq, c.Hash, c.At, c.KeyID, c.Signature); err != nil {
					return err
				}
			}
			prev = e.Hash
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	s.Close()
	f, err := OpenAuditFile(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.ResetTimer()
	for b.Loop() {
		r, err := f.Verify(ctx, []*ecdsa.PublicKey{&key.PublicKey}, nil)
		if err != nil || r.Entries != n || r.Checkpoints != n/every {
			b.Fatalf("%+v %v", r, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/entry")
}
