package app

import (
	"context"
	"encoding/hex"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/bitcoin/bitcointest"
	"github.com/custodysigner/appliance/internal/store"
)

// corruptSign is the token's library with a planted fault: while armed, the
// signatures C_Sign returns have one bit of s flipped. The call succeeds, so
// nothing but the appliance's own check of each signature against the
// pinned key can notice.
type corruptSign struct {
	hsm.Cryptoki
	armed *atomic.Bool
}

func (c corruptSign) Sign(sh pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	sig, err := c.Cryptoki.Sign(sh, msg)
	if err == nil && len(msg) == 32 && c.armed.Load() {
		sig[len(sig)-1] ^= 1
	}
	return sig, err
}

// TestCorruptedHSMSignaturesAreRefused: an HSM whose signatures do not
// verify never yields a signed answer, for Ethereum (checked with the
// recovery parity) nor for Bitcoin (checked once, inside the PSBT
// finisher, before the script engine judges the transaction without
// verifying again). The request is answered 503 hsm_unavailable and recorded
// failed without a signature; once the HSM is sound, the same request signs.
func TestCorruptedHSMSignaturesAreRefused(t *testing.T) {
	e := newEnv(t)
	if _, err := CreateKey(context.Background(), e.cfg, e.log, KeySpec{ID: "btc-dev", Chain: "bitcoin", Network: "regtest"}, nil); err != nil {
		t.Fatal(err)
	}
	e.cfg.Principals[0].Keys = append(e.cfg.Principals[0].Keys, "btc-dev")
	var armed atomic.Bool
	e.interpose = func(c hsm.Cryptoki) hsm.Cryptoki { return corruptSign{Cryptoki: c, armed: &armed} }
	e.start()
	c := e.client("client")

	// A PSBT spending a made-up coin of the key.
	k := e.must(c, "GET", "/v1/keys/btc-dev", nil)
	pub, err := hex.DecodeString(k.json(t)["public_key"].(string))
	if err != nil {
		t.Fatal(err)
	}
	psbtPayload := bitcointest.SpendPSBT(t, pub, []byte("corrupt"))

	to := common.HexToAddress("0x00000000000000000000000000000000000000b1")
	signed := 0
	for _, req := range []struct {
		chain string
		body  map[string]string
	}{
		{"ethereum", signBody(unsignedEIP1559(t, 1337, 0, to, eth(1)), "corrupt-eth")},
		{"bitcoin", btcSignBody("regtest", psbtPayload, "corrupt-btc")},
	} {
		armed.Store(true)
		ans := e.must(c, "POST", "/v1/sign", req.body)
		if ans.status != http.StatusServiceUnavailable || ans.code(t) != "hsm_unavailable" {
			t.Fatalf("%s with a corrupted signature: %d %s; want 503 hsm_unavailable", req.chain, ans.status, ans.body)
		}
		count := func(state string) int {
			t.Helper()
			n, err := e.app.store.CountRequests(context.Background(), state)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		if f, s := count(store.StateFailed), count(store.StateSigned); f != 1 || s != signed {
			t.Fatalf("%s: %d failed and %d signed requests while the HSM was corrupt, want 1 and %d", req.chain, f, s, signed)
		}

		armed.Store(false)
		ans = e.must(c, "POST", "/v1/sign", req.body)
		if ans.status != http.StatusOK || ans.json(t)["state"] != "signed" {
			t.Fatalf("%s once the HSM is sound: %d %s; want signed", req.chain, ans.status, ans.body)
		}
		r, err := e.app.store.GetRequest(context.Background(), ans.json(t)["request_id"].(string))
		if err != nil || r.State != store.StateSigned || len(r.SignedTx) == 0 {
			t.Fatalf("%s: the retried request is %+v (%v)", req.chain, r, err)
		}
		// The same request, not a new one: the failed one was retried.
		signed++
		if f, s := count(store.StateFailed), count(store.StateSigned); f != 0 || s != signed {
			t.Fatalf("%s: %d failed and %d signed requests after the retry, want 0 and %d", req.chain, f, s, signed)
		}
	}
}
