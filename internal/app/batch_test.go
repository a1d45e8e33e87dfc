package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/hsmfault"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/devpki"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/store"
)

// batchResult is one element of a POST /v1/sign/batch answer.
type batchResult struct {
	Index      int             `json:"index"`
	Status     int             `json:"status"`
	Result     json.RawMessage `json:"result"`
	Error      json.RawMessage `json:"error"`
	RetryAfter int             `json:"retry_after"`
}

func (r batchResult) code(t *testing.T) string {
	t.Helper()
	var e struct{ Code string }
	if err := json.Unmarshal(r.Error, &e); err != nil {
		t.Fatalf("item %d: error %s: %v", r.Index, r.Error, err)
	}
	return e.Code
}

// signBatch posts items as one batch and returns its results, checking
// the envelope: 200, one result per item in request order, each with
// exactly one of result and error.
func (e *env) signBatch(c *http.Client, items ...any) []batchResult {
	e.t.Helper()
	a := e.must(c, "POST", "/v1/sign/batch", map[string]any{"requests": items})
	if a.status != http.StatusOK {
		e.t.Fatalf("batch: %d %s", a.status, a.body)
	}
	dec := json.NewDecoder(bytes.NewReader(a.body))
	dec.DisallowUnknownFields()
	var body struct{ Results []batchResult }
	if err := dec.Decode(&body); err != nil {
		e.t.Fatalf("batch answer %s: %v", a.body, err)
	}
	if len(body.Results) != len(items) {
		e.t.Fatalf("%d results for %d requests: %s", len(body.Results), len(items), a.body)
	}
	for i, r := range body.Results {
		if r.Index != i || (r.Result == nil) == (r.Error == nil) {
			e.t.Fatalf("result %d: %+v", i, r)
		}
	}
	return body.Results
}

// verifySignedResult checks a signed answer with go-ethereum: the
// transaction decodes, recovers to the key's address, carries the nonce,
// and tx_hash is its hash.
func verifySignedResult(t *testing.T, raw json.RawMessage, from common.Address, nonce uint64) string {
	t.Helper()
	var m struct {
		RequestID string `json:"request_id"`
		State     string `json:"state"`
		SignedTx  string `json:"signed_tx"`
		TxHash    string `json:"tx_hash"`
	}
	if err := json.Unmarshal(raw, &m); err != nil || m.State != "signed" || !strings.HasPrefix(m.RequestID, "req_") {
		t.Fatalf("signed answer %s (%v)", raw, err)
	}
	b, err := hex.DecodeString(strings.TrimPrefix(m.SignedTx, "0x"))
	if err != nil {
		t.Fatal(err)
	}
	tx := new(types.Transaction)
	if err := tx.UnmarshalBinary(b); err != nil {
		t.Fatalf("go-ethereum refuses the signed tx: %v", err)
	}
	sender, err := types.Sender(types.LatestSignerForChainID(big.NewInt(1337)), tx)
	if err != nil || sender != from || tx.Nonce() != nonce || tx.Hash().Hex() != m.TxHash {
		t.Fatalf("signer %s (%v), nonce %d, hash %s; want %s, %d, %s", sender, err, tx.Nonce(), tx.Hash().Hex(), from, nonce, m.TxHash)
	}
	return m.RequestID
}

// contractCall is a payload the default policy refuses (a call with an
// unknown selector): policy_denied, recorded as denied.
func contractCall(t *testing.T, nonce uint64) string {
	return unsignedEIP1559Data(t, nonce, common.HexToAddress("0x00000000000000000000000000000000000000c0"), big.NewInt(0),
		[]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4})
}

