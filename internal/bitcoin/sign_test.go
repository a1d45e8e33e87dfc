package bitcoin

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcec/v2/ecdsa"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

// TestBIP143NativeP2WPKH checks the digest this package computes for the
// BIP-143 native P2WPKH example, and that the example's published
// signature, handed over as an HSM would (r||s), becomes the same DER bytes.
func TestBIP143NativeP2WPKH(t *testing.T) {
	var v struct {
		Native struct {
			UnsignedTx string `json:"unsigned_tx"`
			Inputs     []struct {
				Script string `json:"prev_scriptPubKey"`
				Amount int64  `json:"amount_sat"`
				PubKey string `json:"public_key"`
			} `json:"inputs"`
			Sighash   string `json:"sighash"`
			Signature string `json:"signature_input1_der_plus_hashtype"`
		} `json:"native_p2wpkh"`
	}
	loadVectors(t, "bip143_p2wpkh.json", &v)
	n := v.Native
	raw, _ := hex.DecodeString(n.UnsignedTx)
	tx := wire.NewMsgTx(1)
	if err := tx.DeserializeNoWitness(bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	var prevOuts []*wire.TxOut
	for _, in := range n.Inputs {
		script, _ := hex.DecodeString(in.Script)
		prevOuts = append(prevOuts, wire.NewTxOut(in.Amount, script))
	}
	d, err := p2wpkhDigest(tx, sigHashes(tx, prevOuts), prevOuts[1], 1, txscript.SigHashAll)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(d.Hash[:]); got != n.Sighash {
		t.Fatalf("sighash %s, want %s", got, n.Sighash)
	}

	sigBytes, _ := hex.DecodeString(n.Signature)
	sig, err := ecdsa.ParseDERSignature(sigBytes[:len(sigBytes)-1])
	if err != nil {
		t.Fatal(err)
	}
	r, s := sig.R(), sig.S()
	var rs [64]byte
	r.PutBytesUnchecked(rs[:32])
	s.PutBytesUnchecked(rs[32:])
	key, err := btcec.ParsePubKey(mustHex(t, n.Inputs[1].PubKey))
	if err != nil {
		t.Fatal(err)
	}
	der, err := (&Prepared{pub65: key.SerializeUncompressed()}).derSignature(rs[:], d.Hash[:])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(der, byte(d.SigHash)), sigBytes) {
		t.Fatalf("DER %x, want %x", der, sigBytes)
	}

	// The same transaction as a PSBT: the BIP publishes no previous
	// transactions, so the appliance cannot prove the amounts and refuses.
	pkt, err := psbt.NewFromUnsignedTx(tx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range pkt.Inputs {
		pkt.Inputs[i].WitnessUtxo = prevOuts[i]
	}
	h := newFakeHSM("x")
	h.priv.Key.SetByteSlice(mustHex(t, "619c335025c7f4012e556c2a58b2506e30b8511b53ade95ea316fd8c3286feb9"))
	if _, err := Prepare(encodePSBT(t, pkt), Options{Network: Mainnet, PublicKey: h.pub65()}); !errors.Is(err, ErrMissingUTXO) {
		t.Fatalf("PSBT without previous transactions: %v", err)
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// twoInputPSBT is the standard case: two P2WPKH inputs of ours (from two
// previous transactions), one payment and one change output.
func twoInputPSBT(t testing.TB, h *fakeHSM) (*psbt.Packet, []byte) {
	ours := h.script(t)
	prev1 := fundingTx(1, wire.NewTxOut(60_000, ours), wire.NewTxOut(5, p2wpkhOf(t, "other")))
	prev2 := fundingTx(2, wire.NewTxOut(7, p2wpkhOf(t, "other")), wire.NewTxOut(50_000, ours))
	pay := p2wpkhOf(t, "payee")
	pkt := buildPSBT(t, []spend{{prev1, 0}, {prev2, 1}},
		[]*wire.TxOut{wire.NewTxOut(70_000, pay), wire.NewTxOut(39_000, ours)})
	return pkt, pay
}

func TestSignTwoInputs(t *testing.T) {
	h := newFakeHSM("ours")
	pkt, pay := twoInputPSBT(t, h)
	p, err := Prepare(encodePSBT(t, pkt), Options{Network: Regtest, PublicKey: h.pub65()})
	if err != nil {
		t.Fatal(err)
	}
	in := p.Intent
	ourAddr, _ := P2WPKHAddress(h.pub65(), Regtest)
	payAddr, _, _ := AddressFromScript(pay, Regtest)
	if in.Kind != "transfer" || in.Network != "regtest" || in.TotalIn != 110_000 || in.TotalOut != 109_000 || in.Fee != 1_000 {
		t.Fatalf("intent %+v", in)
	}
	if len(in.Inputs) != 2 || !in.Inputs[0].Ours || !in.Inputs[1].Ours || in.Inputs[1].Amount != 50_000 ||
		in.Inputs[1].PrevOut != pkt.UnsignedTx.TxIn[1].PreviousOutPoint.String() {
		t.Fatalf("inputs %+v", in.Inputs)
	}
	want := []Output{
		{Index: 0, Address: payAddr, Type: TypeP2WPKH, Amount: 70_000},
		{Index: 1, Address: ourAddr, Type: TypeP2WPKH, Amount: 39_000, Change: true},
	}
	for i := range want {
		if in.Outputs[i] != want[i] {
			t.Errorf("output %d: %+v, want %+v", i, in.Outputs[i], want[i])
		}
	}
	if !strings.HasPrefix(payAddr, "bcrt1q") || len(p.Digests) != 2 || p.Digests[1].Input != 1 || p.Digests[0].SigHash != txscript.SigHashAll {
		t.Fatalf("digests %+v, pay %s", p.Digests, payAddr)
	}

	for round := 0; round < 2; round++ { // Finish is repeatable
		b64, rawHex, txid, err := p.Finish(h.signAll(p))
		if err != nil {
			t.Fatal(err)
		}
		tx := wire.NewMsgTx(2)
		if err := tx.Deserialize(bytes.NewReader(mustHex(t, rawHex))); err != nil {
			t.Fatal(err)
		}
		if tx.TxHash().String() != txid {
			t.Fatalf("txid %s, tx hashes to %s", txid, tx.TxHash())
		}
		verifyTx(t, tx, []*wire.TxOut{pkt.Inputs[0].WitnessUtxo, pkt.Inputs[1].WitnessUtxo})
		for i, w := range tx.TxIn {
			sig := w.Witness[0]
			if _, err := ecdsa.ParseDERSignature(sig[:len(sig)-1]); err != nil || sig[len(sig)-1] != 0x01 {
				t.Errorf("input %d: signature %x: %v", i, sig, err)
			}
			if s := mustParseSig(t, sig).S(); s.IsOverHalfOrder() {
				t.Errorf("input %d: high S", i)
			}
		}
		// The estimate is an upper bound, off by at most a byte per
		// signature (a 71-byte high-R DER signature counted as 72).
		weight := int64(tx.SerializeSizeStripped()*3 + tx.SerializeSize())
		actual := (weight + 3) / 4
		if !in.VSizeComplete || in.VSize < actual || in.VSize > actual+1 {
			t.Errorf("vsize estimate %d, actual %d", in.VSize, actual)
		}
		if in.FeeRateSatVB != float64(1000)/float64(in.VSize) {
			t.Errorf("fee rate %v", in.FeeRateSatVB)
		}
		back, err := psbt.NewFromRawBytes(strings.NewReader(b64), true)
		if err != nil || !back.IsComplete() {
			t.Fatalf("returned PSBT: complete=%v err=%v", back != nil && back.IsComplete(), err)
		}
	}
}

func mustParseSig(t *testing.T, sig []byte) *ecdsa.Signature {
	t.Helper()
	s, err := ecdsa.ParseDERSignature(sig[:len(sig)-1])
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSignMixed: one input of ours, one of a co-signer. We sign ours,
// return the PSBT with our partial signature and no transaction; the
// co-signer's signature then completes a transaction btcd accepts.
func TestSignMixed(t *testing.T) {
	h, other := newFakeHSM("ours"), newFakeHSM("co-signer")
	prev := fundingTx(3, wire.NewTxOut(40_000, h.script(t)), wire.NewTxOut(30_000, other.script(t)))
	pkt := buildPSBT(t, []spend{{prev, 0}, {prev, 1}}, []*wire.TxOut{wire.NewTxOut(69_000, p2wpkhOf(t, "payee"))})
	p, err := Prepare(encodePSBT(t, pkt), Options{Network: Testnet, PublicKey: h.pub65()})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Intent.Inputs[0].Ours || p.Intent.Inputs[1].Ours || len(p.Digests) != 1 || p.Intent.Fee != 1_000 {
		t.Fatalf("intent %+v digests %+v", p.Intent, p.Digests)
	}
	b64, rawHex, txid, err := p.Finish(h.signAll(p))
	if err != nil || rawHex != "" || txid != "" {
		t.Fatalf("Finish: raw %q txid %q err %v", rawHex, txid, err)
	}
	back, err := psbt.NewFromRawBytes(strings.NewReader(b64), true)
	if err != nil {
		t.Fatal(err)
	}
	ps := back.Inputs[0].PartialSigs
	if len(ps) != 1 || !bytes.Equal(ps[0].PubKey, h.priv.PubKey().SerializeCompressed()) || len(back.Inputs[1].PartialSigs) != 0 {
		t.Fatalf("partial sigs %+v / %+v", ps, back.Inputs[1].PartialSigs)
	}
	if !mustParseSig(t, ps[0].Signature).Verify(p.Digests[0].Hash[:], h.priv.PubKey()) {
		t.Fatal("partial signature does not verify")
	}

	// The co-signer runs the same flow on the returned PSBT with its key:
	// to it, input 0 (with our partial signature) is foreign.
	q, err := Prepare(b64, Options{Network: Testnet, PublicKey: other.pub65()})
	if err != nil {
		t.Fatal(err)
	}
	b64, rawHex, _, err = q.Finish(other.signAll(q))
	if err != nil || rawHex != "" {
		t.Fatalf("co-signer Finish: %q %v", rawHex, err)
	}
	// Any BIP-174 finaliser (btcd's here) can now complete it.
	done, err := psbt.NewFromRawBytes(strings.NewReader(b64), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := psbt.MaybeFinalizeAll(done); err != nil {
		t.Fatal(err)
	}
	tx, err := psbt.Extract(done)
	if err != nil {
		t.Fatal(err)
	}
	verifyTx(t, tx, []*wire.TxOut{prev.TxOut[0], prev.TxOut[1]})

	// If the co-signer had finalised its input first, our Finish would
	// complete the transaction itself.
	first, err := Prepare(encodePSBT(t, pkt), Options{Network: Testnet, PublicKey: other.pub65()})
	if err != nil {
		t.Fatal(err)
	}
	b64, _, _, err = first.Finish(other.signAll(first))
	if err != nil {
		t.Fatal(err)
	}
	fin, _ := psbt.NewFromRawBytes(strings.NewReader(b64), true)
	if err := psbt.Finalize(fin, 1); err != nil {
		t.Fatal(err)
	}
	// btcd's finaliser drops the previous transaction (Bitcoin Core's keeps
	// it); the appliance still needs it to prove the amount, so put it back.
	fin.Inputs[1].NonWitnessUtxo = prev
	p, err = Prepare(encodePSBT(t, fin), Options{Network: Testnet, PublicKey: h.pub65()})
	if err != nil {
		t.Fatal(err)
	}
	_, rawHex, txid, err = p.Finish(h.signAll(p))
	if err != nil || rawHex == "" {
		t.Fatalf("Finish after co-signer finalised: %q %v", rawHex, err)
	}
	tx = wire.NewMsgTx(2)
	if err := tx.Deserialize(bytes.NewReader(mustHex(t, rawHex))); err != nil || tx.TxHash().String() != txid {
		t.Fatalf("tx %v, txid %s", err, txid)
	}
	verifyTx(t, tx, []*wire.TxOut{prev.TxOut[0], prev.TxOut[1]})
}
