package bitcoin

import (
	"bytes"
	"testing"
	"time"

	"github.com/btcsuite/btcd/wire"

	"github.com/custodysigner/appliance/internal/bitcoin/regtest"
)

// TestRegtestBroadcast is the end-to-end judge: a real btcd node on regtest
// (loopback only) mines coins to our P2WPKH address, accepts the
// transaction Prepare/Finish produce into its mempool and confirms it.
// btcd is built from the module proxy at the pinned version.
func TestRegtestBroadcast(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a btcd node")
	}
	start := time.Now()
	h := newFakeHSM("regtest key")
	addr, err := P2WPKHAddress(h.pub65(), Regtest)
	if err != nil {
		t.Fatal(err)
	}
	node := regtest.Start(t)

	// Mine up to segwit activation; the first coinbase is long mature by then.
	hashes := node.Generate(t, regtest.SegwitHeight, addr)
	coinbase := node.Coinbase(t, hashes[0])
	vout := -1
	for i, o := range coinbase.TxOut {
		if bytes.Equal(o.PkScript, h.script(t)) {
			vout = i
		}
	}
	if vout < 0 {
		t.Fatalf("coinbase does not pay %s", addr)
	}
	value := coinbase.TxOut[vout].Value
	payee := p2wpkhOf(t, "regtest payee")
	pkt := buildPSBT(t, []spend{{coinbase, uint32(vout)}},
		[]*wire.TxOut{wire.NewTxOut(value/2, payee), wire.NewTxOut(value/2-10_000, h.script(t))})
	p, err := Prepare(encodePSBT(t, pkt), Options{Network: Regtest, PublicKey: h.pub65()})
	if err != nil {
		t.Fatal(err)
	}
	if p.Intent.Fee != 10_000 || !p.Intent.Outputs[1].Change || p.Intent.Outputs[1].Address != addr {
		t.Fatalf("intent %+v", p.Intent)
	}
	_, rawHex, txid, err := p.Finish(h.signAll(p))
	if err != nil {
		t.Fatal(err)
	}
	sent, err := node.SendRawTransaction(t, rawHex)
	if err != nil {
		t.Fatalf("btcd refused the transaction: %v", err)
	}
	if sent != txid {
		t.Fatalf("node says txid %s, we said %s", sent, txid)
	}
	node.Generate(t, 1, "")
	info := node.TxInfo(t, txid)
	if info.Confirmations < 1 {
		t.Fatalf("transaction %s has %d confirmations", txid, info.Confirmations)
	}
	if info.Vsize > p.Intent.VSize || info.Vsize < p.Intent.VSize-1 {
		t.Errorf("node vsize %d, estimate %d", info.Vsize, p.Intent.VSize)
	}
	t.Logf("txid %s confirmed; regtest round trip took %s", txid, time.Since(start).Round(time.Millisecond))
}
