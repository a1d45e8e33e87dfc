package policy

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/store"
)

// plan is what an Allow or NeedsApproval decision writes.
type plan struct {
	buckets []bucket
	assets  []string             // canonical assets moved, sorted
	totals  map[string]*big.Int  // canonical asset → total moved by this transaction
	heads   map[string]usageHead // canonical asset → newest usage row, when the windows read it
}

// Evaluate decides req under keyID's current rules inside tx, the caller's
// write transaction that also records the request. On Allow and
// NeedsApproval it takes one token from each configured rate bucket and
// records the value moved per asset as window usage under req.RequestID
// (so a request awaiting approval counts against the windows until it is
// Released). On Deny it writes nothing. A non-nil error means something
// broke, never that policy refused; the caller must then not sign.
func (e *Engine) Evaluate(ctx context.Context, tx *store.Tx, req Request) (Decision, error) {
	if req.RequestID == "" {
		return Decision{}, fmt.Errorf("policy: evaluate needs a request id: %w", ErrInvalidRequest)
	}
	if req.Now.IsZero() {
		req.Now = e.now()
	}
	d, p, err := e.evaluate(ctx, tx, req)
	if err != nil || d.Outcome == Deny {
		return d, err
	}
	if err := record(ctx, tx, req, p); err != nil {
		return Decision{}, err
	}
	return d, nil
}

// DryRun returns the decision Evaluate would make now and records nothing.
// q may be a read-only connection pool or a transaction the caller rolls
// back. On a pool the reads run in one read transaction, so they see one
// state of the database (the window sums take several statements).
func (e *Engine) DryRun(ctx context.Context, q Queryer, req Request) (Decision, error) {
	if db, ok := q.(*sql.DB); ok {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return Decision{}, fmt.Errorf("policy: dry run: %w", err)
		}
		defer func() { _ = tx.Rollback() }()
		q = tx
	}
	d, _, err := e.evaluate(ctx, q, req)
	return d, err
}

func record(ctx context.Context, tx *store.Tx, req Request, p plan) error {
	for _, b := range p.buckets {
		if err := b.take(ctx, tx); err != nil {
			return err
		}
	}
	now := req.Now.UTC().UnixNano()
	for _, a := range p.assets {
		if p.totals[a].Sign() == 0 {
			continue
		}
		var head *usageHead
		if h, ok := p.heads[a]; ok {
			head = &h
		}
		if err := appendUsage(ctx, tx, req.RequestID, req.KeyID, a, p.totals[a], now, head); err != nil {
			return err
		}
	}
	return nil
}

// evaluate decides without writing. Checks run from the ones no retry can
// change (contracts, fees, per-transaction limits, the allowlist) to the ones
// time can (windows, rate limits), so a refusal names the most lasting reason.
func (e *Engine) evaluate(ctx context.Context, q Queryer, req Request) (Decision, plan, error) {
	if req.Now.IsZero() {
		req.Now = e.now()
	}
	p, err := checkRequest(req)
	if err != nil {
		return Decision{}, plan{}, err
	}
	c, version, buckets, err := e.currentCompiled(ctx, q, req.KeyID, req.Principal)
	if err != nil {
		return Decision{}, plan{}, err
	}
	ev := evaluation{ctx: ctx, q: q, req: req, c: c, buckets: buckets, p: &p}
	d, err := ev.run()
	if err != nil {
		return Decision{}, plan{}, err
	}
	d.Version = version
	if d.Outcome == Deny {
		e.log.Info("policy refused a request", zap.String("request_id", req.RequestID),
			zap.String("key_id", req.KeyID), zap.String("principal", req.Principal),
			zap.String("code", d.Code), zap.String("rule", d.Rule), zap.Int("rules_version", version))
	}
	return d, p, nil
}

