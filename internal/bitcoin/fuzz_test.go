package bitcoin

import (
	"encoding/base64"
	"errors"
	"testing"

	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

var sentinels = []error{ErrDecode, ErrUnsupported, ErrMissingUTXO, ErrUTXOMismatch, ErrNotOurs,
	ErrSighash, ErrAddressInvalid, ErrWrongNetwork, ErrUnknownNetwork, ErrPublicKeyInvalid, ErrSignature}

func wrapsSentinel(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// FuzzPrepare feeds arbitrary bytes, both as the base64 text and as raw PSBT
// bytes encoded for it: Prepare must not panic, every refusal must wrap a
// sentinel, and whatever it accepts must have a digest per input of ours and
// a Finish that works with real signatures.
func FuzzPrepare(f *testing.F) {
	h := newFakeHSM("ours")
	pkt, _ := twoInputPSBT(f, h)
	seed := encodePSBT(f, pkt)
	raw, _ := base64.StdEncoding.DecodeString(seed)
	f.Add(raw)
	pkt.Inputs[1].SighashType = txscript.SigHashNone
	pkt.UnsignedTx.AddTxOut(wire.NewTxOut(0, []byte{txscript.OP_RETURN}))
	raw2, _ := base64.StdEncoding.DecodeString(encodePSBT(f, pkt))
	f.Add(raw2)
	f.Add([]byte(seed))
	f.Add([]byte("psbt\xff"))
	opts := Options{Network: Testnet, PublicKey: h.pub65(),
		AllowedSighash: []txscript.SigHashType{txscript.SigHashAll, txscript.SigHashNone}}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, in := range []string{string(data), base64.StdEncoding.EncodeToString(data)} {
			p, err := Prepare(in, opts)
			if err != nil {
				if !wrapsSentinel(err) {
					t.Fatalf("error wraps no sentinel: %v", err)
				}
				continue
			}
			ours := 0
			for _, i := range p.Intent.Inputs {
				if i.Ours {
					ours++
				}
			}
			if ours == 0 || ours != len(p.Digests) || p.Intent.Fee < 0 || p.Intent.VSize <= 0 {
				t.Fatalf("inconsistent intent %+v digests %d", p.Intent, len(p.Digests))
			}
			if _, _, _, err := p.Finish(h.signAll(p)); err != nil && !errors.Is(err, ErrSignature) {
				t.Fatalf("Finish: %v", err)
			}
		}
	})
}

// FuzzParseAddress: no panic; a refusal wraps ErrAddressInvalid; an accepted
// address re-parses to the same normalised form and script, and its script
// renders back to that form.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "BC1SW50QGDZ25J",
		"tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c", "1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mo",
		"2N1r7aC69VHeE7yQJPDLi9T1PYq4wnwvjuT", "bcrt1qdavt4j2sd7dlhqsavtnfxvzppw6k7qy97tmnu9", "bc1gmk9yu", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, n := range allNetworks {
			info, err := ParseAddress(s, n)
			if err != nil {
				if !errors.Is(err, ErrAddressInvalid) {
					t.Fatalf("%q on %s: %v", s, n, err)
				}
				continue
			}
			again, err := ParseAddress(info.Normalized, n)
			if err != nil || again.Normalized != info.Normalized || string(again.Script) != string(info.Script) || again.Type != info.Type {
				t.Fatalf("%q on %s: %+v re-parses to %+v, %v", s, n, info, again, err)
			}
			addr, typ, err := AddressFromScript(info.Script, n)
			if err != nil || addr != info.Normalized || typ != info.Type {
				t.Fatalf("%q on %s: script renders as %q %q %v", s, n, addr, typ, err)
			}
		}
	})
}
