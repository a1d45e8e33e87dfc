package signing

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"strconv"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/bitcoin/bitcointest"
	"github.com/custodysigner/appliance/internal/ethereum"
	"github.com/custodysigner/appliance/internal/store"
)

// fuzzService holds an Ethereum key on chain 1 (the EIP-155 example's
// private key) and a Bitcoin mainnet key (BIP-143's native P2WPKH key).
func fuzzService(tb testing.TB) (*Service, *Key, *Key) {
	tb.Helper()
	priv, _ := hex.DecodeString("4646464646464646464646464646464646464646464646464646464646464646")
	btcPub, _ := hex.DecodeString("025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357")
	bk, err := secp256k1.ParsePubKey(btcPub)
	if err != nil {
		tb.Fatal(err)
	}
	kr, err := LoadKeyring(tb.Context(), fuzzKeys{
		{ID: "eth-dev", CKAID: []byte{1}, Algorithm: store.AlgSecp256k1, Chain: "ethereum", Network: "1",
			PublicKey: secp256k1.PrivKeyFromBytes(priv).PubKey().SerializeUncompressed()},
		{ID: "btc-dev", CKAID: []byte{2}, Algorithm: store.AlgSecp256k1, Chain: "bitcoin", Network: "mainnet",
			PublicKey: bk.SerializeUncompressed()},
	})
	if err != nil {
		tb.Fatal(err)
	}
	s := &Service{keys: kr, log: zap.NewNop()}
	eth, _ := kr.Get("eth-dev")
	btc, _ := kr.Get("btc-dev")
	return s, eth, btc
}

type fuzzKeys []store.Key

func (k fuzzKeys) ListKeys(context.Context) ([]store.Key, error) { return k, nil }

// fuzzPSBT is a one-input PSBT spending a made-up coin of the key (with the
// previous transaction and the witness UTXO), paying BIP-173's first
// mainnet address and the change back.
func fuzzPSBT(tb testing.TB, key *Key, n byte) string {
	return bitcointest.SpendPSBT(tb, key.PublicKey, []byte{'c', 'o', 'i', 'n', n})
}

// prepareCodes are the refusals of payload decoding and its checks, with
// their statuses (docs/API.md).
var prepareCodes = map[string]int{
	apierr.CodeDecodeFailed: http.StatusUnprocessableEntity, apierr.CodeUnsupported: http.StatusUnprocessableEntity,
	apierr.CodeWrongNetwork: http.StatusUnprocessableEntity, apierr.CodeAddressInvalid: http.StatusUnprocessableEntity,
	apierr.CodePolicyDenied: http.StatusForbidden,
}

