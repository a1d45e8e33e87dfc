package app

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/store"
)

// A listed address from each shipped list (firmware-config/known-risk).
const (
	listedETH = "0x8589427373D6D84E98730D7795D8f6f8731FDA16"
	listedXBT = "12QtD5BFwRsdNsAZY76UVE1xyCGNTojH9h"
)

func knownRiskDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../../firmware-config/known-risk")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func screeningYAML(ethList, xbtList string) string {
	return fmt.Sprintf("screening:\n  watch_interval: 50ms\n  lists:\n    - {name: ofac-eth, chain: ethereum, path: %s}\n    - {name: ofac-xbt, chain: bitcoin, path: %s}\n", ethList, xbtList)
}

func erc20Transfer(to common.Address, amount *big.Int) []byte {
	data := append([]byte{0xa9, 0x05, 0x9c, 0xbb}, common.LeftPadBytes(to.Bytes(), 32)...)
	return append(data, common.LeftPadBytes(amount.Bytes(), 32)...)
}

func unsignedCall(t *testing.T, nonce uint64, to common.Address, value *big.Int, data []byte) string {
	t.Helper()
	p := unsignedEIP1559(t, 1337, nonce, to, value)
	if data == nil {
		return p
	}
	// Rebuild with calldata: the helper makes plain transfers only.
	return unsignedEIP1559Data(t, nonce, to, value, data)
}

