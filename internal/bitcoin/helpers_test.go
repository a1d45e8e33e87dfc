package bitcoin

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcec/v2/ecdsa"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

// vectorsDir is where the shared test vectors sit relative to this package:
// the repository is /work/main and shared/ sits beside it.
var vectorsDir = filepath.Join("..", "..", "..", "shared", "vectors")

// loadVectors decodes a vector file into v; a missing file fails the test,
// never skips it, so a broken checkout cannot pass silently.
func loadVectors(t testing.TB, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vectorsDir, name))
	if err != nil {
		t.Fatalf("test vectors missing (expected shared/ beside the repository): %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// fakeHSM stands in for the PKCS#11 token: it holds a secp256k1 key and
// returns raw r||s like CKM_ECDSA does, sometimes with high S, because an
// HSM does not normalise.
type fakeHSM struct {
	priv  *btcec.PrivateKey
	calls int
}

func newFakeHSM(seed string) *fakeHSM {
	sum := sha256.Sum256([]byte(seed))
	priv, _ := btcec.PrivKeyFromBytes(sum[:])
	return &fakeHSM{priv: priv}
}

func (h *fakeHSM) pub65() []byte { return h.priv.PubKey().SerializeUncompressed() }

func (h *fakeHSM) script(t testing.TB) []byte {
	t.Helper()
	s, err := P2WPKHScript(h.pub65())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sign returns r||s; every other call flips s to n-s to exercise the
// low-S normalisation in Finish.
func (h *fakeHSM) sign(digest [32]byte) []byte {
	sig := ecdsa.Sign(h.priv, digest[:])
	r, s := sig.R(), sig.S()
	h.calls++
	if h.calls%2 == 0 {
		s.Negate()
	}
	var out [64]byte
	r.PutBytesUnchecked(out[:32])
	s.PutBytesUnchecked(out[32:])
	return out[:]
}

func (h *fakeHSM) signAll(p *Prepared) [][]byte {
	var sigs [][]byte
	for _, d := range p.Digests {
		sigs = append(sigs, h.sign(d.Hash))
	}
	return sigs
}

// fundingTx makes a previous transaction paying each script its amount.
// The nonce makes txids distinct.
func fundingTx(nonce uint32, outs ...*wire.TxOut) *wire.MsgTx {
	tx := wire.NewMsgTx(2)
	tx.AddTxIn(wire.NewTxIn(&wire.OutPoint{Hash: chainhash.Hash{1, 2, 3}, Index: nonce}, nil, nil))
	for _, o := range outs {
		tx.AddTxOut(o)
	}
	return tx
}

// spend describes one input of a test PSBT.
type spend struct {
	prev *wire.MsgTx
	vout uint32
}

// buildPSBT builds a PSBT v0 spending ins to outs, with both the witness
// UTXO and the full previous transaction on every input.
func buildPSBT(t testing.TB, ins []spend, outs []*wire.TxOut) *psbt.Packet {
	t.Helper()
	var ops []*wire.OutPoint
	var seqs []uint32
	for _, in := range ins {
		ops = append(ops, &wire.OutPoint{Hash: in.prev.TxHash(), Index: in.vout})
		seqs = append(seqs, wire.MaxTxInSequenceNum-2) // RBF-signalling, as wallets do
	}
	pkt, err := psbt.New(ops, outs, 2, 0, seqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range ins {
		pkt.Inputs[i].NonWitnessUtxo = in.prev
		o := in.prev.TxOut[in.vout]
		pkt.Inputs[i].WitnessUtxo = wire.NewTxOut(o.Value, o.PkScript)
	}
	return pkt
}

func encodePSBT(t testing.TB, pkt *psbt.Packet) string {
	t.Helper()
	var buf bytes.Buffer
	if err := pkt.Serialize(&buf); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

// verifyTx runs every input of tx through btcd's script engine.
func verifyTx(t *testing.T, tx *wire.MsgTx, prevOuts []*wire.TxOut) {
	t.Helper()
	fetcher := txscript.NewMultiPrevOutFetcher(nil)
	for i, in := range tx.TxIn {
		fetcher.AddPrevOut(in.PreviousOutPoint, prevOuts[i])
	}
	hashes := txscript.NewTxSigHashes(tx, fetcher)
	for i := range tx.TxIn {
		vm, err := txscript.NewEngine(prevOuts[i].PkScript, tx, i, txscript.StandardVerifyFlags, nil, hashes, prevOuts[i].Value, fetcher)
		if err != nil {
			t.Fatalf("input %d: %v", i, err)
		}
		if err := vm.Execute(); err != nil {
			t.Fatalf("input %d fails btcd's script engine: %v", i, err)
		}
	}
}

// p2wpkhOf returns a P2WPKH script for an arbitrary foreign key.
func p2wpkhOf(t testing.TB, seed string) []byte {
	t.Helper()
	return newFakeHSM(seed).script(t)
}
