package policy

import (
	"context"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

const (
	usageRows  = `SELECT COUNT(*) FROM policy_usage`
	bucketRows = `SELECT COUNT(*) FROM policy_buckets`
)

func TestDryRunAndDenyRecordNothing(t *testing.T) {
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	setRules(t, s, "k", Rules{Windows: []Window{{"ETH", "1h", "10"}}, RatePerClient: &Rate{PerSecond: 1, Burst: 5},
		RatePerKey: &Rate{PerSecond: 1, Burst: 5}})
	ctx := context.Background()

	var d Decision
	err := s.WriteTx(ctx, func(tx *store.Tx) error {
		var err error
		d, err = e.DryRun(ctx, tx, Request{KeyID: "k", Principal: "p", RequestID: "r1", Intent: ethTransfer(alice, "10"), Now: t0})
		return err
	})
	if err != nil || d.Outcome != Allow {
		t.Fatalf("DryRun = %+v, %v", d, err)
	}
	if n, b := count(t, s, usageRows), count(t, s, bucketRows); n != 0 || b != 0 {
		t.Fatalf("DryRun recorded %d usage rows, %d buckets", n, b)
	}
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r2", Intent: ethTransfer(alice, "11"), Now: t0}); d.Code != CodeLimitExceeded {
		t.Fatalf("11 > 10: %+v", d)
	}
	if n, b := count(t, s, usageRows), count(t, s, bucketRows); n != 0 || b != 0 {
		t.Fatalf("Deny recorded %d usage rows, %d buckets", n, b)
	}
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r3", Intent: ethTransfer(alice, "10"), Now: t0}); d.Outcome != Allow {
		t.Fatalf("10 ≤ 10: %+v", d)
	}
	if n, b := count(t, s, usageRows), count(t, s, bucketRows); n != 1 || b != 2 {
		t.Fatalf("Allow recorded %d usage rows, %d buckets; want 1, 2", n, b)
	}
	// A dry run now sees the recorded usage.
	err = s.WriteTx(ctx, func(tx *store.Tx) error {
		var err error
		d, err = e.DryRun(ctx, tx, Request{KeyID: "k", Principal: "p", Intent: ethTransfer(alice, "1"), Now: t0})
		return err
	})
	if err != nil || d.Code != CodeLimitExceeded {
		t.Fatalf("DryRun after usage = %+v, %v", d, err)
	}
}

func TestPendingApprovalCountsUntilReleased(t *testing.T) {
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	setRules(t, s, "k", Rules{Windows: []Window{{"ETH", "24h", "100"}}, ApprovalAbove: map[string]string{"ETH": "50"}, Approvals: 2})

	d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "big", Intent: ethTransfer(alice, "80"), Now: t0})
	if d.Outcome != NeedsApproval || d.Approvals != 2 {
		t.Fatalf("80 > 50: %+v", d)
	}
	// The pending 80 counts: 80 + 21 > 100.
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r2", Intent: ethTransfer(alice, "21"), Now: t0.Add(time.Minute)}); d.Code != CodeLimitExceeded {
		t.Fatalf("pending usage ignored: %+v", d)
	}
	// The approval is rejected: release frees the window.
	err := s.WriteTx(context.Background(), func(tx *store.Tx) error {
		if err := e.Release(context.Background(), tx, "big"); err != nil {
			return err
		}
		return e.Release(context.Background(), tx, "big") // idempotent
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r3", Intent: ethTransfer(alice, "21"), Now: t0.Add(time.Minute)}); d.Outcome != Allow {
		t.Fatalf("after Release: %+v", d)
	}
}

func TestKeyWithoutRules(t *testing.T) {
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	huge := new(big.Int).Lsh(big.NewInt(1), 255)
	in := ethTransfer(alice, huge.String())
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r1", Intent: in, Now: t0}); d.Outcome != Allow || d.Version != 0 {
		t.Fatalf("no rules, transfer: %+v", d)
	}
	call := Intent{Chain: ChainEthereum, Kind: KindContractCall, Contract: usdc, Selector: "0xa9059cbb"}
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r2", Intent: call, Now: t0}); d.Code != CodePolicyDenied {
		t.Fatalf("no rules, contract call: %+v", d)
	}
}

