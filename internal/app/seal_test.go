package app

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/store"
)

// flipOne changes one character of a share (not the separators).
func flipOne(s string, at int) string {
	b := []byte(s)
	for ; b[at] == '-'; at++ {
	}
	if b[at] == 'a' {
		b[at] = 'b'
	} else {
		b[at] = 'a'
	}
	return string(b)
}

// TestUnsealTransitions walks every seal transition through the API.
func TestUnsealTransitions(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	client, op := q.client("client"), q.client("operator")
	body := signBody(unsignedEIP1559(t, 1337, 0, common.HexToAddress("0x00000000000000000000000000000000000000a1"), big.NewInt(1)), "u1")

	// Sealed start: listens, answers health and status, refuses to sign.
	h := q.must(op, "GET", "/v1/health", nil)
	if h.status != 200 || h.json(t)["sealed"] != true || h.json(t)["status"] != "degraded" {
		t.Fatalf("sealed health: %d %s", h.status, h.body)
	}
	if st := q.must(op, "GET", "/v1/status", nil).json(t); st["sealed"] != true {
		t.Fatalf("status: %v", st)
	}
	if a := q.must(client, "POST", "/v1/sign", body); a.status != 503 || a.code(t) != "sealed" {
		t.Fatalf("sign while sealed: %d %s", a.status, a.body)
	}
	// Only officers submit shares.
	if a := q.must(client, "POST", "/v1/unseal", map[string]string{"share": q.shares[0]}); a.status != 403 {
		t.Fatalf("client submits a share: %d %s", a.status, a.body)
	}
	o1, o2 := q.client("officer1"), q.client("officer2")
	other, err := ceremony.NewCeremony(2, 3)
	if err != nil {
		t.Fatal(err)
	}
	other.Secret.Destroy()
	refusals := []struct{ name, share string }{
		{"one changed character", flipOne(q.shares[0], 30)},
		{"one changed character in the checksum", flipOne(q.shares[0], len(q.shares[0])-2)},
		{"another ceremony's share", other.Shares[0].Encode()},
		{"garbage", "hello"},
	}
	for _, r := range refusals {
		a := q.must(o1, "POST", "/v1/unseal", map[string]string{"share": r.share})
		if a.status != 422 || a.code(t) != "share_invalid" {
			t.Fatalf("%s: %d %s", r.name, a.status, a.body)
		}
	}
	// Below K: progress. A duplicate is refused and does not count.
	if a := q.unseal(1); a.json(t)["progress"].(float64) != 1 || a.json(t)["sealed"] != true {
		t.Fatalf("first share: %s", a.body)
	}
	if a := q.must(o2, "POST", "/v1/unseal", map[string]string{"share": q.shares[0]}); a.status != 422 || !strings.Contains(string(a.body), "duplicate") {
		t.Fatalf("duplicate share: %d %s", a.status, a.body)
	}
	// Mixed ceremonies: our share 1 plus the other ceremony's share 2.
	if a := q.must(o2, "POST", "/v1/unseal", map[string]string{"share": other.Shares[1].Encode()}); a.status != 422 {
		t.Fatalf("mixed ceremonies: %d %s", a.status, a.body)
	}
	// At K: unsealed, and signing works.
	if a := q.unseal(2); a.json(t)["sealed"] != false {
		t.Fatalf("at K: %s", a.body)
	}
	if a := q.must(client, "POST", "/v1/sign", body); a.status != 200 {
		t.Fatalf("sign after unseal: %d %s", a.status, a.body)
	}
	// Shares after unsealing change nothing.
	if a := q.must(q.client("officer3"), "POST", "/v1/unseal", map[string]string{"share": q.shares[2]}); a.status != 200 || a.json(t)["sealed"] != false {
		t.Fatalf("share while unsealed: %d %s", a.status, a.body)
	}
	// Every step was recorded, without share material.
	st, err := store.Open(context.Background(), q.cfg.Store.Path, q.log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	events, err := st.ListEvents(context.Background(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, ev := range events {
		kinds[ev.Kind]++
	}
	if kinds["unseal_share_refused"] < 5 || kinds["unseal_share"] != 1 || kinds["unseal"] != 1 || kinds["ceremony"] != 1 {
		t.Fatalf("events: %v", kinds)
	}
}

// TestWrongCombinationResetsProgress: a share forged with a valid checksum
// combines to the wrong secret; progress resets and the failure is recorded.
func TestWrongCombinationResetsProgress(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	forged, err := ceremony.ParseShare(q.shares[1])
	if err != nil {
		t.Fatal(err)
	}
	forged.Data = append([]byte(nil), forged.Data...)
	forged.Data[0] ^= 0xff
	q.unseal(1)
	a := q.must(q.client("officer2"), "POST", "/v1/unseal", map[string]string{"share": forged.Encode()})
	if a.status != 422 || !strings.Contains(string(a.body), "do not combine") {
		t.Fatalf("forged share: %d %s", a.status, a.body)
	}
	if st := q.must(q.client("operator"), "GET", "/v1/status", nil).json(t); st["sealed"] != true || st["seal"].(map[string]any)["progress"].(float64) != 0 {
		t.Fatalf("progress not reset: %v", st["seal"])
	}
	if a := q.unseal(2, 3); a.json(t)["sealed"] != false {
		t.Fatalf("real shares after a reset: %s", a.body)
	}
}

// TestFreezeDuringLoad: 200 concurrent clients signing, one freeze in the
// middle. No signature is produced (recorded or answered) after the freeze
// answers; requests not yet signed are refused "frozen".
func TestFreezeDuringLoad(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000a2")

	// 200 concurrent clients, five requests each in sequence, so the load
	// outlasts the freeze's own round trip. Connections are opened first so
	// the test measures signing and freezing, not TLS handshakes.
	const clients, each = 200, 5
	officer := q.client("officer3")
	q.must(officer, "GET", "/v1/status", nil)
	var warm sync.WaitGroup
	for i := 0; i < clients; i++ {
		warm.Add(1)
		go func() { defer warm.Done(); q.do(c, "GET", "/v1/health", nil) }()
	}
	warm.Wait()

	var wg sync.WaitGroup
	var mu sync.Mutex
	signed := map[string]bool{}
	var frozenAnswers, answered int
	fifth := make(chan struct{})
	start := make(chan struct{})
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for k := 0; k < each; k++ {
				n := uint64(w*each + k)
				a, err := q.do(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, n, to, big.NewInt(1)), fmt.Sprintf("f-%d", n)))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if answered++; answered == 5 {
					close(fifth)
				}
				stop := false
				switch {
				case a.status == 200:
					signed[a.json(t)["request_id"].(string)] = true
				case a.status == 503 && a.code(t) == "frozen":
					frozenAnswers++
					stop = true
				default:
					t.Errorf("unexpected answer %d %s", a.status, a.body)
				}
				mu.Unlock()
				if stop {
					return
				}
			}
		}()
	}
	close(start)
	<-fifth
	fr := q.must(officer, "POST", "/v1/freeze", map[string]string{"reason": "load drill"})
	frozeAt := time.Now()
	if fr.status != 200 || fr.json(t)["frozen"] != true {
		t.Fatalf("freeze: %d %s", fr.status, fr.body)
	}
	wg.Wait()
	st, err := store.Open(context.Background(), q.cfg.Store.Path, q.log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for id := range signed {
		r, err := st.GetRequest(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if !r.UpdatedAt.Before(frozeAt) {
			t.Errorf("request %s was signed at %s, after the freeze answered at %s", id, r.UpdatedAt, frozeAt)
		}
	}
	if n, _ := st.CountRequests(context.Background(), store.StateSigned); n != len(signed) {
		t.Errorf("%d signed records, %d signed answers", n, len(signed))
	}
	t.Logf("%d signed before the freeze, %d refused frozen", len(signed), frozenAnswers)
	if frozenAnswers == 0 || len(signed) == 0 {
		t.Fatalf("the freeze must land during the load: %d signed, %d frozen", len(signed), frozenAnswers)
	}
	// HSM sessions are closed: the appliance is sealed as well as frozen.
	if h := q.must(q.client("operator"), "GET", "/v1/health", nil).json(t); h["frozen"] != true || h["sealed"] != true {
		t.Fatalf("after freeze: %v", h)
	}
}

// TestRestartStates: an unsealed appliance restarts sealed; a frozen one
// restarts frozen, and cannot be unsealed until the quorum unfreezes it.
func TestRestartStates(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	q.stop()
	q.start()
	if h := q.must(q.client("operator"), "GET", "/v1/health", nil).json(t); h["sealed"] != true || h["frozen"] != false {
		t.Fatalf("restart after unseal: %v", h)
	}
	q.unseal(2, 3)
	if a := q.must(q.client("officer1"), "POST", "/v1/freeze", map[string]string{"reason": "restart drill"}); a.status != 200 {
		t.Fatalf("freeze: %d %s", a.status, a.body)
	}
	q.stop()
	q.start()
	if h := q.must(q.client("operator"), "GET", "/v1/health", nil).json(t); h["sealed"] != true || h["frozen"] != true {
		t.Fatalf("restart while frozen: %v", h)
	}
	a := q.must(q.client("officer1"), "POST", "/v1/unseal", map[string]string{"share": q.shares[0]})
	if a.status != 503 || a.code(t) != "frozen" {
		t.Fatalf("unseal while frozen: %d %s", a.status, a.body)
	}
}

// approve signs a proposal's digest with an approval key and posts it.
func (q *quorumEnv) approve(officer int, id string, key ed25519.PrivateKey, digestHex string) answer {
	q.t.Helper()
	digest, err := hex.DecodeString(digestHex)
	if err != nil {
		q.t.Fatal(err)
	}
	sig := ed25519.Sign(key, digest)
	return q.must(q.client(fmt.Sprintf("officer%d", officer)), "POST", "/v1/proposals/"+id+"/approvals",
		map[string]string{"signature": base64.StdEncoding.EncodeToString(sig)})
}

func (q *quorumEnv) propose(officer int, kind, params string) map[string]any {
	q.t.Helper()
	a := q.must(q.client(fmt.Sprintf("officer%d", officer)), "POST", "/v1/proposals", []byte(`{"kind":"`+kind+`","params":`+params+`}`))
	if a.status != http.StatusAccepted {
		q.t.Fatalf("propose %s: %d %s", kind, a.status, a.body)
	}
	return a.json(q.t)
}

// TestProposalApprovals: forged, replayed, duplicated and expired approvals
// do not execute a proposal; K valid ones do, once.
func TestProposalApprovals(t *testing.T) {
	q := newQuorumEnv(t, "seal: {proposal_ttl: 3s}\n")
	q.start()
	q.unseal(1, 2)
	if a := q.must(q.client("officer1"), "POST", "/v1/freeze", map[string]string{"reason": "governance drill"}); a.status != 200 {
		t.Fatal(a.status)
	}
	p := q.propose(1, "unfreeze", `{"reason":"drill done"}`)
	other := q.propose(2, "unfreeze", `{"reason":"another"}`)
	id, digest := p["proposal_id"].(string), p["digest"].(string)

	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name    string
		officer int
		key     ed25519.PrivateKey
		digest  string
		status  int
		code    string
	}{
		{"forged: a key that is not officer1's", 1, stranger, digest, 422, "approval_invalid"},
		{"officer2 signing with officer1's key", 2, q.approval[0], digest, 422, "approval_invalid"},
		{"replayed from another proposal", 1, q.approval[0], other["digest"].(string), 422, "approval_invalid"},
	}
	for _, tc := range cases {
		a := q.approve(tc.officer, id, tc.key, tc.digest)
		if a.status != tc.status || a.code(t) != tc.code {
			t.Fatalf("%s: %d %s", tc.name, a.status, a.body)
		}
	}
	if a := q.approve(1, id, q.approval[0], digest); a.status != 200 || a.json(t)["state"] != "pending" {
		t.Fatalf("first valid approval: %d %s", a.status, a.body)
	}
	if a := q.approve(1, id, q.approval[0], digest); a.status != 409 || a.code(t) != "duplicate_approval" {
		t.Fatalf("duplicate: %d %s", a.status, a.body)
	}
	// A non-officer cannot approve at all.
	if a := q.must(q.client("client"), "POST", "/v1/proposals/"+id+"/approvals", map[string]string{"signature": "AA=="}); a.status != 403 {
		t.Fatalf("client approves: %d", a.status)
	}
	if h := q.must(q.client("operator"), "GET", "/v1/health", nil).json(t); h["frozen"] != true {
		t.Fatal("one approval unfroze the appliance")
	}
	a := q.approve(3, id, q.approval[2], digest)
	if a.status != 200 || a.json(t)["state"] != "executed" {
		t.Fatalf("second valid approval: %d %s", a.status, a.body)
	}
	if h := q.must(q.client("operator"), "GET", "/v1/health", nil).json(t); h["frozen"] != false || h["sealed"] != true {
		t.Fatalf("after unfreeze: %v", h)
	}
	// The executed proposal takes no more approvals.
	if a := q.approve(2, id, q.approval[1], digest); a.status != 409 {
		t.Fatalf("approval after execution: %d %s", a.status, a.body)
	}
	// Expiry: the other proposal outlives its TTL and cannot be approved.
	time.Sleep(3100 * time.Millisecond)
	oid := other["proposal_id"].(string)
	if a := q.approve(1, oid, q.approval[0], other["digest"].(string)); a.status != 409 || a.code(t) != "expired" {
		t.Fatalf("expired proposal: %d %s", a.status, a.body)
	}
}

