package bitcoin

import (
	"fmt"
	"testing"

	"github.com/btcsuite/btcd/wire"
)

// benchPSBT is a wallet-shaped PSBT spending n P2WPKH outputs of h, each
// from its own previous transaction (one funding input, two outputs: the
// common shape), to one payment and one change output.
func benchPSBT(b *testing.B, h *fakeHSM, n int) string {
	b.Helper()
	var ins []spend
	total := int64(0)
	for i := range n {
		prev := fundingTx(uint32(i), wire.NewTxOut(100_000+int64(i), p2wpkhOf(b, "someone")), wire.NewTxOut(250_000, h.script(b)))
		ins = append(ins, spend{prev: prev, vout: 1})
		total += 250_000
	}
	pay := total / 2
	change := total - pay - int64(110+68*n) // about 1 sat/vB
	return encodePSBT(b, buildPSBT(b, ins, []*wire.TxOut{
		wire.NewTxOut(pay, p2wpkhOf(b, "payee")),
		wire.NewTxOut(change, h.script(b)),
	}))
}

// BenchmarkBitcoinPrepare measures what the signing path does with a PSBT
// before it records the request: base64 and PSBT decoding, the fee-lie
// checks of every input against its full previous transaction, the intent
// (addresses, amounts, change, fee, virtual size) and one BIP-143 digest per
// input of ours.
func BenchmarkBitcoinPrepare(b *testing.B) {
	h := newFakeHSM("bench")
	opts := Options{Network: Mainnet, PublicKey: h.pub65()}
	for _, n := range []int{1, 10} {
		payload := benchPSBT(b, h, n)
		b.Run(fmt.Sprintf("p2wpkh_%d_inputs", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				p, err := Prepare(payload, opts)
				if err != nil {
					b.Fatal(err)
				}
				if len(p.Digests) != n || p.Intent.Fee <= 0 {
					b.Fatalf("%d digests, fee %d", len(p.Digests), p.Intent.Fee)
				}
			}
		})
	}
}

// BenchmarkBitcoinFinish measures the other half, after the HSM answered:
// verifying each signature against the key, DER-encoding it low-S,
// finalising the inputs, extracting the transaction and running btcd's
// script engine over each of our inputs.
func BenchmarkBitcoinFinish(b *testing.B) {
	h := newFakeHSM("bench")
	opts := Options{Network: Mainnet, PublicKey: h.pub65()}
	for _, n := range []int{1, 10} {
		p, err := Prepare(benchPSBT(b, h, n), opts)
		if err != nil {
			b.Fatal(err)
		}
		sigs := h.signAll(p)
		b.Run(fmt.Sprintf("p2wpkh_%d_inputs", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, raw, txid, err := p.Finish(sigs)
				if err != nil || raw == "" || txid == "" {
					b.Fatalf("finish: %v (complete: %t)", err, raw != "")
				}
			}
		})
	}
}