// checkRequest refuses malformed input (a caller bug) and totals the value
// moved per asset.
func checkRequest(req Request) (plan, error) {
	bad := func(format string, a ...any) (plan, error) {
		return plan{}, fmt.Errorf("policy: request %s: "+format+": %w", append([]any{req.RequestID}, append(a, ErrInvalidRequest)...)...)
	}
	if req.KeyID == "" {
		return bad("no key id")
	}
	in := req.Intent
	switch in.Kind {
	case KindTransfer, KindERC20Transfer, KindERC20TransferFrom, KindERC20Approve, KindContractCall, KindContractCreation:
	default:
		return bad("unknown intent kind %q", in.Kind)
	}
	for _, f := range []*big.Int{in.MaxFeePerGas, in.MaxPriorityFeePerGas, in.Fee} {
		if f != nil && f.Sign() < 0 {
			return bad("negative fee")
		}
	}
	if math.IsNaN(in.FeeRate) || math.IsInf(in.FeeRate, 0) || in.FeeRate < 0 {
		return bad("fee rate %v", in.FeeRate)
	}
	p := plan{totals: map[string]*big.Int{}}
	for i, t := range in.Transfers {
		a := canonAsset(t.Asset)
		switch {
		case a == "":
			return bad("transfer %d has no asset", i)
		case t.Amount == nil || t.Amount.Sign() < 0:
			return bad("transfer %d has no or a negative amount", i)
		}
		if p.totals[a] == nil {
			p.totals[a] = new(big.Int)
			p.assets = append(p.assets, a)
		}
		p.totals[a].Add(p.totals[a], t.Amount)
	}
	slices.Sort(p.assets)
	return p, nil
}

// evaluation is one run of the checks.
type evaluation struct {
	ctx     context.Context
	q       Queryer
	req     Request
	c       *compiled
	buckets storedBuckets // as read with the rules
	p       *plan
}

func deny(code, rule, format string, a ...any) Decision {
	return Decision{Outcome: Deny, Code: code, Rule: rule,
		Message: fmt.Sprintf("%s: %s: %s", code, rule, fmt.Sprintf(format, a...))}
}

func (ev *evaluation) run() (Decision, error) {
	for _, check := range []func() (Decision, bool){ev.contracts, ev.fees, ev.perTx} {
		if d, refused := check(); refused {
			return d, nil
		}
	}
	unlisted, d, refused, err := ev.allowlist()
	if err != nil || refused {
		return d, err
	}
	if d, refused, err := ev.windows(); err != nil || refused {
		return d, err
	}
	if d, refused, err := ev.rates(); err != nil || refused {
		return d, err
	}
	return ev.approvals(unlisted), nil
}

func (ev *evaluation) name(asset string) string {
	if n, ok := ev.c.names[asset]; ok {
		return n
	}
	return asset
}

func (ev *evaluation) contracts() (Decision, bool) {
	in := ev.req.Intent
	switch in.Kind {
	case KindContractCreation:
		return deny(CodePolicyDenied, "contracts", "contract creation is not allowed by policy"), true
	case KindContractCall:
	default:
		return Decision{}, false
	}
	addr := canonAddress(in.Contract)
	sels, ok := ev.c.contracts[addr]
	if !ok || addr == "" {
		return deny(CodePolicyDenied, "contracts", "calls to contract %q are not allowed", in.Contract), true
	}
	if len(sels) > 0 && !sels[strings.ToLower(in.Selector)] {
		return deny(CodePolicyDenied, "contracts["+addr+"]", "function selector %q is not allowed", in.Selector), true
	}
	return Decision{}, false
}

func (ev *evaluation) fees() (Decision, bool) {
	in, c := ev.req.Intent, ev.c
	over := func(rule string, v, limit *big.Int) (Decision, bool) {
		if v == nil {
			return deny(CodePolicyDenied, rule+" "+limit.String(), "the transaction's fee is unknown"), true
		}
		if v.Cmp(limit) > 0 {
			return deny(CodePolicyDenied, rule+" "+limit.String(), "fee %s is above the cap", v), true
		}
		return Decision{}, false
	}
	switch in.Chain {
	case ChainEthereum:
		if c.maxFeePerGas != nil {
			if d, refused := over("max_fee_per_gas", in.MaxFeePerGas, c.maxFeePerGas); refused {
				return d, true
			}
		}
		if c.maxPriority != nil {
			if d, refused := over("max_priority_fee_per_gas", in.MaxPriorityFeePerGas, c.maxPriority); refused {
				return d, true
			}
		}
	case ChainBitcoin:
		if c.maxFeeRate > 0 && in.FeeRate > c.maxFeeRate {
			return deny(CodePolicyDenied, fmt.Sprintf("max_fee_rate %g", c.maxFeeRate),
				"fee rate %g sat/vB is above the cap", in.FeeRate), true
		}
		if c.maxFee != nil {
			if d, refused := over("max_fee", in.Fee, c.maxFee); refused {
				return d, true
			}
		}
	}
	return Decision{}, false
}

