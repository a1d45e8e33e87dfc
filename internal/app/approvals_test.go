package app

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
)

var tenETH = new(big.Int).Exp(big.NewInt(10), big.NewInt(19), nil)

func eth(n int64) *big.Int {
	return new(big.Int).Mul(big.NewInt(n), new(big.Int).Div(tenETH, big.NewInt(10)))
}

// approveRequest signs a request's digest (hex) with key and posts it as officer n.
func (q *quorumEnv) approveRequest(n int, id string, key ed25519.PrivateKey, digestHex string) answer {
	q.t.Helper()
	d, err := hex.DecodeString(digestHex)
	if err != nil {
		q.t.Fatal(err)
	}
	return q.must(q.client("officer"+string(rune('0'+n))), "POST", "/v1/requests/"+id+"/approvals",
		map[string]string{"signature": base64.StdEncoding.EncodeToString(ed25519.Sign(key, d))})
}

// TestTransactionApprovals: a transfer above the policy's threshold waits
// for 2-of-3 officer approvals. Approvals for another request, forged or
// duplicated ones do not count; two valid ones sign it, once.
func TestTransactionApprovals(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"approval_above":{"ETH":"10000000000000000000"},"approvals":2}`)
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000e1")

	small := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, eth(5)), "small"))
	if small.status != 200 {
		t.Fatalf("5 ETH: %d %s", small.status, small.body)
	}
	bodyA := signBody(unsignedEIP1559(t, 1337, 1, to, eth(20)), "big-a")
	a := q.must(c, "POST", "/v1/sign", bodyA)
	b := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 2, to, eth(20)), "big-b"))
	for _, r := range []answer{a, b} {
		m := r.json(t)
		if r.status != http.StatusAccepted || m["state"] != "pending_approval" || m["approvals_required"].(float64) != 2 || len(m["digest"].(string)) != 64 {
			t.Fatalf("20 ETH: %d %s", r.status, r.body)
		}
	}
	idA, digestA := a.json(t)["request_id"].(string), a.json(t)["digest"].(string)
	idB, digestB := b.json(t)["request_id"].(string), b.json(t)["digest"].(string)

	// The client cannot approve; an approval for A posted on B; a forged one.
	if r := q.must(c, "POST", "/v1/requests/"+idA+"/approvals", map[string]string{"signature": "AA=="}); r.status != 403 {
		t.Fatalf("client approves: %d", r.status)
	}
	if r := q.approveRequest(1, idB, q.approval[0], digestA); r.status != 422 || r.code(t) != "approval_invalid" {
		t.Fatalf("A's approval on B: %d %s", r.status, r.body)
	}
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	if r := q.approveRequest(1, idA, stranger, digestA); r.status != 422 {
		t.Fatalf("forged: %d %s", r.status, r.body)
	}
	if r := q.approveRequest(1, idA, q.approval[0], digestA); r.status != 200 || r.json(t)["state"] != "pending_approval" {
		t.Fatalf("first approval: %d %s", r.status, r.body)
	}
	if r := q.approveRequest(1, idA, q.approval[0], digestA); r.status != 409 || r.code(t) != "duplicate_approval" {
		t.Fatalf("duplicate: %d %s", r.status, r.body)
	}
	// Officers see what is pending, with the decoded intent.
	list := q.must(q.client("officer3"), "GET", "/v1/requests?state=pending_approval", nil)
	if list.status != 200 || !strings.Contains(string(list.body), idA) || !strings.Contains(string(list.body), idB) || !strings.Contains(string(list.body), `"value":"20000000000000000000"`) {
		t.Fatalf("pending list: %d %s", list.status, list.body)
	}
	// The requester long-polls while the second officer approves.
	polled := make(chan answer, 1)
	go func() {
		a, _ := q.do(c, "GET", "/v1/requests/"+idA+"?wait=20s", nil)
		polled <- a
	}()
	time.Sleep(300 * time.Millisecond)
	r := q.approveRequest(2, idA, q.approval[1], digestA)
	if r.status != 200 || r.json(t)["state"] != "signed" {
		t.Fatalf("second approval: %d %s", r.status, r.body)
	}
	raw, _ := hex.DecodeString(strings.TrimPrefix(r.json(t)["signed_tx"].(string), "0x"))
	tx := new(types.Transaction)
	if err := tx.UnmarshalBinary(raw); err != nil || tx.Value().Cmp(eth(20)) != 0 {
		t.Fatalf("signed tx: %v %v", err, tx.Value())
	}
	if p := <-polled; p.status != 200 || p.json(t)["state"] != "signed" || p.json(t)["signed_tx"] != r.json(t)["signed_tx"] {
		t.Fatalf("long-poll: %d %s", p.status, p.body)
	}
	// The requester's retry with its idempotency key gets the same signature.
	again := q.must(c, "POST", "/v1/sign", bodyA)
	if again.status != 200 || again.json(t)["signed_tx"] != r.json(t)["signed_tx"] {
		t.Fatalf("replay after approval: %d %s", again.status, again.body)
	}
	// One rejection ends B; it cannot be approved afterwards.
	if rj := q.must(q.client("officer3"), "POST", "/v1/requests/"+idB+"/rejections", map[string]string{"reason": "not expected"}); rj.status != 200 || rj.json(t)["state"] != "rejected" {
		t.Fatalf("reject: %d %s", rj.status, rj.body)
	}
	if r := q.approveRequest(2, idB, q.approval[1], digestB); r.status != 409 {
		t.Fatalf("approval after rejection: %d %s", r.status, r.body)
	}
}

// TestApprovedRequestRecheckedAgainstPolicy: limits may move while a request
// waits; at quorum it is evaluated again and denied.
func TestApprovedRequestRecheckedAgainstPolicy(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"approval_above":{"ETH":"10000000000000000000"},"approvals":2,"windows":[{"asset":"ETH","duration":"24h","max":"30000000000000000000"}]}`)
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000e2")
	p := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, eth(20)), "c"))
	if p.status != http.StatusAccepted {
		t.Fatalf("20 ETH: %d %s", p.status, p.body)
	}
	// Meanwhile the quorum tightens the window below the pending amount.
	q.setPolicy(`{"approval_above":{"ETH":"10000000000000000000"},"approvals":2,"windows":[{"asset":"ETH","duration":"24h","max":"15000000000000000000"}]}`)
	id, digest := p.json(t)["request_id"].(string), p.json(t)["digest"].(string)
	q.approveRequest(1, id, q.approval[0], digest)
	r := q.approveRequest(3, id, q.approval[2], digest)
	m := r.json(t)
	if r.status != 200 || m["state"] != "denied" || m["error"].(map[string]any)["code"] != "limit_exceeded" || m["signed_tx"] != nil {
		t.Fatalf("re-check at quorum: %d %s", r.status, r.body)
	}
}

