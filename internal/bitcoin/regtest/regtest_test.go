package regtest

import (
	"testing"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/txscript"
)

// TestGenerateToAddresses checks that blocks assembled here pay the named
// address, extend one chain, and that btcd's own generate still works.
func TestGenerateToAddresses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a btcd node")
	}
	n := Start(t)
	a, b := "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202"
	ha := n.Generate(t, 5, a)
	hb := n.Generate(t, 3, b)
	n.Generate(t, 2, "")
	if got := n.BlockCount(t); got != 10 {
		t.Fatalf("block count %d, want 10", got)
	}
	for _, c := range []struct {
		hash, addr string
	}{{ha[0], a}, {ha[4], a}, {hb[0], b}, {hb[2], b}} {
		cb := n.Coinbase(t, c.hash)
		want, err := btcutil.DecodeAddress(c.addr, &chaincfg.RegressionNetParams)
		if err != nil {
			t.Fatal(err)
		}
		script, _ := txscript.PayToAddrScript(want)
		if string(cb.TxOut[0].PkScript) != string(script) {
			t.Errorf("block %s coinbase pays %x, want %s", c.hash, cb.TxOut[0].PkScript, c.addr)
		}
		if got := n.RawTransaction(t, cb.TxHash().String()); got.TxHash() != cb.TxHash() {
			t.Errorf("getrawtransaction returned %s", got.TxHash())
		}
		if conf := n.Confirmations(t, cb.TxHash().String()); conf < 1 {
			t.Errorf("coinbase %s: %d confirmations", cb.TxHash(), conf)
		}
	}
}