func TestMalformedRequestIsAnErrorNotADecision(t *testing.T) {
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	good := ethTransfer(alice, "1")
	cases := map[string]Request{
		"no request id":   {KeyID: "k", Intent: good},
		"no key":          {RequestID: "r", Intent: good},
		"unknown kind":    {KeyID: "k", RequestID: "r", Intent: Intent{Kind: "mint"}},
		"nil amount":      {KeyID: "k", RequestID: "r", Intent: Intent{Kind: KindTransfer, Transfers: []Transfer{{Asset: "ETH", To: alice}}}},
		"negative amount": {KeyID: "k", RequestID: "r", Intent: Intent{Kind: KindTransfer, Transfers: []Transfer{{Asset: "ETH", To: alice, Amount: big.NewInt(-1)}}}},
		"no asset":        {KeyID: "k", RequestID: "r", Intent: Intent{Kind: KindTransfer, Transfers: []Transfer{{To: alice, Amount: big.NewInt(1)}}}},
		"negative fee":    {KeyID: "k", RequestID: "r", Intent: Intent{Kind: KindTransfer, Fee: big.NewInt(-1)}},
		"NaN fee rate":    {KeyID: "k", RequestID: "r", Intent: Intent{Kind: KindTransfer, FeeRate: nan()}},
	}
	for name, req := range cases {
		err := s.WriteTx(context.Background(), func(tx *store.Tx) error {
			_, err := e.Evaluate(context.Background(), tx, req)
			return err
		})
		if !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: err = %v; want ErrInvalidRequest", name, err)
		}
	}
}

func nan() float64 { zero := 0.0; return zero / zero }