// TestRequestApprovalLimits: the requester cannot approve its own request,
// even holding the officer role; approvals end with the request's expiry.
func TestRequestApprovalLimits(t *testing.T) {
	q := newQuorumEnv(t, "seal: {proposal_ttl: 3s}\n")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"approval_above":{"ETH":"10000000000000000000"},"approvals":2}`)
	// officer1 also becomes a client of eth-dev, by quorum.
	p := q.propose(2, "add_principal", `{"name":"`+testPrincipalPrefix+`officer1","roles":["officer","client"],"keys":["eth-dev"]}`)
	q.approve(2, p["proposal_id"].(string), q.approval[1], p["digest"].(string))
	q.approve(3, p["proposal_id"].(string), q.approval[2], p["digest"].(string))
	to := common.HexToAddress("0x00000000000000000000000000000000000000e3")
	own := q.must(q.client("officer1"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, eth(20)), "own"))
	if own.status != http.StatusAccepted {
		t.Fatalf("officer1 as client: %d %s", own.status, own.body)
	}
	if r := q.approveRequest(1, own.json(t)["request_id"].(string), q.approval[0], own.json(t)["digest"].(string)); r.status != 403 {
		t.Fatalf("requester approves its own request: %d %s", r.status, r.body)
	}
	// Expiry: the request outlives its approval window.
	late := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 1, to, eth(20)), "late"))
	time.Sleep(3100 * time.Millisecond)
	r := q.approveRequest(2, late.json(t)["request_id"].(string), q.approval[1], late.json(t)["digest"].(string))
	if r.status != 409 || r.code(t) != "expired" {
		t.Fatalf("approval after expiry: %d %s", r.status, r.body)
	}
	if g := q.must(q.client("client"), "GET", "/v1/requests/"+late.json(t)["request_id"].(string), nil); g.json(t)["state"] != "expired" {
		t.Fatalf("expired request: %s", g.body)
	}
}

// TestRejectionsToEnd: with seal.rejections_to_end 2, one rejection leaves
// the request pending, a repeated one from the same officer does not count,
// and a second officer's ends it.
func TestRejectionsToEnd(t *testing.T) {
	q := newQuorumEnv(t, "seal: {rejections_to_end: 2}\n")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"approval_above":{"ETH":"10000000000000000000"},"approvals":2}`)
	a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, common.HexToAddress("0x00000000000000000000000000000000000000e4"), eth(20)), "rj"))
	id := a.json(t)["request_id"].(string)
	reject := func(n int) answer {
		return q.must(q.client("officer"+string(rune('0'+n))), "POST", "/v1/requests/"+id+"/rejections", map[string]string{"reason": "no"})
	}
	if r := reject(1); r.status != 200 || r.json(t)["state"] != "pending_approval" {
		t.Fatalf("first rejection: %d %s", r.status, r.body)
	}
	if r := reject(1); r.status != 409 {
		t.Fatalf("same officer again: %d %s", r.status, r.body)
	}
	if r := reject(3); r.status != 200 || r.json(t)["state"] != "rejected" {
		t.Fatalf("second officer: %d %s", r.status, r.body)
	}
}