// TestSignBatchPerItem: a batch mixing good and bad requests answers each
// exactly as POST /v1/sign answers it alone, records what /v1/sign records,
// and one request's failure leaves the others alone.
func TestSignBatchPerItem(t *testing.T) {
	e := newEnv(t)
	if _, err := CreateKey(context.Background(), e.cfg, e.log, KeySpec{ID: "eth-vault", Chain: "ethereum", Network: "1337"}, nil); err != nil {
		t.Fatal(err)
	}
	url := e.startWithMetrics()
	from := keyAddress(t, e)
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000b1")
	pay := func(nonce uint64) string { return unsignedEIP1559(t, 1337, nonce, to, big.NewInt(int64(nonce)+1)) }

	earlier := e.must(c, "POST", "/v1/sign", signBody(pay(1), "earlier"))
	if earlier.status != http.StatusOK {
		t.Fatalf("earlier sign: %d %s", earlier.status, earlier.body)
	}
	ungranted := signBody(pay(5), "b-3")
	ungranted["key_id"] = "eth-vault"
	items := []any{
		signBody(pay(10), "b-0"),             // 0: signed
		signBody("0x02deadbeef", "b-1"),      // 1: decode_failed, nothing recorded
		signBody(pay(11), ""),                // 2: signed, no idempotency key
		ungranted,                            // 3: forbidden (and audited)
		signBody(pay(1), "earlier"),          // 4: replays the earlier request
		signBody(contractCall(t, 12), "b-5"), // 5: policy_denied, recorded as denied
		json.RawMessage(`{"key_id":5}`),      // 6: bad_request
		signBody(pay(10), "b-0"),             // 7: a replay of item 0, inside the batch
		signBody(pay(13), "b-0"),             // 8: same key, other payload: conflict
		json.RawMessage(`{"key_id":"eth-dev","chain":"ethereum","payload":"` + strings.Repeat("a", 1<<20) + `"}`), // 9: over max_body_bytes
	}
	head0, _, err := e.app.store.AuditHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	res := e.signBatch(c, items...)

	want := []struct {
		status int
		code   string
	}{{200, ""}, {422, "decode_failed"}, {200, ""}, {403, "forbidden"}, {200, ""}, {403, "policy_denied"},
		{400, "bad_request"}, {200, ""}, {409, "idempotency_conflict"}, {413, "too_large"}}
	for i, w := range want {
		if res[i].Status != w.status || (w.code != "" && res[i].code(t) != w.code) {
			t.Errorf("item %d: %d %s %s, want %d %s", i, res[i].Status, res[i].Result, res[i].Error, w.status, w.code)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	id0 := verifySignedResult(t, res[0].Result, from, 10)
	verifySignedResult(t, res[2].Result, from, 11)
	// Replays are the recorded answer, byte for byte: of the earlier
	// POST /v1/sign, and of item 0.
	if !bytes.Equal(res[4].Result, bytes.TrimSpace(earlier.body)) {
		t.Errorf("replay of the earlier request:\n%s\nwant\n%s", res[4].Result, earlier.body)
	}
	if !bytes.Equal(res[7].Result, res[0].Result) {
		t.Errorf("replay inside the batch:\n%s\nwant\n%s", res[7].Result, res[0].Result)
	}
	// Each refusal is the error object POST /v1/sign answers for that body
	// (which records nothing more: the denied one is then a replay).
	for _, i := range []int{1, 3, 5, 6, 8} {
		alone := e.must(c, "POST", "/v1/sign", items[i])
		var env struct{ Error json.RawMessage }
		if err := json.Unmarshal(alone.body, &env); err != nil || alone.status != res[i].Status || !bytes.Equal(env.Error, res[i].Error) {
			t.Errorf("item %d: batch %d %s, alone %d %s", i, res[i].Status, res[i].Error, alone.status, alone.body)
		}
	}
	if r := e.must(c, "GET", "/v1/requests/"+id0, nil); r.status != http.StatusOK || r.json(t)["state"] != "signed" {
		t.Fatalf("item 0's request: %d %s", r.status, r.body)
	}

	// Records: the earlier request and items 0 and 2 signed, item 5 denied.
	for state, n := range map[string]int{store.StateSigned: 3, store.StateDenied: 1, store.StateSigning: 0, store.StateFailed: 0} {
		if got, err := e.app.store.CountRequests(context.Background(), state); err != nil || got != n {
			t.Errorf("%d requests %s (%v), want %d", got, state, err, n)
		}
	}
	// The audit has what three /v1/sign calls would leave, and the
	// ungranted key's authorisation failure, naming the item.
	kinds := map[string]int{}
	var authFailures []string
	err = e.app.store.AuditEntries(context.Background(), head0, 0, func(en *audit.Entry) error {
		kinds[en.Kind]++
		if en.Kind == "auth_failure" {
			authFailures = append(authFailures, en.Detail+" "+en.Fields)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if kinds["sign_request"] != 3 || len(authFailures) < 1 || !strings.Contains(authFailures[0], "batch request 3: key \"eth-vault\" is not granted") ||
		!strings.Contains(authFailures[0], "/v1/sign/batch") {
		t.Errorf("audit after the batch: %v, auth failures %q", kinds, authFailures)
	}

	m := scrapeMetrics(t, nil, url)
	if v := m.value(t, "appliance_requests_total", "code=ok,route=POST /v1/sign/batch"); v != 1 {
		t.Errorf("requests_total{POST /v1/sign/batch, ok} = %v, want 1", v)
	}
	// Each request of the batch is counted as well, under its own route
	// label, and each signature in the sign latency histogram.
	for code, want := range map[string]float64{"ok": 4, "decode_failed": 1, "forbidden": 1, "policy_denied": 1,
		"bad_request": 1, "idempotency_conflict": 1, "too_large": 1} {
		if v := m.value(t, "appliance_requests_total", "code="+code+",route=POST /v1/sign/batch (request)"); v != want {
			t.Errorf("requests_total{batch request, %s} = %v, want %v", code, v, want)
		}
	}
	if n := m.value(t, "appliance_sign_duration_seconds", "chain=ethereum"); n != 5 {
		t.Errorf("sign_duration count %v, want 5: the earlier POST /v1/sign and the batch's 4", n)
	}
}

// TestSignBatchFeedsHealth: the requests of a batch feed the health window
// as POST /v1/sign does, so an upstream that only sends batches still
// raises hsm_error_rate when the HSM fails its signatures.
func TestSignBatchFeedsHealth(t *testing.T) {
	e := newEnvWith(t, "health: {min_samples: 5, hsm_error_rate_max: 0.2}\n")
	var inj *hsmfault.Injector
	e.interpose = func(c hsm.Cryptoki) hsm.Cryptoki { inj = hsmfault.Wrap(c); return inj }
	e.start()
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000b3")
	var items []any
	for i := range 6 {
		items = append(items, signBody(unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)), fmt.Sprint("h-", i)))
	}
	if r := e.app.checker.Fresh(context.Background()); !r.Checks[alertHSMErrorRate].OK {
		t.Fatalf("before the batch: %+v", r)
	}
	inj.FailNext(hsmfault.Fault{Op: hsmfault.OpSign, RV: pkcs11.CKR_FUNCTION_FAILED, When: hsmfault.Before}, 3)
	var failed int
	for i, r := range e.signBatch(c, items...) {
		switch {
		case r.Status == http.StatusServiceUnavailable && r.code(t) == "hsm_unavailable":
			failed++
		case r.Status != http.StatusOK:
			t.Fatalf("item %d: %d %s", i, r.Status, r.Error)
		}
	}
	if failed != 3 {
		t.Fatalf("%d requests refused hsm_unavailable, want the 3 the HSM failed", failed)
	}
	r := e.app.checker.Fresh(context.Background())
	if chk := r.Checks[alertHSMErrorRate]; chk.OK || !strings.Contains(chk.Detail, "3 of the last 6 sign requests failed for the HSM") {
		t.Fatalf("hsm_error_rate after a batch with 3 of 6 failed: %+v (report %s)", chk, r.Status)
	}
	if r.Status != health.StatusDegraded {
		t.Fatalf("health %s, want degraded", r.Status)
	}
}

// TestSignBatchRefusedWhole: a batch that is not one (malformed, empty, over
// http.sign_batch_max, over its body limit) or comes from a principal
// without the client role is refused as a whole, and nothing is recorded.
func TestSignBatchRefusedWhole(t *testing.T) {
	e := newEnv(t)
	e.cfg.HTTP.SignBatchMax = 3
	e.start()
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000b2")
	item := func(i int) any {
		return signBody(unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)), fmt.Sprintf("w-%d", i))
	}
	head0, _, err := e.app.store.AuditHead(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stranger := devpkiClient(t, e, "stranger")
	cases := []struct {
		name   string
		c      *http.Client
		body   any
		status int
		code   string
	}{
		{"over sign_batch_max", c, map[string]any{"requests": []any{item(0), item(1), item(2), item(3)}}, 413, "too_large"},
		{"empty", c, map[string]any{"requests": []any{}}, 400, "bad_request"},
		{"no requests", c, map[string]any{}, 400, "bad_request"},
		{"not JSON", c, []byte(`{"requests":[`), 400, "bad_request"},
		{"a list, not an object", c, []any{item(0)}, 400, "bad_request"},
		{"unknown field", c, map[string]any{"requests": []any{item(0)}, "atomic": true}, 400, "bad_request"},
		// The limit is max(max_body_bytes, 3 × 64 KiB) = 1 MiB.
		{"body over the limit", c, []byte(`{"requests":[{"payload":"` + strings.Repeat("a", 1<<20) + `"}]}`), 413, "too_large"},
		{"officer", e.client("officer1"), map[string]any{"requests": []any{item(0)}}, 403, "forbidden"},
		{"auditor", e.client("auditor"), map[string]any{"requests": []any{item(0)}}, 403, "forbidden"},
		{"unregistered", stranger, map[string]any{"requests": []any{item(0)}}, 403, "forbidden"},
		{"GET", c, nil, 405, "method_not_allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := "POST"
			if tc.name == "GET" {
				method = "GET"
			}
			a := e.must(tc.c, method, "/v1/sign/batch", tc.body)
			if a.status != tc.status || a.code(t) != tc.code {
				t.Fatalf("got %d %s, want %d %s", a.status, a.body, tc.status, tc.code)
			}
		})
	}
	for _, state := range []string{store.StateSigning, store.StateSigned, store.StateFailed, store.StateDenied} {
		if n, _ := e.app.store.CountRequests(context.Background(), state); n != 0 {
			t.Errorf("%d requests %s after whole-batch refusals", n, state)
		}
	}
	// Only the three role refusals were audited.
	var kinds []string
	_ = e.app.store.AuditEntries(context.Background(), head0, 0, func(en *audit.Entry) error {
		kinds = append(kinds, en.Kind)
		return nil
	})
	if strings.Join(kinds, ",") != "auth_failure,auth_failure,auth_failure" {
		t.Errorf("audited after whole-batch refusals: %v", kinds)
	}
	// At the limit, the same requests are signed.
	res := e.signBatch(c, item(0), item(1), item(2))
	for _, r := range res {
		if r.Status != http.StatusOK {
			t.Fatalf("batch at the limit: %+v", r)
		}
	}
}

// TestSignBatchDenialsCountTowardsFreeze: refusals inside a batch feed the
// automatic freeze like refusals of single requests, so batching cannot
// hide a burst of denials.
func TestSignBatchDenialsCountTowardsFreeze(t *testing.T) {
	e := newEnvWith(t, "freeze: {after_denials: 5, denial_window: 1m}\n")
	e.start()
	c := e.client("client")
	var items []any
	for i := range 5 {
		items = append(items, signBody(contractCall(t, uint64(i)), fmt.Sprintf("d-%d", i)))
	}
	for _, r := range e.signBatch(c, items...) {
		if r.Status != http.StatusForbidden || r.code(t) != "policy_denied" {
			t.Fatalf("item %d: %d %s", r.Index, r.Status, r.Error)
		}
	}
	waitFor(t, 5*time.Second, "automatic freeze", func() bool {
		return e.must(e.client("operator"), "GET", "/v1/status", nil).json(t)["frozen"] == true
	})
	to := common.HexToAddress("0x00000000000000000000000000000000000000b3")
	res := e.signBatch(c, signBody(unsignedEIP1559(t, 1337, 9, to, big.NewInt(1)), "after"))
	if res[0].Status != http.StatusServiceUnavailable || res[0].code(t) != "frozen" {
		t.Fatalf("batch after the freeze: %d %s", res[0].Status, res[0].Error)
	}
}

// TestSignBatchPolicyLimits: requests of one batch run concurrently, yet
// cannot pass a window limit together (exactly the allowance is signed),
// and a rate-limited item says when to retry.
func TestSignBatchPolicyLimits(t *testing.T) {
	q := newQuorumEnv(t, "freeze: {after_denials: 1000000}\n")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"windows":[{"asset":"ETH","duration":"1h","max":"10"}]}`)
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000b4")
	var items []any
	for i := range 24 {
		items = append(items, signBody(unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)), fmt.Sprintf("l-%d", i)))
	}
	got := map[string]int{}
	for _, r := range q.signBatch(c, items...) {
		if r.Status == http.StatusOK {
			got["signed"]++
		} else {
			got[r.code(t)]++
		}
	}
	if got["signed"] != 10 || got["limit_exceeded"] != 14 {
		t.Fatalf("outcomes %v, want 10 signed and 14 limit_exceeded", got)
	}

	q.setPolicy(`{"rate_per_client":{"per_second":0.01,"burst":2}}`)
	items = items[:0]
	for i := range 4 {
		items = append(items, signBody(unsignedEIP1559(t, 1337, uint64(100+i), to, big.NewInt(1)), fmt.Sprintf("r-%d", i)))
	}
	got = map[string]int{}
	for _, r := range q.signBatch(c, items...) {
		switch {
		case r.Status == http.StatusOK:
			got["signed"]++
		case r.Status == http.StatusTooManyRequests && r.code(t) == "rate_limited" && r.RetryAfter >= 1:
			got["rate_limited"]++
		default:
			t.Errorf("item %d: %d %s retry_after %d", r.Index, r.Status, r.Error, r.RetryAfter)
		}
	}
	if got["signed"] != 2 || got["rate_limited"] != 2 {
		t.Fatalf("outcomes %v, want 2 signed and 2 rate_limited with retry_after", got)
	}
}

// startThroughputEnv starts an appliance for BenchmarkSignThroughput as
// newEnv does for tests (whose env is tied to *testing.T): a fresh SoftHSM
// token with the Ethereum key eth-dev granted to "client", a dev PKI,
// auto-unseal, info-level JSON logs written nowhere, the real server on a
// loopback port. It returns the base URL and the client's HTTPS client.
func startThroughputEnv(b *testing.B) (string, *http.Client) {
	b.Helper()
	uri, pin := softhsmtest.NewToken(b)
	dir := b.TempDir()
	pinFile := filepath.Join(dir, "user.pin")
	if err := os.WriteFile(pinFile, append(pin, '\n'), 0o600); err != nil {
		b.Fatal(err)
	}
	uri.PinValue, uri.PinSource = "", "file:"+pinFile
	pki := filepath.Join(dir, "pki")
	if err := devpki.Generate(pki, devpki.DefaultClients()); err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
mode: dev
tls: {cert: %[1]s/server.crt, key: %[1]s/server.key, client_ca: %[1]s/ca.crt}
hsm: {uri: %[2]q, pool_size: 4, acquire_timeout: 5s}
store: {path: %[3]s/appliance.db}
seal: {auto_unseal: true}
principals:
  - {name: %[4]sclient, roles: [client], keys: [eth-dev]}
`, pki, uri.String(), dir, testPrincipalPrefix)))
	if err != nil {
		b.Fatal(err)
	}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel))
	if _, err := CreateKey(context.Background(), cfg, log, KeySpec{ID: "eth-dev", Chain: "ethereum", Network: "1337"}, nil); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, log, "bench")
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		a.Close()
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.ServeListener(ctx, ln) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("serve: %v", err)
		}
		a.Close()
	})
	for deadline := time.Now().Add(30 * time.Second); !a.Ready(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("appliance not ready within 30s")
		}
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "client.crt"), filepath.Join(pki, "client.key"))
	if err != nil {
		b.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 256,
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}}}
	return "https://" + ln.Addr().String(), c
}