func countState(t *testing.T, e *env, state string) int {
	t.Helper()
	st, err := store.Open(context.Background(), e.cfg.Store.Path, e.log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n, err := st.CountRequests(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestKnownRiskScreeningEthereum: a listed address as `to`, and inside
// ERC-20 calldata, is refused 403 address_denied and recorded as denied.
func TestKnownRiskScreeningEthereum(t *testing.T) {
	dir := knownRiskDir(t)
	e := newEnvWith(t, screeningYAML(filepath.Join(dir, "sanctioned_addresses_ETH.txt"), filepath.Join(dir, "sanctioned_addresses_XBT.txt")))
	e.start()
	c := e.client("client")
	clean := common.HexToAddress("0x00000000000000000000000000000000000000b1")
	listed := common.HexToAddress(listedETH)
	token := common.HexToAddress("0x00000000000000000000000000000000000000b2")
	cases := []struct {
		name    string
		payload string
	}{
		{"listed address as to", unsignedCall(t, 0, listed, big.NewInt(1), nil)},
		{"listed recipient inside ERC-20 transfer calldata", unsignedCall(t, 1, token, big.NewInt(0), erc20Transfer(listed, big.NewInt(5)))},
	}
	for i, tc := range cases {
		a := e.must(c, "POST", "/v1/sign", signBody(tc.payload, fmt.Sprintf("risk-%d", i)))
		if a.status != http.StatusForbidden || a.code(t) != "address_denied" {
			t.Fatalf("%s: %d %s", tc.name, a.status, a.body)
		}
		if !bytes.Contains(a.body, []byte("ofac-eth")) {
			t.Fatalf("%s: the refusal does not name the list: %s", tc.name, a.body)
		}
		// The same idempotency key replays the recorded refusal.
		if again := e.must(c, "POST", "/v1/sign", signBody(tc.payload, fmt.Sprintf("risk-%d", i))); string(again.body) != string(a.body) {
			t.Fatalf("%s: replay %s, first %s", tc.name, again.body, a.body)
		}
	}
	if n := countState(t, e, store.StateDenied); n != 2 {
		t.Fatalf("%d denied records, want 2", n)
	}
	// A clean ERC-20 transfer is signed.
	if a := e.must(c, "POST", "/v1/sign", signBody(unsignedCall(t, 2, token, big.NewInt(0), erc20Transfer(clean, big.NewInt(5))), "clean")); a.status != 200 {
		t.Fatalf("clean ERC-20 transfer: %d %s", a.status, a.body)
	}
	// Validation answers known_risk too.
	v := e.must(c, "POST", "/v1/addresses/validate", map[string]string{"chain": "ethereum", "network": "1337", "address": "0x8589427373d6d84e98730d7795d8f6f8731fda16"})
	m := v.json(t)
	if m["valid"] != true || m["normalized"] != listedETH || m["known_risk"] == nil {
		t.Fatalf("validate: %s", v.body)
	}
	if st := e.must(e.client("operator"), "GET", "/v1/status", nil).json(t); st["lists"].(map[string]any)["ofac-eth"].(map[string]any)["count"].(float64) != 152 {
		t.Fatalf("list versions in status: %v", st["lists"])
	}
}

// TestIntentExpectations: a decoded transaction that differs from the
// caller's `expect` is refused policy_denied; a matching one is signed.
func TestIntentExpectations(t *testing.T) {
	e := newEnv(t)
	e.start()
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000b3")
	payload := unsignedEIP1559(t, 1337, 0, to, big.NewInt(1000))
	body := func(idem string, expect map[string]string) map[string]any {
		return map[string]any{"key_id": "eth-dev", "chain": "ethereum", "network": "1337", "payload": payload, "idempotency_key": idem, "expect": expect}
	}
	for i, exp := range []map[string]string{
		{"destination": "0x00000000000000000000000000000000000000b4", "amount": "1000"},
		{"destination": to.Hex(), "amount": "999"},
		{"destination": to.Hex(), "amount": "1000", "asset": "0x00000000000000000000000000000000000000b5"},
	} {
		if a := e.must(c, "POST", "/v1/sign", body(fmt.Sprintf("x%d", i), exp)); a.status != 403 || a.code(t) != "policy_denied" {
			t.Fatalf("mismatch %v: %d %s", exp, a.status, a.body)
		}
	}
	if a := e.must(c, "POST", "/v1/sign", body("ok", map[string]string{"destination": to.Hex(), "amount": "1000", "asset": "ETH"})); a.status != 200 {
		t.Fatalf("matching expect: %d %s", a.status, a.body)
	}
}

// TestKnownRiskScreeningBitcoin: one listed output among several refuses
// the whole PSBT.
func TestKnownRiskScreeningBitcoin(t *testing.T) {
	dir := knownRiskDir(t)
	e := newEnvWith(t, screeningYAML(filepath.Join(dir, "sanctioned_addresses_ETH.txt"), filepath.Join(dir, "sanctioned_addresses_XBT.txt")))
	e.cfg.Principals[0].Keys = append(e.cfg.Principals[0].Keys, "btc-main")
	k, err := CreateKey(context.Background(), e.cfg, e.log, KeySpec{ID: "btc-main", Chain: "bitcoin", Network: "mainnet"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.start()
	ours, err := bitcoin.P2WPKHScript(k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	clean, _ := btcutil.DecodeAddress("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", &chaincfg.MainNetParams)
	listed, err := btcutil.DecodeAddress(listedXBT, &chaincfg.MainNetParams)
	if err != nil {
		t.Fatal(err)
	}
	build := func(outs ...btcutil.Address) string {
		prev := wire.NewMsgTx(2)
		prev.AddTxIn(wire.NewTxIn(&wire.OutPoint{Hash: chainhash.Hash{1}, Index: 0}, nil, nil))
		prev.AddTxOut(wire.NewTxOut(100_000, ours))
		spend := wire.NewMsgTx(2)
		spend.AddTxIn(wire.NewTxIn(&wire.OutPoint{Hash: prev.TxHash(), Index: 0}, nil, nil))
		for _, a := range outs {
			script, _ := txscript.PayToAddrScript(a)
			spend.AddTxOut(wire.NewTxOut(30_000, script))
		}
		p, err := psbt.NewFromUnsignedTx(spend)
		if err != nil {
			t.Fatal(err)
		}
		p.Inputs[0].NonWitnessUtxo = prev
		p.Inputs[0].WitnessUtxo = prev.TxOut[0]
		var buf bytes.Buffer
		if err := p.Serialize(&buf); err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(buf.Bytes())
	}
	c := e.client("client")
	req := func(payload, idem string) map[string]string {
		return map[string]string{"key_id": "btc-main", "chain": "bitcoin", "network": "mainnet", "payload": payload, "idempotency_key": idem}
	}
	a := e.must(c, "POST", "/v1/sign", req(build(clean, listed, clean), "b1"))
	if a.status != 403 || a.code(t) != "address_denied" || !bytes.Contains(a.body, []byte("output 1")) {
		t.Fatalf("listed output: %d %s", a.status, a.body)
	}
	a = e.must(c, "POST", "/v1/sign", req(build(clean, clean), "b2"))
	if a.status != 200 || a.json(t)["txid"] == "" {
		t.Fatalf("clean outputs: %d %s", a.status, a.body)
	}
	raw, _ := hex.DecodeString(a.json(t)["signed_tx"].(string))
	if len(raw) == 0 {
		t.Fatalf("no finalised transaction: %s", a.body)
	}
}

// TestKnownRiskListReloadsOnChange: an address appended to a list file is
// refused without a restart, and the list's version changes.
func TestKnownRiskListReloadsOnChange(t *testing.T) {
	dir := t.TempDir()
	eth := filepath.Join(dir, "eth.txt")
	xbt := filepath.Join(dir, "xbt.txt")
	if err := os.WriteFile(eth, []byte("# test list\n"+listedETH+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(xbt, []byte(listedXBT+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, screeningYAML(eth, xbt))
	e.start()
	c := e.client("client")
	fresh := common.HexToAddress("0x00000000000000000000000000000000000000c7")
	if a := e.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, fresh, big.NewInt(1)), "r0")); a.status != 200 {
		t.Fatalf("before the list change: %d %s", a.status, a.body)
	}
	before := e.must(e.client("operator"), "GET", "/v1/status", nil).json(t)["lists"].(map[string]any)["ofac-eth"].(map[string]any)["sha256"]
	f, err := os.OpenFile(eth, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, fresh.Hex())
	f.Close()
	i := 0
	waitFor(t, 10*time.Second, "reload", func() bool {
		i++
		a := e.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, uint64(i), fresh, big.NewInt(1)), fmt.Sprintf("r%d", i)))
		return a.status == 403 && a.code(t) == "address_denied"
	})
	after := e.must(e.client("operator"), "GET", "/v1/status", nil).json(t)["lists"].(map[string]any)["ofac-eth"].(map[string]any)["sha256"]
	if before == after {
		t.Fatal("list version unchanged after reload")
	}
	// The reload is in the audit chain with the new version.
	e.stop()
	found := false
	f2, err := store.OpenAuditFile(context.Background(), e.cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	_ = f2.Entries(context.Background(), 0, func(en *audit.Entry) error {
		found = found || (en.Kind == "config_reload" && strings.Contains(en.Fields, fmt.Sprint(after)))
		return nil
	})
	if !found {
		t.Fatal("no config_reload audit entry for the new list version")
	}
}
