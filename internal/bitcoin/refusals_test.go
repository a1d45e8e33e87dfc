package bitcoin

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

func TestPrepareRefusals(t *testing.T) {
	h := newFakeHSM("ours")
	taproot := append([]byte{txscript.OP_1, txscript.OP_DATA_32}, make([]byte, 32)...)
	cases := []struct {
		name   string
		mutate func(p *psbt.Packet)
		opts   func(o *Options)
		want   error
		say    string // the message must mention this
	}{
		{"fee lie: witness UTXO under-states the amount", func(p *psbt.Packet) {
			p.Inputs[0].WitnessUtxo.Value = 1_000
		}, nil, ErrUTXOMismatch, "witness UTXO says 1000"},
		{"witness UTXO script differs", func(p *psbt.Packet) {
			p.Inputs[1].WitnessUtxo.PkScript = p2wpkhOf(t, "elsewhere")
		}, nil, ErrUTXOMismatch, "input 1"},
		{"previous transaction is not the one spent", func(p *psbt.Packet) {
			p.Inputs[0].NonWitnessUtxo = p.Inputs[1].NonWitnessUtxo
		}, nil, ErrUTXOMismatch, "hashes to"},
		{"vout beyond previous transaction", func(p *psbt.Packet) {
			p.UnsignedTx.TxIn[0].PreviousOutPoint.Index = 9
		}, nil, ErrUTXOMismatch, "spends output 9"},
		{"missing previous transaction", func(p *psbt.Packet) {
			p.Inputs[1].NonWitnessUtxo = nil
		}, nil, ErrMissingUTXO, "full previous transaction"},
		{"missing witness UTXO", func(p *psbt.Packet) {
			p.Inputs[0].WitnessUtxo = nil
		}, nil, ErrMissingUTXO, "witness UTXO"},
		{"missing both", func(p *psbt.Packet) {
			p.Inputs[0].WitnessUtxo, p.Inputs[0].NonWitnessUtxo = nil, nil
		}, nil, ErrMissingUTXO, "neither"},
		{"taproot input", func(p *psbt.Packet) {
			p.Inputs[1].NonWitnessUtxo = nil
			p.Inputs[1].WitnessUtxo = wire.NewTxOut(50_000, taproot)
		}, nil, ErrUnsupported, "BIP-340 Schnorr"},
		{"SIGHASH_NONE", func(p *psbt.Packet) {
			p.Inputs[1].SighashType = txscript.SigHashNone
		}, nil, ErrSighash, "0x02"},
		{"SIGHASH_ALL|ANYONECANPAY not allowed by default", func(p *psbt.Packet) {
			p.Inputs[0].SighashType = txscript.SigHashAll | txscript.SigHashAnyOneCanPay
		}, nil, ErrSighash, "0x81"},
		{"non-standard sighash even if listed", func(p *psbt.Packet) {
			p.Inputs[0].SighashType = 0x04
		}, func(o *Options) { o.AllowedSighash = []txscript.SigHashType{0x04} }, ErrSighash, "0x04"},
		{"no input of ours", nil, func(o *Options) { o.PublicKey = newFakeHSM("stranger").pub65() }, ErrNotOurs, "none of the 2"},
		{"outputs exceed inputs", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].Value = 80_000
		}, nil, ErrDecode, "exceed"},
		{"negative output", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].Value = -1
		}, nil, ErrDecode, "out of range"},
		{"value burned in OP_RETURN", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].PkScript = []byte{txscript.OP_RETURN, 0x01, 0x42}
		}, nil, ErrUnsupported, "burned"},
		{"bare P2PK output", func(p *psbt.Packet) {
			p.UnsignedTx.TxOut[0].PkScript = append(append([]byte{33}, h.priv.PubKey().SerializeCompressed()...), txscript.OP_CHECKSIG)
		}, nil, ErrUnsupported, "output 0"},
		{"PSBT v2 marker", func(p *psbt.Packet) {
			p.Unknowns = append(p.Unknowns, &psbt.Unknown{Key: []byte{0xFB}, Value: []byte{2, 0, 0, 0}})
		}, nil, ErrUnsupported, "only v0"},
		{"our input carries a redeem script", func(p *psbt.Packet) {
			p.Inputs[0].RedeemScript = h.script(t)
		}, nil, ErrUnsupported, "redeem"},
		{"spends one outpoint twice", func(p *psbt.Packet) {
			p.UnsignedTx.TxIn[1].PreviousOutPoint = p.UnsignedTx.TxIn[0].PreviousOutPoint
			p.Inputs[1] = p.Inputs[0]
		}, nil, ErrDecode, "twice"},
		{"compressed public key", nil, func(o *Options) { o.PublicKey = h.priv.PubKey().SerializeCompressed() }, ErrPublicKeyInvalid, "65-byte"},
		{"unknown network", nil, func(o *Options) { o.Network = "litecoin" }, ErrUnknownNetwork, "litecoin"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pkt, _ := twoInputPSBT(t, h)
			if c.mutate != nil {
				c.mutate(pkt)
			}
			opts := Options{Network: Mainnet, PublicKey: h.pub65()}
			if c.opts != nil {
				c.opts(&opts)
			}
			_, err := Prepare(encodePSBT(t, pkt), opts)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.say) {
				t.Fatalf("got %v, want %v mentioning %q", err, c.want, c.say)
			}
		})
	}
}