// TestGovernanceCreatesAndGrantsKeys: key creation and grants go through
// the quorum on a running appliance.
func TestGovernanceCreatesAndGrantsKeys(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	p := q.propose(1, "create_key", `{"id":"eth-treasury","chain":"ethereum","network":"1337"}`)
	q.approve(1, p["proposal_id"].(string), q.approval[0], p["digest"].(string))
	if a := q.approve(2, p["proposal_id"].(string), q.approval[1], p["digest"].(string)); a.json(t)["state"] != "executed" {
		t.Fatalf("create_key: %s", a.body)
	}
	body := signBody(unsignedEIP1559(t, 1337, 0, common.HexToAddress("0x00000000000000000000000000000000000000a3"), big.NewInt(1)), "g1")
	body["key_id"] = "eth-treasury"
	if a := q.must(q.client("client"), "POST", "/v1/sign", body); a.status != 403 {
		t.Fatalf("ungranted key: %d %s", a.status, a.body)
	}
	g := q.propose(3, "grant_key", `{"principal":"`+testPrincipalPrefix+`client","key_id":"eth-treasury"}`)
	q.approve(3, g["proposal_id"].(string), q.approval[2], g["digest"].(string))
	if a := q.approve(2, g["proposal_id"].(string), q.approval[1], g["digest"].(string)); a.json(t)["state"] != "executed" {
		t.Fatalf("grant_key: %s", a.body)
	}
	if a := q.must(q.client("client"), "POST", "/v1/sign", body); a.status != 200 {
		t.Fatalf("granted key: %d %s", a.status, a.body)
	}
}