func (ev *evaluation) perTx() (Decision, bool) {
	for _, a := range ev.p.assets {
		limit, ok := ev.c.perTxMax[a]
		if ok && ev.p.totals[a].Cmp(limit) > 0 {
			return deny(CodeLimitExceeded, fmt.Sprintf("per_tx_max %s %s", ev.name(a), limit),
				"transaction moves %s", ev.p.totals[a]), true
		}
	}
	return Decision{}, false
}

// allowlist checks every destination when allowlist mode is on (refusing the
// first not effective), or collects the unlisted ones when they need approvals.
func (ev *evaluation) allowlist() (unlisted []string, d Decision, refused bool, err error) {
	if !ev.c.allowlist && !ev.c.approveNonAL {
		return nil, Decision{}, false, nil
	}
	seen := map[string]bool{}
	for _, t := range ev.req.Intent.Transfers {
		addr := canonAddress(t.To)
		if seen[addr] {
			continue
		}
		seen[addr] = true
		ok := false
		if addr != "" {
			if ok, err = allowlisted(ev.ctx, ev.q, ev.req.KeyID, addr, ev.req.Now); err != nil {
				return nil, Decision{}, false, err
			}
		}
		if ok {
			continue
		}
		if ev.c.allowlist {
			return nil, deny(CodeAddressDenied, "allowlist",
				"destination %q is not on the key's allowlist (or its time lock has not passed)", t.To), true, nil
		}
		unlisted = append(unlisted, t.To)
	}
	return unlisted, Decision{}, false, nil
}

// windows reads, per asset, the usage inside each of the asset's windows
// (index seeks, see usage.go) and checks each window against it.
func (ev *evaluation) windows() (Decision, bool, error) {
	now := ev.req.Now.UTC().UnixNano()
	for _, a := range ev.p.assets {
		total := ev.p.totals[a]
		var ws []window
		for _, w := range ev.c.windows {
			if w.asset == a {
				ws = append(ws, w)
			}
		}
		if len(ws) == 0 || total.Sign() == 0 {
			continue
		}
		used, head, err := windowUsage(ev.ctx, ev.q, ev.req.KeyID, a, now, ws)
		if err != nil {
			return Decision{}, false, err
		}
		if ev.p.heads == nil {
			ev.p.heads = map[string]usageHead{}
		}
		ev.p.heads[a] = head
		for i, w := range ws {
			after := new(big.Int).Add(used[i], total)
			if after.Cmp(w.max) > 0 {
				return deny(CodeLimitExceeded, w.rule, "%s already used in the window + %s requested exceeds %s",
					used[i], total, w.max), true, nil
			}
		}
	}
	return Decision{}, false, nil
}

func (ev *evaluation) rates() (Decision, bool, error) {
	bs, err := rateBuckets(ev.c, ev.buckets, ev.req, ev.req.Now)
	if err != nil {
		return Decision{}, false, err
	}
	var worst *bucket
	for i := range bs {
		if bs[i].tokens < 1 && (worst == nil || bs[i].wait() > worst.wait()) {
			worst = &bs[i]
		}
	}
	if worst != nil {
		d := deny(CodeRateLimited, worst.rule, "too many requests; retry after %s", worst.wait())
		d.RetryAfter = worst.wait()
		return d, true, nil
	}
	ev.p.buckets = bs
	return Decision{}, false, nil
}

// approvals collects every rule that asks for M approvals.
func (ev *evaluation) approvals(unlisted []string) Decision {
	var why []string
	for _, a := range ev.p.assets {
		if limit, ok := ev.c.approvalAbove[a]; ok && ev.p.totals[a].Cmp(limit) > 0 {
			why = append(why, fmt.Sprintf("approval_above %s %s", ev.name(a), limit))
		}
	}
	if ev.c.approveNonAL && len(unlisted) > 0 {
		why = append(why, "approval_for_non_allowlisted "+strings.Join(unlisted, ","))
	}
	if ev.c.approveCalls && ev.req.Intent.Kind == KindContractCall {
		why = append(why, "approval_for_contract_calls")
	}
	if len(why) == 0 {
		return Decision{Outcome: Allow}
	}
	rule := strings.Join(why, "; ")
	return Decision{Outcome: NeedsApproval, Rule: rule, Approvals: ev.c.approvals,
		Message: fmt.Sprintf("needs %d approvals: %s", ev.c.approvals, rule)}
}
