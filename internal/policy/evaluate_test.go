package policy

import (
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"
)

// step is one request of a case, decided at t0+at.
type step struct {
	at        time.Duration
	principal string // "" = "client-a"
	intent    Intent
	want      Outcome
	code      string        // for Deny
	rule      string        // substring of Decision.Rule
	retry     time.Duration // expected RetryAfter (rate_limited)
	approvals int           // expected M (NeedsApproval)
}

type allowEntry struct {
	addr string
	eff  time.Duration // effective at t0+eff
}

func TestEvaluateRules(t *testing.T) {
	btc := func(fee string, rate float64, outs ...string) Intent {
		in := Intent{Chain: ChainBitcoin, Kind: KindTransfer, FeeRate: rate, Fee: amt(fee)}
		for i, o := range outs {
			in.Transfers = append(in.Transfers, Transfer{Asset: "BTC", To: fmt.Sprintf("bc1qdest%d", i), Amount: amt(o)})
		}
		return in
	}
	ethFee := func(maxFee, prio string) Intent {
		in := ethTransfer(alice, "1")
		in.MaxFeePerGas, in.MaxPriorityFeePerGas = amt(maxFee), amt(prio)
		return in
	}
	call := func(contract, selector string) Intent {
		return Intent{Chain: ChainEthereum, Kind: KindContractCall, Contract: contract, Selector: selector,
			Transfers: []Transfer{{Asset: "ETH", To: contract, Amount: big.NewInt(0)}}}
	}
	const sel = "0xa9059cbb"
	cases := []struct {
		name  string
		rules Rules
		allow []allowEntry
		steps []step
	}{
		{"per-tx max native", Rules{PerTxMax: map[string]string{"ETH": "100"}}, nil, []step{
			{intent: ethTransfer(alice, "100"), want: Allow},
			{intent: ethTransfer(alice, "101"), want: Deny, code: CodeLimitExceeded, rule: "per_tx_max ETH 100"},
		}},
		{"per-tx max token, contract compared case-insensitively", Rules{PerTxMax: map[string]string{usdc: "5"}}, nil, []step{
			{intent: tokenTransfer(strings.ToLower(usdc), alice, "5"), want: Allow},
			{intent: tokenTransfer(strings.ToUpper("0x"+usdc[2:]), alice, "6"), want: Deny, code: CodeLimitExceeded, rule: "per_tx_max " + usdc},
			{intent: ethTransfer(alice, "1000000"), want: Allow}, // other asset unlimited
		}},
		{"per-tx max sums every output of a transaction", Rules{PerTxMax: map[string]string{"BTC": "10"}}, nil, []step{
			{intent: btc("100", 1, "5", "5"), want: Allow},
			{intent: btc("100", 1, "5", "6"), want: Deny, code: CodeLimitExceeded, rule: "per_tx_max BTC 10"},
		}},
		{"window exact at the boundary, older usage leaves", Rules{Windows: []Window{{"ETH", "1h", "50"}}}, nil, []step{
			{at: 0, intent: ethTransfer(alice, "30"), want: Allow},
			{at: 10 * time.Minute, intent: ethTransfer(alice, "20"), want: Allow}, // 50 == max
			{at: 20 * time.Minute, intent: ethTransfer(alice, "1"), want: Deny, code: CodeLimitExceeded, rule: "windows[0] ETH 1h max 50"},
			{at: time.Hour - 1, intent: ethTransfer(alice, "1"), want: Deny, code: CodeLimitExceeded},
			{at: time.Hour, intent: ethTransfer(alice, "30"), want: Allow}, // the 30 at t0 is exactly 1h old: out
			{at: time.Hour + time.Minute, intent: ethTransfer(alice, "1"), want: Deny, code: CodeLimitExceeded},
			{at: time.Hour + 10*time.Minute, intent: ethTransfer(alice, "20"), want: Allow}, // the 20 left
		}},
		{"two windows, rolling not reset at midnight", Rules{Windows: []Window{{"eth", "1h", "10"}, {"ETH", "24h", "15"}}}, nil, []step{
			{at: 23 * time.Hour, intent: ethTransfer(alice, "10"), want: Allow},
			{at: 23*time.Hour + 30*time.Minute, intent: ethTransfer(alice, "1"), want: Deny, code: CodeLimitExceeded, rule: "windows[0]"},
			{at: 25 * time.Hour, intent: ethTransfer(alice, "5"), want: Allow},
			{at: 27 * time.Hour, intent: ethTransfer(alice, "1"), want: Deny, code: CodeLimitExceeded, rule: "windows[1] ETH 24h max 15"},
			{at: 47 * time.Hour, intent: ethTransfer(alice, "10"), want: Allow}, // the 10 at 23h has left the 24h window
		}},
		{"window on a token", Rules{Windows: []Window{{usdc, "1h", "7"}}}, nil, []step{
			{intent: tokenTransfer(usdc, alice, "7"), want: Allow},
			{intent: tokenTransfer(strings.ToLower(usdc), bob, "1"), want: Deny, code: CodeLimitExceeded, rule: "windows[0]"},
			{intent: ethTransfer(alice, "99"), want: Allow},
		}},
		{"ethereum fee caps", Rules{MaxFeePerGas: "100", MaxPriorityFeePerGas: "2"}, nil, []step{
			{intent: ethFee("100", "2"), want: Allow},
			{intent: ethFee("101", "2"), want: Deny, code: CodePolicyDenied, rule: "max_fee_per_gas 100"},
			{intent: ethFee("100", "3"), want: Deny, code: CodePolicyDenied, rule: "max_priority_fee_per_gas 2"},
			{intent: Intent{Chain: ChainEthereum, Kind: KindTransfer}, want: Deny, code: CodePolicyDenied, rule: "max_fee_per_gas"},
		}},
		{"bitcoin fee caps", Rules{MaxFeeRate: 50, MaxFee: "10000"}, nil, []step{
			{intent: btc("10000", 50, "1"), want: Allow},
			{intent: btc("100", 50.5, "1"), want: Deny, code: CodePolicyDenied, rule: "max_fee_rate 50"},
			{intent: btc("10001", 1, "1"), want: Deny, code: CodePolicyDenied, rule: "max_fee 10000"},
		}},
		{"contract calls refused unless listed", Rules{}, nil, []step{
			{intent: call(usdc, sel), want: Deny, code: CodePolicyDenied, rule: "contracts"},
			{intent: Intent{Chain: ChainEthereum, Kind: KindContractCreation}, want: Deny, code: CodePolicyDenied, rule: "contracts"},
			{intent: ethTransfer(alice, "1"), want: Allow},
		}},
		{"contract calls per contract and selector", Rules{Contracts: map[string][]string{
			usdc: {"0xA9059CBB"}, bob: {},
		}}, nil, []step{
			{intent: call(strings.ToLower(usdc), sel), want: Allow},
			{intent: call(usdc, "0x095ea7b3"), want: Deny, code: CodePolicyDenied, rule: "contracts[" + strings.ToLower(usdc) + "]"},
			{intent: call(bob, "0xdeadbeef"), want: Allow}, // empty list: any selector
			{intent: call(alice, sel), want: Deny, code: CodePolicyDenied, rule: "contracts"},
		}},
		{"allowlist mode with time lock and quorum addition", Rules{Allowlist: true, AllowlistDelay: "24h"},
			[]allowEntry{{alice, 24 * time.Hour}, {strings.ToUpper("0x" + bob[2:]), 0}}, []step{
				{at: 0, intent: ethTransfer(alice, "1"), want: Deny, code: CodeAddressDenied, rule: "allowlist"},
				{at: 24*time.Hour - time.Second, intent: ethTransfer(alice, "1"), want: Deny, code: CodeAddressDenied},
				{at: 24 * time.Hour, intent: ethTransfer(alice, "1"), want: Allow},
				{at: 0, intent: ethTransfer(bob, "1"), want: Allow}, // quorum-added: effective at once
				{at: 0, intent: ethTransfer("0x3333333333333333333333333333333333333333", "1"), want: Deny, code: CodeAddressDenied},
			}},
		{"approval above a value", Rules{ApprovalAbove: map[string]string{"ETH": "10"}, Approvals: 2}, nil, []step{
			{intent: ethTransfer(alice, "10"), want: Allow},
			{intent: ethTransfer(alice, "11"), want: NeedsApproval, approvals: 2, rule: "approval_above ETH 10"},
		}},
		{"approval for a destination not on the allowlist", Rules{ApprovalForNonAllowlisted: true, Approvals: 3},
			[]allowEntry{{alice, 0}}, []step{
				{intent: ethTransfer(alice, "1"), want: Allow},
				{intent: ethTransfer(bob, "1"), want: NeedsApproval, approvals: 3, rule: "approval_for_non_allowlisted"},
			}},
		{"approval for any contract call", Rules{Contracts: map[string][]string{usdc: nil}, ApprovalForContractCalls: true, Approvals: 2}, nil, []step{
			{intent: call(usdc, sel), want: NeedsApproval, approvals: 2, rule: "approval_for_contract_calls"},
			{intent: tokenTransfer(usdc, alice, "1"), want: Allow}, // a token transfer is not a contract call
		}},
		{"denial beats approval", Rules{PerTxMax: map[string]string{"ETH": "20"}, ApprovalAbove: map[string]string{"ETH": "10"}, Approvals: 2}, nil, []step{
			{intent: ethTransfer(alice, "21"), want: Deny, code: CodeLimitExceeded},
		}},
		{"rate per client: burst, 429 with Retry-After, refill", Rules{RatePerClient: &Rate{PerSecond: 1, Burst: 3}}, nil, []step{
			{intent: ethTransfer(alice, "1"), want: Allow},
			{intent: ethTransfer(alice, "1"), want: Allow},
			{intent: ethTransfer(alice, "1"), want: Allow},
			{intent: ethTransfer(alice, "1"), want: Deny, code: CodeRateLimited, rule: "rate_per_client", retry: time.Second},
			{at: 500 * time.Millisecond, intent: ethTransfer(alice, "1"), want: Deny, code: CodeRateLimited, retry: 500 * time.Millisecond},
			{at: 0, principal: "client-b", intent: ethTransfer(alice, "1"), want: Allow}, // its own bucket
			{at: time.Second, intent: ethTransfer(alice, "1"), want: Allow},
			{at: time.Second, intent: ethTransfer(alice, "1"), want: Deny, code: CodeRateLimited},
			{at: 10 * time.Second, intent: ethTransfer(alice, "1"), want: Allow}, // refilled to burst, not beyond
			{at: 10 * time.Second, intent: ethTransfer(alice, "1"), want: Allow},
			{at: 10 * time.Second, intent: ethTransfer(alice, "1"), want: Allow},
			{at: 10 * time.Second, intent: ethTransfer(alice, "1"), want: Deny, code: CodeRateLimited},
		}},
		{"rate per key across clients", Rules{RatePerKey: &Rate{PerSecond: 0.5, Burst: 2}}, nil, []step{
			{principal: "a", intent: ethTransfer(alice, "1"), want: Allow},
			{principal: "b", intent: ethTransfer(alice, "1"), want: Allow},
			{principal: "c", intent: ethTransfer(alice, "1"), want: Deny, code: CodeRateLimited, rule: "rate_per_key", retry: 2 * time.Second},
			{at: 2 * time.Second, principal: "c", intent: ethTransfer(alice, "1"), want: Allow},
		}},
		{"denied requests take no tokens", Rules{RatePerClient: &Rate{PerSecond: 0.001, Burst: 1}, PerTxMax: map[string]string{"ETH": "1"}}, nil, []step{
			{intent: ethTransfer(alice, "2"), want: Deny, code: CodeLimitExceeded},
			{intent: ethTransfer(alice, "2"), want: Deny, code: CodeLimitExceeded},
			{intent: ethTransfer(alice, "1"), want: Allow},
			{intent: ethTransfer(alice, "1"), want: Deny, code: CodeRateLimited},
		}},
	}
	s, _ := newStore(t)
	e := newEngine(t)
	for ci, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("key-%02d", ci)
			addKey(t, s, key)
			setRules(t, s, key, tc.rules)
			for _, a := range tc.allow {
				addAllow(t, s, key, a.addr, t0.Add(a.eff))
			}
			for i, st := range tc.steps {
				p := st.principal
				if p == "" {
					p = "client-a"
				}
				d := evaluate(t, s, e, Request{KeyID: key, Principal: p, RequestID: reqID(key, i), Intent: st.intent, Now: t0.Add(st.at)})
				if d.Outcome != st.want || d.Code != st.code || !strings.Contains(d.Rule, st.rule) ||
					(st.retry != 0 && d.RetryAfter != st.retry) || (d.Code == CodeRateLimited) != (d.RetryAfter > 0) || d.Approvals != st.approvals || d.Version != 1 {
					t.Fatalf("step %d: got %+v; want outcome %v code %q rule ~%q retry %v approvals %d",
						i, d, st.want, st.code, st.rule, st.retry, st.approvals)
				}
				if d.Outcome == Deny && (!strings.Contains(d.Message, d.Rule) || !strings.HasPrefix(d.Message, d.Code)) {
					t.Fatalf("step %d: message %q does not carry code %q and rule %q", i, d.Message, d.Code, d.Rule)
				}
			}
		})
	}
}