func TestPrepareDecodeErrors(t *testing.T) {
	h := newFakeHSM("ours")
	pkt, _ := twoInputPSBT(t, h)
	good := encodePSBT(t, pkt)
	for _, s := range []string{"", "!!!not base64!!!", "aGVsbG8gd29ybGQ=", good[:len(good)/2], "cHNidP8A"} {
		if _, err := Prepare(s, Options{Network: Mainnet, PublicKey: h.pub65()}); !errors.Is(err, ErrDecode) {
			t.Errorf("%.20q: %v", s, err)
		}
	}
}

func TestSighashNoneWhenAllowed(t *testing.T) {
	h := newFakeHSM("ours")
	pkt, _ := twoInputPSBT(t, h)
	pkt.Inputs[1].SighashType = txscript.SigHashNone
	opts := Options{Network: Mainnet, PublicKey: h.pub65(),
		AllowedSighash: []txscript.SigHashType{txscript.SigHashAll, txscript.SigHashNone}}
	p, err := Prepare(encodePSBT(t, pkt), opts)
	if err != nil {
		t.Fatal(err)
	}
	if p.Digests[0].SigHash != txscript.SigHashAll || p.Digests[1].SigHash != txscript.SigHashNone {
		t.Fatalf("digests %+v", p.Digests)
	}
	_, rawHex, _, err := p.Finish(h.signAll(p))
	if err != nil {
		t.Fatal(err)
	}
	tx := deserialize(t, rawHex)
	if w := tx.TxIn[1].Witness[0]; w[len(w)-1] != byte(txscript.SigHashNone) {
		t.Fatalf("sighash byte %x", w[len(w)-1])
	}
	verifyTx(t, tx, []*wire.TxOut{pkt.Inputs[0].WitnessUtxo, pkt.Inputs[1].WitnessUtxo})
}

// TestOutputsRenderedForRequestNetwork: a PSBT carries scripts, not
// addresses; the intent names them in the request's network, so a policy
// allowlist of mainnet addresses never matches a testnet request.
func TestOutputsRenderedForRequestNetwork(t *testing.T) {
	h := newFakeHSM("ours")
	pkt, _ := twoInputPSBT(t, h)
	b64 := encodePSBT(t, pkt)
	prefixes := map[Network]string{Mainnet: "bc1q", Testnet: "tb1q", Signet: "tb1q", Regtest: "bcrt1q"}
	for n, prefix := range prefixes {
		p, err := Prepare(b64, Options{Network: n, PublicKey: h.pub65()})
		if err != nil {
			t.Fatal(err)
		}
		addr := p.Intent.Outputs[0].Address
		if !strings.HasPrefix(addr, prefix) {
			t.Errorf("%s: %s", n, addr)
		}
		if _, err := ParseAddress(addr, n); err != nil {
			t.Errorf("%s: rendered %s does not parse back: %v", n, addr, err)
		}
		other := Mainnet
		if n == Mainnet {
			other = Regtest
		}
		if _, err := ParseAddress(addr, other); !errors.Is(err, ErrWrongNetwork) {
			t.Errorf("%s address %s on %s: %v", n, addr, other, err)
		}
	}
}

