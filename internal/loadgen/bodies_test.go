package loadgen

import (
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/ethereum"
)

// decodeBody decodes a request body strictly, as the API does.
func decodeBody(t *testing.T, raw []byte) signBody {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	var b signBody
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("body %s: %v", raw, err)
	}
	return b
}

// TestEthBodiesDecodeAsTheApplianceDecodes runs the bodies through the
// appliance's own decoder: unsigned EIP-1559 for the key's chain, nonces
// increasing across calls, idempotency keys never repeated.
func TestEthBodiesDecodeAsTheApplianceDecodes(t *testing.T) {
	src, err := newEthSource("eth-dev", 1337, "t1")
	if err != nil {
		t.Fatal(err)
	}
	first, err := src.build(3)
	if err != nil {
		t.Fatal(err)
	}
	second, err := src.build(2)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, raw := range append(first, second...) {
		b := decodeBody(t, raw)
		if b.KeyID != "eth-dev" || b.Chain != "ethereum" || b.Network != "1337" {
			t.Errorf("body %d: %+v", i, b)
		}
		if seen[b.IdempotencyKey] {
			t.Errorf("body %d: idempotency key %q repeated", i, b.IdempotencyKey)
		}
		seen[b.IdempotencyKey] = true
		payload, err := hex.DecodeString(strings.TrimPrefix(b.Payload, "0x"))
		if err != nil {
			t.Fatal(err)
		}
		tx, err := ethereum.DecodeUnsigned(payload)
		if err != nil {
			t.Fatalf("body %d: %v", i, err)
		}
		if tx.Type != ethereum.TypeDynamicFee || tx.ChainID.Int64() != 1337 || tx.Nonce != uint64(i) ||
			tx.To == nil || tx.To.Hex() != EthDestination || tx.Value.Cmp(ethValue) != 0 || tx.Gas != ethGas || len(tx.Data) != 0 {
			t.Errorf("body %d: transaction %+v", i, tx)
		}
	}
}

// TestBTCBodiesPrepareAsTheApplianceDoes runs the PSBTs through the
// appliance's own decoder: one input of the key, a payment to the fixed
// destination, the change recognised, the fee as built, one digest to sign;
// and every PSBT a different transaction.
func TestBTCBodiesPrepareAsTheApplianceDoes(t *testing.T) {
	priv, err := secp256k1.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.PubKey().SerializeUncompressed()
	src, err := newBTCSource("btc-dev", "regtest", pub, "t1")
	if err != nil {
		t.Fatal(err)
	}
	bodies, err := src.build(4)
	if err != nil {
		t.Fatal(err)
	}
	dest, _, err := bitcoin.AddressFromScript(append([]byte{0x00, 0x14}, BTCDestinationProgram[:]...), bitcoin.Regtest)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[32]byte]bool{}
	keys := map[string]bool{}
	for i, raw := range bodies {
		b := decodeBody(t, raw)
		if b.KeyID != "btc-dev" || b.Chain != "bitcoin" || b.Network != "regtest" || keys[b.IdempotencyKey] {
			t.Errorf("body %d: %+v", i, b)
		}
		keys[b.IdempotencyKey] = true
		p, err := bitcoin.Prepare(b.Payload, bitcoin.Options{Network: bitcoin.Regtest, PublicKey: pub})
		if err != nil {
			t.Fatalf("body %d: %v", i, err)
		}
		in := p.Intent
		if len(in.Inputs) != 1 || !in.Inputs[0].Ours || in.Inputs[0].Amount != btcCoin || len(p.Digests) != 1 {
			t.Errorf("body %d: inputs %+v, %d digests", i, in.Inputs, len(p.Digests))
		}
		if len(in.Outputs) != 2 || in.Outputs[0].Address != dest || in.Outputs[0].Amount != btcPay || in.Outputs[0].Change ||
			!in.Outputs[1].Change || in.Fee != btcFee {
			t.Errorf("body %d: outputs %+v fee %d", i, in.Outputs, in.Fee)
		}
		if in.FeeRateSatVB < 5 || in.FeeRateSatVB > 10 {
			t.Errorf("body %d: fee rate %.1f sat/vB", i, in.FeeRateSatVB)
		}
		if seen[p.Digests[0].Hash] {
			t.Errorf("body %d: the same transaction as an earlier body", i)
		}
		seen[p.Digests[0].Hash] = true
	}
}

func BenchmarkBuildBodies(b *testing.B) {
	priv, err := secp256k1.GeneratePrivateKey()
	if err != nil {
		b.Fatal(err)
	}
	eth, _ := newEthSource("eth-dev", 1337, "b")
	btc, err := newBTCSource("btc-dev", "regtest", priv.PubKey().SerializeUncompressed(), "b")
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range []struct {
		name string
		src  bodySource
	}{{"eth", eth}, {"btc", btc}} {
		b.Run(s.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := s.src.build(1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