func TestRulesVersions(t *testing.T) {
	s, _ := newStore(t)
	addKey(t, s, "k")
	ctx := context.Background()
	v1 := setRules(t, s, "k", Rules{PerTxMax: map[string]string{"ETH": "1"}})
	v2 := setRules(t, s, "k", Rules{PerTxMax: map[string]string{"ETH": "2"}})
	if v1 != 1 || v2 != 2 {
		t.Fatalf("versions %d, %d; want 1, 2", v1, v2)
	}
	err := s.WriteTx(ctx, func(tx *store.Tx) error {
		r, v, err := CurrentRules(ctx, tx, "k")
		if err != nil || v != 2 || r.PerTxMax["ETH"] != "2" {
			t.Errorf("CurrentRules = %+v, %d, %v", r, v, err)
		}
		old, err := RulesVersion(ctx, tx, "k", 1)
		if err != nil || old.PerTxMax["ETH"] != "1" {
			t.Errorf("RulesVersion 1 = %+v, %v", old, err)
		}
		if _, err := RulesVersion(ctx, tx, "k", 3); !errors.Is(err, ErrNotFound) {
			t.Errorf("RulesVersion 3: %v", err)
		}
		r, v, err = CurrentRules(ctx, tx, "other")
		if err != nil || v != 0 || r.PerTxMax != nil {
			t.Errorf("no rules: %+v, %d, %v", r, v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, `SELECT COUNT(*) FROM policy_rules WHERE key_id = 'k'`); n != 2 {
		t.Fatalf("%d versions stored; want 2", n)
	}
	e := newEngine(t)
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r", Intent: ethTransfer(alice, "2"), Now: t0}); d.Outcome != Allow || d.Version != 2 {
		t.Fatalf("decided under v2: %+v", d)
	}
	// Rules for an unregistered key are refused by the foreign key.
	err = s.WriteTx(ctx, func(tx *store.Tx) error {
		_, err := SetRules(ctx, tx, "nope", Rules{}, "q")
		return err
	})
	if err == nil {
		t.Fatal("SetRules for an unregistered key succeeded")
	}
}

func TestSetRulesValidates(t *testing.T) {
	s, _ := newStore(t)
	addKey(t, s, "k")
	bad := map[string]Rules{
		"amount not decimal":     {PerTxMax: map[string]string{"ETH": "1e18"}},
		"negative amount":        {PerTxMax: map[string]string{"ETH": "-1"}},
		"same asset twice":       {PerTxMax: map[string]string{"ETH": "1", "eth": "2"}},
		"bad duration":           {Windows: []Window{{"ETH", "1 day", "1"}}},
		"zero duration":          {Windows: []Window{{"ETH", "0s", "1"}}},
		"window without asset":   {Windows: []Window{{"", "1h", "1"}}},
		"rate without burst":     {RatePerKey: &Rate{PerSecond: 1}},
		"rate without speed":     {RatePerClient: &Rate{Burst: 1}},
		"bad allowlist delay":    {AllowlistDelay: "soon"},
		"bad fee cap":            {MaxFeePerGas: "lots"},
		"negative fee rate":      {MaxFeeRate: -1},
		"bad selector":           {Contracts: map[string][]string{usdc: {"transfer"}}},
		"approvals without M":    {ApprovalAbove: map[string]string{"ETH": "1"}},
		"contract calls w/o M":   {ApprovalForContractCalls: true},
		"negative M":             {Approvals: -1},
		"amount beyond uint256+": {MaxFee: strings.Repeat("9", 79)},
	}
	for name, r := range bad {
		err := s.WriteTx(context.Background(), func(tx *store.Tx) error {
			_, err := SetRules(context.Background(), tx, "k", r, "q")
			return err
		})
		if !errors.Is(err, ErrInvalidRules) {
			t.Errorf("%s: err = %v; want ErrInvalidRules", name, err)
		}
	}
	if n := count(t, s, `SELECT COUNT(*) FROM policy_rules`); n != 0 {
		t.Fatalf("invalid rules stored: %d", n)
	}
}

func TestAllowlistEntries(t *testing.T) {
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	r := Rules{Allowlist: true, AllowlistDelay: "24h"}
	setRules(t, s, "k", r)
	ctx := context.Background()

	locked, err := r.AllowlistEffectiveAt(t0, false)
	if err != nil || !locked.Equal(t0.Add(24*time.Hour)) {
		t.Fatalf("time lock: %v, %v", locked, err)
	}
	addAllow(t, s, "k", alice, locked)
	// A quorum re-adds it: effective at once; a later ordinary add cannot delay it again.
	now, _ := r.AllowlistEffectiveAt(t0, true)
	addAllow(t, s, "k", strings.ToUpper("0x"+alice[2:]), now)
	addAllow(t, s, "k", alice, t0.Add(48*time.Hour))
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r1", Intent: ethTransfer(alice, "1"), Now: t0}); d.Outcome != Allow {
		t.Fatalf("quorum-shortened entry: %+v", d)
	}
	err = s.WriteTx(ctx, func(tx *store.Tx) error {
		list, err := ListAllowlist(ctx, tx, "k")
		if err != nil || len(list) != 1 || list[0].Address != alice || !list[0].EffectiveAt.Equal(t0) {
			t.Errorf("ListAllowlist = %+v, %v", list, err)
		}
		if err := RemoveAllowlist(ctx, tx, "k", alice); err != nil {
			return err
		}
		if err := RemoveAllowlist(ctx, tx, "k", alice); !errors.Is(err, ErrNotFound) {
			t.Errorf("second removal: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "r2", Intent: ethTransfer(alice, "1"), Now: t0}); d.Code != CodeAddressDenied {
		t.Fatalf("removed entry: %+v", d)
	}
}

func TestPrune(t *testing.T) {
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	for i := range 5 {
		evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: reqID("r", i), Intent: ethTransfer(alice, "1"), Now: t0.Add(time.Duration(i) * time.Hour)})
	}
	var n int64
	err := s.WriteTx(context.Background(), func(tx *store.Tx) error {
		var err error
		n, err = Prune(context.Background(), tx, t0.Add(2*time.Hour), 2)
		return err
	})
	if err != nil || n != 2 || count(t, s, usageRows) != 3 {
		t.Fatalf("Prune = %d, %v; %d rows left", n, err, count(t, s, usageRows))
	}
}
