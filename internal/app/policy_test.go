package app

import (
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/store"
)

// setPolicy installs rules for eth-dev through a 2-of-3 proposal.
func (q *quorumEnv) setPolicy(rules string) {
	q.t.Helper()
	p := q.propose(1, "set_policy", `{"key_id":"eth-dev","rules":`+rules+`}`)
	q.approve(1, p["proposal_id"].(string), q.approval[0], p["digest"].(string))
	if a := q.approve(2, p["proposal_id"].(string), q.approval[1], p["digest"].(string)); a.json(q.t)["state"] != "executed" {
		q.t.Fatalf("set_policy: %s", a.body)
	}
}

// TestPolicyWindowLimitThroughAPI: 200 concurrent requests against a window
// that allows exactly 50 → exactly 50 signed and 150 limit_exceeded; the
// dry run records nothing; the window's usage survives a restart.
func TestPolicyWindowLimitThroughAPI(t *testing.T) {
	q := newQuorumEnv(t, "freeze: {after_denials: 1000000}\n")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"windows":[{"asset":"ETH","duration":"1h","max":"50"}]}`)
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000d1")

	const n = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := q.do(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)), fmt.Sprintf("w-%d", i)))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				got["error"]++
			case a.status == 200:
				got["signed"]++
			default:
				got[a.code(t)]++
			}
		}()
	}
	wg.Wait()
	if got["signed"] != 50 || got["limit_exceeded"] != 150 {
		t.Fatalf("outcomes %v, want exactly 50 signed and 150 limit_exceeded", got)
	}
	if n := countState(t, q.env, store.StateDenied); n != 150 {
		t.Fatalf("%d denied records, want 150 (each with its rule)", n)
	}

	// Dry run: what would happen, recording nothing.
	before := countState(t, q.env, store.StateDenied)
	ev := q.must(c, "POST", "/v1/policy/evaluate", signBody(unsignedEIP1559(t, 1337, 999, to, big.NewInt(1)), "dry"))
	if ev.status != 200 || ev.json(t)["decision"] != "deny" || ev.json(t)["code"] != "limit_exceeded" {
		t.Fatalf("dry run: %d %s", ev.status, ev.body)
	}
	if countState(t, q.env, store.StateDenied) != before {
		t.Fatal("the dry run recorded something")
	}
	// The dry run refuses a chain that is not the key's, as /v1/sign does.
	wrong := signBody(unsignedEIP1559(t, 1337, 999, to, big.NewInt(1)), "dry-chain")
	wrong["chain"] = "bitcoin"
	for _, path := range []string{"/v1/policy/evaluate", "/v1/sign"} {
		if a := q.must(c, "POST", path, wrong); a.status != http.StatusUnprocessableEntity || a.code(t) != "wrong_network" {
			t.Fatalf("%s with chain bitcoin for an Ethereum key: %d %s", path, a.status, a.body)
		}
	}

	// The window's usage survives a restart.
	q.stop()
	q.start()
	q.unseal(2, 3)
	a := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 1000, to, big.NewInt(1)), "after-restart"))
	if a.status != http.StatusForbidden || a.code(t) != "limit_exceeded" {
		t.Fatalf("after restart: %d %s", a.status, a.body)
	}
}

// TestPolicyRateLimitRetryAfter: a per-client token bucket answers 429 with
// Retry-After once its burst is spent.
func TestPolicyRateLimitRetryAfter(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"rate_per_client":{"per_second":0.01,"burst":2}}`)
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000d2")
	for i := 0; i < 2; i++ {
		if a := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)), fmt.Sprintf("r%d", i))); a.status != 200 {
			t.Fatalf("within the burst: %d %s", a.status, a.body)
		}
	}
	a := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 2, to, big.NewInt(1)), "r2"))
	if a.status != http.StatusTooManyRequests || a.code(t) != "rate_limited" {
		t.Fatalf("past the burst: %d %s", a.status, a.body)
	}
	if ra := a.header.Get("Retry-After"); ra == "" || ra == "0" || strings.HasPrefix(ra, "-") {
		t.Fatalf("Retry-After %q", ra)
	}
}

// TestPolicyAllowsContractCallsPerSelector: contract calls are refused
// unless the key's policy allows that contract and function selector.
func TestPolicyAllowsContractCallsPerSelector(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	contract := common.HexToAddress("0x00000000000000000000000000000000000000d3")
	c := q.client("client")
	call := func(nonce uint64, selector []byte, idem string) answer {
		data := append(selector, make([]byte, 32)...)
		return q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559Data(t, nonce, contract, big.NewInt(0), data), idem))
	}
	if a := call(0, []byte{0xde, 0xad, 0xbe, 0xef}, "c0"); a.status != 403 || a.code(t) != "policy_denied" {
		t.Fatalf("before any allowance: %d %s", a.status, a.body)
	}
	q.setPolicy(`{"contracts":{"` + contract.Hex() + `":["0xdeadbeef"]}}`)
	if a := call(1, []byte{0xde, 0xad, 0xbe, 0xef}, "c1"); a.status != 200 {
		t.Fatalf("allowed selector: %d %s", a.status, a.body)
	}
	if a := call(2, []byte{0xca, 0xfe, 0xba, 0xbe}, "c2"); a.status != 403 || a.code(t) != "policy_denied" {
		t.Fatalf("other selector: %d %s", a.status, a.body)
	}
}

// TestAllowlistTimeLock: in allowlist mode only allowlisted destinations
// receive; one officer's addition takes effect after the time lock, the
// quorum's at once.
func TestAllowlistTimeLock(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"allowlist":true,"allowlist_delay":"2s"}`)
	c := q.client("client")
	x := common.HexToAddress("0x00000000000000000000000000000000000000d4")
	y := common.HexToAddress("0x00000000000000000000000000000000000000d5")
	send := func(to common.Address, nonce uint64) answer {
		return q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, nonce, to, big.NewInt(1)), fmt.Sprintf("al-%d", nonce)))
	}
	if a := send(x, 0); a.status != 403 || a.code(t) != "address_denied" {
		t.Fatalf("not allowlisted: %d %s", a.status, a.body)
	}
	add := q.must(q.client("officer3"), "POST", "/v1/allowlist", map[string]string{"key_id": "eth-dev", "address": strings.ToLower(x.Hex())})
	if add.status != http.StatusCreated || add.json(t)["address"] != x.Hex() {
		t.Fatalf("allowlist add: %d %s", add.status, add.body)
	}
	if a := send(x, 1); a.status != 403 || a.code(t) != "address_denied" {
		t.Fatalf("inside the time lock: %d %s", a.status, a.body)
	}
	// The quorum's addition needs no wait.
	p := q.propose(1, "allowlist_add", `{"key_id":"eth-dev","address":"`+y.Hex()+`"}`)
	q.approve(1, p["proposal_id"].(string), q.approval[0], p["digest"].(string))
	q.approve(2, p["proposal_id"].(string), q.approval[1], p["digest"].(string))
	if a := send(y, 2); a.status != 200 {
		t.Fatalf("quorum-added destination: %d %s", a.status, a.body)
	}
	// Wait the time lock out rather than polling: every refusal counts
	// toward the automatic freeze on bursts of denials.
	eff, err := time.Parse(time.RFC3339Nano, add.json(t)["effective_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(eff) + 100*time.Millisecond)
	if a := send(x, 3); a.status != 200 {
		t.Fatalf("after the time lock: %d %s", a.status, a.body)
	}
}