// FuzzPrepare: the payload, network and expect of a sign request (POST
// /v1/sign and /v1/policy/evaluate) for each chain. Refusals are API errors
// with a documented code and status, never an internal error; what is
// accepted is prepared deterministically, and re-preparing it from its
// record (as an approved request is re-prepared before signing) gives the
// same payload hash, digest and intent; the intent satisfies an expect
// taken from itself; and an expect that does not match is policy_denied.
// The network names of ParseEthereumNetwork round-trip through decimal.
func FuzzPrepare(f *testing.F) {
	s, eth, btc := fuzzService(f)
	for _, seed := range []struct {
		btc                            bool
		payload, network, dest, amount string
	}{
		// EIP-155's example, as the signing data the EIP prints.
		{false, "0xec098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080018080", "1",
			"0x3535353535353535353535353535353535353535", "1000000000000000000"},
		{false, "ec098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080018080", "mainnet", "", "1"},
		{false, "0xec098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080018080", "sepolia", "", ""},
		{false, "0x02c0", "18446744073709551615", "", ""},
		{true, fuzzPSBT(f, btc, 1), "mainnet", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "50000"},
		{true, fuzzPSBT(f, btc, 2), "", "", "49000"},
		{true, fuzzPSBT(f, btc, 3), "regtest", "", ""},
	} {
		f.Add(seed.btc, seed.payload, seed.network, seed.dest, seed.amount, "")
	}
	f.Fuzz(func(t *testing.T, isBTC bool, payload, network, dest, amount, asset string) {
		key := eth
		if isBTC {
			key = btc
		}
		if id, err := ParseEthereumNetwork(network); err == nil {
			again, err := ParseEthereumNetwork(id.String())
			if id.Sign() <= 0 || id.BitLen() > 64 || err != nil || again.Cmp(id) != 0 {
				t.Fatalf("network %q is chain id %v, which reads back as %v (%v)", network, id, again, err)
			}
		}
		req := Request{KeyID: key.ID, Chain: key.Chain, Network: network, Payload: payload}
		p, err := s.prepare(key, req)
		if err != nil {
			var ae *apierr.Error
			if !errors.As(err, &ae) || prepareCodes[ae.Code] != ae.Status || ae.Message == "" {
				t.Fatalf("%s payload %q refused with %#v", key.Chain, payload, err)
			}
			if ae.Code == apierr.CodePolicyDenied && !isBTC {
				t.Fatalf("ethereum payload refused as policy_denied before any policy: %v", err)
			}
			return
		}
		if len(p.digest) != 32 || len(p.payload) == 0 || !json.Valid(p.intent) ||
			!bytes.Equal(p.payloadHash, requestHash([]byte(key.ID), []byte(key.Chain), []byte(key.Network), p.payload)) {
			t.Fatalf("inconsistent preparation of %q: %+v", payload, p)
		}
		if !isBTC && network != "" {
			if id, err := ParseEthereumNetwork(network); err != nil || id.String() != key.Network {
				t.Fatalf("network %q accepted for chain id %s", network, key.Network)
			}
		}
		// Re-preparation from the record.
		again, err := s.prepare(key, requestOf(store.Request{KeyID: key.ID, Chain: key.Chain, Network: key.Network, Payload: p.payload}))
		if err != nil || !samePayload(store.Request{PayloadHash: p.payloadHash}, again) ||
			!bytes.Equal(again.digest, p.digest) || !bytes.Equal(again.intent, p.intent) {
			t.Fatalf("the record of %q re-prepares differently (%v)", payload, err)
		}
		self := selfExpect(t, isBTC, p.intent)
		if err := p.expect(self); err != nil {
			t.Fatalf("intent %s does not satisfy its own expect %+v: %v", p.intent, self, err)
		}
		if err := p.expect(Expect{Destination: dest, Amount: amount, Asset: asset}); err != nil {
			var ae *apierr.Error
			if !errors.As(err, &ae) || ae.Code != apierr.CodePolicyDenied || ae.Status != http.StatusForbidden {
				t.Fatalf("expect refused with %#v", err)
			}
		}
	})
}

// selfExpect is the expectation an honest transaction builder would send
// for intent.
func selfExpect(t *testing.T, isBTC bool, intent []byte) Expect {
	if isBTC {
		var in bitcoin.Intent
		if err := json.Unmarshal(intent, &in); err != nil {
			t.Fatal(err)
		}
		for _, o := range in.Outputs {
			if !o.Change {
				return Expect{Destination: o.Address, Amount: strconv.FormatInt(o.Amount, 10), Asset: "BTC"}
			}
		}
		return Expect{Asset: "native"}
	}
	var in ethereum.Intent
	if err := json.Unmarshal(intent, &in); err != nil {
		t.Fatal(err)
	}
	if in.Token != nil {
		return Expect{Destination: in.Token.To, Amount: in.Token.Amount, Asset: in.Token.Contract}
	}
	if _, ok := new(big.Int).SetString(in.Value, 10); !ok {
		t.Fatalf("intent value %q", in.Value)
	}
	return Expect{Destination: in.To, Amount: in.Value, Asset: "ETH"}
}