// TestAutomaticFreezeOnDenialBurst: a principal collecting refusals in a
// burst freezes the appliance by itself.
func TestAutomaticFreezeOnDenialBurst(t *testing.T) {
	q := newQuorumEnv(t, "freeze: {after_denials: 5, denial_window: 1m}\n")
	q.start()
	q.unseal(1, 2)
	body := signBody(unsignedEIP1559(t, 1337, 0, common.HexToAddress("0x00000000000000000000000000000000000000a5"), big.NewInt(1)), "d")
	body["key_id"] = "someone-elses-key"
	c := q.client("officer1") // an officer has no client role: every sign is 403
	for i := 0; i < 5; i++ {
		if a := q.must(c, "POST", "/v1/sign", body); a.status != 403 {
			t.Fatalf("denial %d: %d %s", i, a.status, a.body)
		}
	}
	waitFor(t, 5*time.Second, "automatic freeze", func() bool {
		h := q.must(q.client("operator"), "GET", "/v1/status", nil).json(t)
		return h["frozen"] == true && strings.Contains(h["seal"].(map[string]any)["frozen_reason"].(string), "5 denials of "+testPrincipalPrefix+"officer1")
	})
	if a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, common.HexToAddress("0x00000000000000000000000000000000000000a5"), big.NewInt(1)), "d2")); a.code(t) != "frozen" {
		t.Fatalf("sign after the automatic freeze: %d %s", a.status, a.body)
	}
}
