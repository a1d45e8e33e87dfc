package app

import (
	"bytes"
	"context"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"

	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/bitcoin/regtest"
)

// btcSignBody is a Bitcoin sign request for the "btc-dev" key.
func btcSignBody(network, payload, idem string) map[string]string {
	return map[string]string{"key_id": "btc-dev", "chain": "bitcoin", "network": network, "payload": payload, "idempotency_key": idem}
}

// btcSpend is one input of a test PSBT: output vout of prev.
type btcSpend struct {
	prev *wire.MsgTx
	vout uint32
}

// btcPSBT builds a PSBT v0 spending ins to outs with, on every input, both
// the full previous transaction and the witness UTXO, as wallets do.
func btcPSBT(t *testing.T, ins []btcSpend, outs []*wire.TxOut) *psbt.Packet {
	t.Helper()
	var ops []*wire.OutPoint
	var seqs []uint32
	for _, in := range ins {
		ops = append(ops, &wire.OutPoint{Hash: in.prev.TxHash(), Index: in.vout})
		seqs = append(seqs, wire.MaxTxInSequenceNum-2) // RBF-signalling
	}
	pkt, err := psbt.New(ops, outs, 2, 0, seqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, in := range ins {
		o := in.prev.TxOut[in.vout]
		pkt.Inputs[i].NonWitnessUtxo = in.prev
		pkt.Inputs[i].WitnessUtxo = wire.NewTxOut(o.Value, o.PkScript)
	}
	return pkt
}

func b64PSBT(t *testing.T, pkt *psbt.Packet) string {
	t.Helper()
	s, err := pkt.B64Encode()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestBitcoinPSBTSignedThroughEndpointAndMined is Bitcoin's end-to-end
// proof: a P2WPKH key made in SoftHSM, a real btcd regtest node mining
// coinbases to its address, a two-input PSBT signed through the real
// endpoint over mTLS, checked by btcd's script engine, accepted by the node
// and mined; the recorded intent names the change; and the decoder's
// refusals (witness-UTXO amount lie, taproot input, wrong network) come out
// as the API's codes.
func TestBitcoinPSBTSignedThroughEndpointAndMined(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a btcd node")
	}
	began := time.Now()
	e := newEnv(t)
	if _, err := CreateKey(context.Background(), e.cfg, e.log, KeySpec{ID: "btc-dev", Chain: "bitcoin", Network: "regtest"}, nil); err != nil {
		t.Fatal(err)
	}
	e.cfg.Principals[0].Keys = append(e.cfg.Principals[0].Keys, "btc-dev")
	e.start()
	c := e.client("client")

	// The key as the API shows it: P2WPKH of the compressed key, on regtest.
	k := e.must(c, "GET", "/v1/keys/btc-dev", nil)
	if k.status != http.StatusOK {
		t.Fatalf("GET /v1/keys/btc-dev: %d %s", k.status, k.body)
	}
	km := k.json(t)
	if km["chain"] != "bitcoin" || km["network"] != "regtest" {
		t.Fatalf("key %s", k.body)
	}
	pub, err := hex.DecodeString(km["public_key"].(string))
	if err != nil || len(pub) != 65 || pub[0] != 0x04 {
		t.Fatalf("public_key %v: want 65-byte uncompressed hex (%v)", km["public_key"], err)
	}
	pk, err := btcec.ParsePubKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	wantAddr, err := btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(pk.SerializeCompressed()), &chaincfg.RegressionNetParams)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := km["address"].(string)
	pkgAddr, err := bitcoin.P2WPKHAddress(pub, bitcoin.Regtest)
	if err != nil {
		t.Fatal(err)
	}
	if addr != wantAddr.EncodeAddress() || addr != pkgAddr || !strings.HasPrefix(addr, "bcrt1q") {
		t.Fatalf("address %q, btcd derives %s", addr, wantAddr.EncodeAddress())
	}
	ourScript, err := txscript.PayToAddrScript(wantAddr)
	if err != nil {
		t.Fatal(err)
	}

	// Coins: every block up to segwit activation pays the key, so the first
	// two coinbases are long mature (100 confirmations) by then.
	node := regtest.Start(t)
	hashes := node.Generate(t, regtest.SegwitHeight, addr)
	var ins []btcSpend
	var prevOuts []*wire.TxOut
	var totalIn int64
	for _, h := range hashes[:2] {
		cb := node.Coinbase(t, h)
		vout := -1
		for i, o := range cb.TxOut {
			if bytes.Equal(o.PkScript, ourScript) {
				vout = i
			}
		}
		if vout < 0 {
			t.Fatalf("coinbase of block %s does not pay %s", h, addr)
		}
		// The node's own copy is what goes into the PSBT.
		prev := node.RawTransaction(t, cb.TxHash().String())
		ins = append(ins, btcSpend{prev, uint32(vout)})
		prevOuts = append(prevOuts, prev.TxOut[vout])
		totalIn += prev.TxOut[vout].Value
	}

	// Pay 1.5 BTC to a fresh foreign key, the rest minus the fee back to us.
	payeeKey, err := btcec.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	payee, err := btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(payeeKey.PubKey().SerializeCompressed()), &chaincfg.RegressionNetParams)
	if err != nil {
		t.Fatal(err)
	}
	payeeScript, _ := txscript.PayToAddrScript(payee)
	const amount, fee = 150_000_000, 5_000 // ~209 vB: about 24 sat/vB
	change := totalIn - amount - fee
	outs := []*wire.TxOut{wire.NewTxOut(amount, payeeScript), wire.NewTxOut(change, ourScript)}
	payload := b64PSBT(t, btcPSBT(t, ins, outs))

	a := e.must(c, "POST", "/v1/sign", btcSignBody("regtest", payload, "btc-e2e-1"))
	if a.status != http.StatusOK {
		t.Fatalf("sign: %d %s", a.status, a.body)
	}
	m := a.json(t)
	reqID, _ := m["request_id"].(string)
	txid, _ := m["txid"].(string)
	signedHex, _ := m["signed_tx"].(string)
	signedPSBT, _ := m["psbt"].(string)
	if m["state"] != "signed" || !strings.HasPrefix(reqID, "req_") || txid == "" || signedHex == "" || signedPSBT == "" {
		t.Fatalf("answer %s", a.body)
	}

	// The PSBT comes back carrying our signatures (finalised, as the
	// transaction is complete) for the same unsigned transaction.
	back, err := psbt.NewFromRawBytes(strings.NewReader(signedPSBT), true)
	if err != nil {
		t.Fatalf("answer's psbt: %v", err)
	}
	sent, _ := psbt.NewFromRawBytes(strings.NewReader(payload), true)
	if back.UnsignedTx.TxHash() != sent.UnsignedTx.TxHash() {
		t.Fatalf("answer's psbt is for transaction %s, we sent %s", back.UnsignedTx.TxHash(), sent.UnsignedTx.TxHash())
	}
	for i, in := range back.Inputs {
		if len(in.PartialSigs) == 0 && len(in.FinalScriptWitness) == 0 {
			t.Errorf("answer's psbt input %d carries no signature", i)
		}
	}

	// The raw transaction: our txid, and every input valid for btcd's
	// script engine under the standard (relay) rules.
	raw, err := hex.DecodeString(signedHex)
	if err != nil {
		t.Fatal(err)
	}
	var tx wire.MsgTx
	if err := tx.Deserialize(bytes.NewReader(raw)); err != nil {
		t.Fatalf("signed_tx: %v", err)
	}
	if tx.TxHash().String() != txid {
		t.Fatalf("signed_tx hashes to %s, answer says txid %s", tx.TxHash(), txid)
	}
	if tx.TxHash() != sent.UnsignedTx.TxHash() || len(tx.TxIn) != 2 || len(tx.TxOut) != 2 {
		t.Fatalf("signed_tx is not the transaction we asked for: %s", signedHex)
	}
	fetcher := txscript.NewMultiPrevOutFetcher(nil)
	for i, in := range tx.TxIn {
		fetcher.AddPrevOut(in.PreviousOutPoint, prevOuts[i])
	}
	sigHashes := txscript.NewTxSigHashes(&tx, fetcher)
	for i := range tx.TxIn {
		vm, err := txscript.NewEngine(prevOuts[i].PkScript, &tx, i, txscript.StandardVerifyFlags, nil, sigHashes, prevOuts[i].Value, fetcher)
		if err == nil {
			err = vm.Execute()
		}
		if err != nil {
			t.Fatalf("input %d fails btcd's script engine: %v", i, err)
		}
	}

	// The node accepts it and mines it.
	nodeTxid, err := node.SendRawTransaction(t, signedHex)
	if err != nil {
		t.Fatalf("btcd refused the transaction: %v", err)
	}
	if nodeTxid != txid {
		t.Fatalf("node says txid %s, the appliance said %s", nodeTxid, txid)
	}
	node.Generate(t, 1, "")
	if conf := node.Confirmations(t, txid); conf < 1 {
		t.Fatalf("transaction %s has %d confirmations", txid, conf)
	}
	if mined := node.RawTransaction(t, txid); mined.TxOut[0].Value != amount || !bytes.Equal(mined.TxOut[0].PkScript, payeeScript) {
		t.Fatalf("mined transaction pays %d to %x", mined.TxOut[0].Value, mined.TxOut[0].PkScript)
	}

	// The recorded intent: outputs with addresses and amounts, the change
	// marked, and the fee as inputs minus outputs.
	r := e.must(c, "GET", "/v1/requests/"+reqID, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET request: %d %s", r.status, r.body)
	}
	rm := r.json(t)
	if rm["state"] != "signed" {
		t.Fatalf("request %s", r.body)
	}
	intent, _ := rm["intent"].(map[string]any)
	if intent == nil {
		t.Fatalf("request without intent: %s", r.body)
	}
	outsAny := intent["outputs"]
	outList, _ := outsAny.([]any)
	if len(outList) != 2 {
		t.Fatalf("intent outputs %v (%s)", outsAny, r.body)
	}
	wantOuts := []struct {
		addr   string
		amount int64
		change bool
	}{{payee.EncodeAddress(), amount, false}, {addr, change, true}}
	for i, w := range wantOuts {
		o, _ := outList[i].(map[string]any)
		gotAddr, gotAmount, gotChange := o["address"], o["amount"], o["change"]
		if gotAddr != w.addr || btcInt64(gotAmount) != w.amount || gotChange != w.change {
			t.Errorf("intent output %d = %v, want address %s amount %d change %v", i, o, w.addr, w.amount, w.change)
		}
	}
	gotFee := intent["fee"]
	if btcInt64(gotFee) != fee || totalIn-amount-change != fee {
		t.Errorf("intent fee %v, want inputs − outputs = %d (%s)", gotFee, fee, r.body)
	}
	rate := intent["fee_rate_sat_vb"]
	if f, ok := rate.(float64); !ok || f < 20 || f > 30 {
		t.Errorf("intent fee rate %v, want about 24 sat/vB (%s)", rate, r.body)
	}

	// Refusals. A witness UTXO under-stating an amount (CVE-2020-14199):
	// the full previous transaction disagrees.
	lie := btcPSBT(t, ins, outs)
	lie.Inputs[1].WitnessUtxo = wire.NewTxOut(prevOuts[1].Value-1_000_000, prevOuts[1].PkScript)
	btcRefused(t, e, c, btcSignBody("regtest", b64PSBT(t, lie), "btc-e2e-lie"), "decode_failed")

	// A taproot input, even next to one of ours.
	trKey, _ := btcec.NewPrivateKey()
	trScript, err := txscript.PayToTaprootScript(trKey.PubKey())
	if err != nil {
		t.Fatal(err)
	}
	trPrev := wire.NewMsgTx(2)
	trPrev.AddTxIn(wire.NewTxIn(&wire.OutPoint{Hash: chainhash.Hash{7}, Index: 0}, nil, nil))
	trPrev.AddTxOut(wire.NewTxOut(100_000, trScript))
	tr := btcPSBT(t, []btcSpend{ins[0], {trPrev, 0}}, []*wire.TxOut{wire.NewTxOut(ins[0].prev.TxOut[ins[0].vout].Value, payeeScript)})
	btcRefused(t, e, c, btcSignBody("regtest", b64PSBT(t, tr), "btc-e2e-taproot"), "unsupported")

	// The right PSBT, named for the wrong network.
	btcRefused(t, e, c, btcSignBody("mainnet", payload, "btc-e2e-mainnet"), "wrong_network")

	t.Logf("txid %s signed through the endpoint and mined; took %s", txid, time.Since(began).Round(time.Millisecond))
}

// btcRefused posts body and expects 422 with the given error code.
func btcRefused(t *testing.T, e *env, c *http.Client, body map[string]string, code string) {
	t.Helper()
	a := e.must(c, "POST", "/v1/sign", body)
	if a.status != http.StatusUnprocessableEntity || a.code(t) != code {
		t.Errorf("%s: got %d %s, want 422 %s", body["idempotency_key"], a.status, a.body, code)
	}
}

// btcInt64 reads a JSON number (or decimal string) as an int64; -1 otherwise.
func btcInt64(v any) int64 {
	switch x := v.(type) {
	case float64:
		return int64(x)
	case string:
		var n int64
		for _, r := range x {
			if r < '0' || r > '9' {
				return -1
			}
			n = n*10 + int64(r-'0')
		}
		if x == "" {
			return -1
		}
		return n
	}
	return -1
}