// postJSON posts body and returns the status and answer.
func postJSON(c *http.Client, url string, body []byte) (int, []byte, error) {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// BenchmarkSignThroughput compares n = 64 signatures asked for as 64
// POST /v1/sign (one after another; 8 at a time; all 64 at once) with one
// POST /v1/sign/batch of 64 (and with 4 concurrent batches of 16), through
// the real server: mTLS, SoftHSM, SQLite with fsync. Each operation is the
// 64 signatures, every one a new request (its own idempotency key); sigs/s
// is the throughput, cpu-us/sig the process's CPU time per signature.
// Client and appliance share the machine's cores, and the CPU time is both
// of theirs.
func BenchmarkSignThroughput(b *testing.B) {
	const n = 64
	url, c := startThroughputEnv(b)
	to := common.HexToAddress("0x00000000000000000000000000000000000000e1")
	payloads := make([]string, n)
	for i := range payloads {
		payloads[i] = unsignedEIP1559(b, 1337, uint64(i), to, big.NewInt(int64(i)+1))
	}
	round := 0
	body := func(i int) map[string]string { return signBody(payloads[i], fmt.Sprintf("t-%d-%d", round, i)) }
	single := func(b *testing.B, i int) {
		raw, _ := json.Marshal(body(i))
		status, ans, err := postJSON(c, url+"/v1/sign", raw)
		if err != nil || status != http.StatusOK {
			b.Errorf("sign: %d %s %v", status, ans, err)
		}
	}
	batch := func(b *testing.B, from, to int) {
		var items []any
		for i := from; i < to; i++ {
			items = append(items, body(i))
		}
		raw, _ := json.Marshal(map[string]any{"requests": items})
		status, ans, err := postJSON(c, url+"/v1/sign/batch", raw)
		var res struct{ Results []batchResult }
		if err == nil && status == http.StatusOK {
			err = json.Unmarshal(ans, &res)
		}
		if err != nil || status != http.StatusOK || len(res.Results) != to-from {
			b.Errorf("batch: %d %.200s %v", status, ans, err)
			return
		}
		for _, r := range res.Results {
			if r.Status != http.StatusOK {
				b.Errorf("batch item %d: %d %s", r.Index, r.Status, r.Error)
			}
		}
	}
	// concurrently runs f(0..count-1) on w goroutines.
	concurrently := func(w, count int, f func(i int)) {
		next := make(chan int)
		var wg sync.WaitGroup
		for range w {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					f(i)
				}
			}()
		}
		for i := range count {
			next <- i
		}
		close(next)
		wg.Wait()
	}
	singles := func(b *testing.B) { concurrently(n, n, func(i int) { single(b, i) }) }
	batched := func(b *testing.B) { batch(b, 0, n) }
	run := func(name string, op func(b *testing.B)) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := signThroughputCPU(b)
			for b.Loop() {
				round++
				op(b)
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "sigs/s")
			b.ReportMetric(float64((signThroughputCPU(b)-cpu0).Microseconds())/float64(n*b.N), "cpu-us/sig")
		})
	}
	run("single_sequential", func(b *testing.B) {
		for i := range n {
			single(b, i)
		}
	})
	run("single_concurrent_8", func(b *testing.B) { concurrently(8, n, func(i int) { single(b, i) }) })
	run("single_concurrent_64", singles)
	run("batch_64", batched)
	run("batch_16x4_concurrent", func(b *testing.B) {
		concurrently(4, 4, func(i int) { batch(b, i*n/4, (i+1)*n/4) })
	})
	// paired alternates 64 concurrent singles and one batch of 64 in every
	// operation, so both see the same machine (a shared one is noisy), and
	// reports each one's throughput and their ratio.
	b.Run("paired", func(b *testing.B) {
		var tSingle, tBatch time.Duration
		for b.Loop() {
			round++
			start := time.Now()
			singles(b)
			tSingle += time.Since(start)
			round++
			start = time.Now()
			batched(b)
			tBatch += time.Since(start)
		}
		b.ReportMetric(float64(n*b.N)/tSingle.Seconds(), "single-sigs/s")
		b.ReportMetric(float64(n*b.N)/tBatch.Seconds(), "batch-sigs/s")
		b.ReportMetric(tSingle.Seconds()/tBatch.Seconds(), "batch/single")
	})
}

// signThroughputCPU is the CPU time (user and system) this process has
// used: client, server and SoftHSM together.
func signThroughputCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