func TestChangeAndNullData(t *testing.T) {
	h := newFakeHSM("ours")
	pkt, _ := twoInputPSBT(t, h)
	vault := p2wpkhOf(t, "appliance key 2")
	pkt.UnsignedTx.TxOut[0].Value -= 10_000
	pkt.UnsignedTx.AddTxOut(wire.NewTxOut(10_000, vault))
	pkt.UnsignedTx.AddTxOut(wire.NewTxOut(0, []byte{txscript.OP_RETURN, 0x02, 0xca, 0xfe}))
	pkt.Outputs = append(pkt.Outputs, psbt.POutput{}, psbt.POutput{})
	isOwn := func(s []byte) bool { return string(s) == string(vault) }
	p, err := Prepare(encodePSBT(t, pkt), Options{Network: Mainnet, PublicKey: h.pub65(), IsOwnScript: isOwn})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Intent.Outputs; len(got) != 4 || got[3].Type != TypeNullData || got[3].Address != "" ||
		got[0].Change || !got[1].Change || !got[2].Change || got[3].Change || p.Intent.Fee != 1_000 {
		t.Fatalf("outputs %+v", got)
	}
	if _, _, _, err := p.Finish(h.signAll(p)); err != nil {
		t.Fatal(err)
	}
}

func TestFinishRefusals(t *testing.T) {
	h := newFakeHSM("ours")
	pkt, _ := twoInputPSBT(t, h)
	p, err := Prepare(encodePSBT(t, pkt), Options{Network: Mainnet, PublicKey: h.pub65()})
	if err != nil {
		t.Fatal(err)
	}
	good := h.signAll(p)
	stranger := newFakeHSM("stranger").signAll(p)
	swapped := [][]byte{good[1], good[0]}
	cases := map[string][][]byte{
		"too few":       good[:1],
		"too many":      append(good, good[0]),
		"short":         {good[0][:63], good[1]},
		"zero r":        {make([]byte, 64), good[1]},
		"overflowing s": {append(append([]byte{}, good[0][:32]...), bytesOf(0xff, 32)...), good[1]},
		"other key":     stranger,
		"wrong order":   swapped,
	}
	for name, sigs := range cases {
		if _, _, _, err := p.Finish(sigs); !errors.Is(err, ErrSignature) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A failed Finish leaves p usable.
	if _, raw, _, err := p.Finish(good); err != nil || raw == "" {
		t.Fatalf("after refusals: %q %v", raw, err)
	}
}

func bytesOf(b byte, n int) []byte { return []byte(strings.Repeat(string([]byte{b}), n)) }

func deserialize(t *testing.T, rawHex string) *wire.MsgTx {
	t.Helper()
	tx := wire.NewMsgTx(2)
	if err := tx.Deserialize(strings.NewReader(string(mustHex(t, rawHex)))); err != nil {
		t.Fatal(err)
	}
	return tx
}

// TestFinishScriptEngineStillJudgesTheSighash: Finish verifies each
// signature over our digest; btcd's script engine then computes the sighash
// itself and verifies again. If our digest were wrong (a bug in the sighash
// computation), a signature valid over it must still be refused.
func TestFinishScriptEngineStillJudgesTheSighash(t *testing.T) {
	h := newFakeHSM("ours")
	pkt, _ := twoInputPSBT(t, h)
	p, err := Prepare(encodePSBT(t, pkt), Options{Network: Mainnet, PublicKey: h.pub65()})
	if err != nil {
		t.Fatal(err)
	}
	wrong := *p
	wrong.Digests = slices.Clone(p.Digests)
	wrong.Digests[1].Hash[0] ^= 1 // what a broken BIP-143 computation would give
	_, raw, _, err := wrong.Finish(h.signAll(&wrong))
	if !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "script verification") {
		t.Fatalf("a signature over a wrong sighash: raw %q, %v; want the script engine's refusal", raw, err)
	}
	if _, raw, _, err := p.Finish(h.signAll(p)); err != nil || raw == "" {
		t.Fatalf("the right digests: %q %v", raw, err)
	}
}
