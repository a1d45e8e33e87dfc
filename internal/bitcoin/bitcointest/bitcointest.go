// Package bitcointest builds Bitcoin payloads for tests of the packages that
// take them (signing, the API). Only tests import it.
package bitcointest

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/wire"

	"github.com/custodysigner/appliance/internal/bitcoin"
)

// bip173Program is the output script of BIP-173's first mainnet address,
// bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4.
const bip173Program = "0014751e76e8199196d454941c45d1b3a323f1433bd6"

// SpendPSBT is a one-input P2WPKH PSBT (base64) spending a made-up coin of
// 100,000 sat of the key pub (output 0 of a previous transaction whose own
// input spends the fictitious outpoint sha256(coin):0): it pays 50,000 sat
// to BIP-173's first mainnet address and 49,000 back to the key. It carries
// the previous transaction and the witness UTXO, as POST /v1/sign requires.
func SpendPSBT(tb testing.TB, pub, coin []byte) string {
	tb.Helper()
	own, err := bitcoin.P2WPKHScript(pub)
	if err != nil {
		tb.Fatal(err)
	}
	dest, err := hex.DecodeString(bip173Program)
	if err != nil {
		tb.Fatal(err)
	}
	prev := wire.NewMsgTx(2)
	fict := chainhash.Hash(sha256.Sum256(coin))
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&fict, 0), nil, nil))
	prev.AddTxOut(wire.NewTxOut(100_000, own))
	h := prev.TxHash()
	pkt, err := psbt.New([]*wire.OutPoint{wire.NewOutPoint(&h, 0)},
		[]*wire.TxOut{wire.NewTxOut(50_000, dest), wire.NewTxOut(49_000, own)}, 2, 0, []uint32{wire.MaxTxInSequenceNum - 2})
	if err != nil {
		tb.Fatal(err)
	}
	pkt.Inputs[0].NonWitnessUtxo = prev
	pkt.Inputs[0].WitnessUtxo = wire.NewTxOut(100_000, own)
	s, err := pkt.B64Encode()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
