package policy

import (
	"context"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/store"
)

// plan is what an Allow or NeedsApproval decision writes.
type plan struct {
	buckets []bucket
	assets  []string            // canonical assets moved, sorted
	totals  map[string]*big.Int // canonical asset → total moved by this transaction
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
// q may be a read-only connection or a transaction the caller rolls back.
func (e *Engine) DryRun(ctx context.Context, q Queryer, req Request) (Decision, error) {
	d, _, err := e.evaluate(ctx, q, req)
	return d, err
}

// Release removes requestID's window usage: for a request whose approval was
// rejected or expired, or whose signing failed and will not be retried.
// Rate-limit tokens are not refunded (the request was still made). Releasing
// an unknown or already released request does nothing.
func (e *Engine) Release(ctx context.Context, tx *store.Tx, requestID string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM policy_usage WHERE request_id = ?`, requestID); err != nil {
		return fmt.Errorf("policy: release usage of %s: %w", requestID, err)
	}
	return nil
}

// Prune deletes at most limit usage rows recorded at or before before, and
// returns how many it deleted. It is maintenance, run in its own short
// transactions (the bound keeps each one short): pass a time older than the
// longest window any key's rules use, or a later rules version with a longer
// window would see less history than happened.
func Prune(ctx context.Context, tx *store.Tx, before time.Time, limit int) (int64, error) {
	res, err := tx.ExecContext(ctx, `DELETE FROM policy_usage WHERE rowid IN
		(SELECT rowid FROM policy_usage WHERE at <= ? LIMIT ?)`, before.UTC().UnixNano(), limit)
	if err != nil {
		return 0, fmt.Errorf("policy: prune usage: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("policy: prune usage: %w", err)
	}
	return n, nil
}

func record(ctx context.Context, tx *store.Tx, req Request, p plan) error {
	for _, b := range p.buckets {
		if err := b.take(ctx, tx); err != nil {
			return err
		}
	}
	at := req.Now.UTC().UnixNano()
	for _, a := range p.assets {
		if p.totals[a].Sign() == 0 {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO policy_usage (request_id, key_id, asset, amount, at)
			VALUES (?, ?, ?, ?, ?)`, req.RequestID, req.KeyID, a, p.totals[a].String(), at); err != nil {
			return fmt.Errorf("policy: record usage of %s: %w", req.RequestID, err)
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
	rules, version, err := CurrentRules(ctx, q, req.KeyID)
	if err != nil {
		return Decision{}, plan{}, err
	}
	c, err := rules.compile()
	if err != nil {
		return Decision{}, plan{}, fmt.Errorf("policy: rules v%d for %q: %w: %w", version, req.KeyID, ErrCorrupt, err)
	}
	ev := evaluation{ctx: ctx, q: q, req: req, c: c, p: &p}
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
	ctx context.Context
	q   Queryer
	req Request
	c   *compiled
	p   *plan
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

// windows sums, per asset, the usage inside the asset's longest window in
// one index range scan, and checks every window of that asset against it.
func (ev *evaluation) windows() (Decision, bool, error) {
	now := ev.req.Now.UTC().UnixNano()
	for _, a := range ev.p.assets {
		total := ev.p.totals[a]
		var ws []window
		var longest time.Duration
		for _, w := range ev.c.windows {
			if w.asset == a {
				ws, longest = append(ws, w), max(longest, w.d)
			}
		}
		if len(ws) == 0 || total.Sign() == 0 {
			continue
		}
		used, err := windowUsage(ev.ctx, ev.q, ev.req.KeyID, a, now, longest, ws)
		if err != nil {
			return Decision{}, false, err
		}
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

// windowUsage returns, for each of ws, the amount recorded in (now-d, now]
// and also anything recorded after now (a clock that stepped back must not
// hide usage). Rows older than the longest window are not read at all.
func windowUsage(ctx context.Context, q Queryer, keyID, asset string, now int64, longest time.Duration, ws []window) ([]*big.Int, error) {
	used := make([]*big.Int, len(ws))
	for i := range used {
		used[i] = new(big.Int)
	}
	rows, err := q.QueryContext(ctx, `SELECT at, amount FROM policy_usage
		WHERE key_id = ? AND asset = ? AND at > ?`, keyID, asset, now-int64(longest))
	if err != nil {
		return nil, fmt.Errorf("policy: read window usage of %q %s: %w", keyID, asset, err)
	}
	defer rows.Close()
	v := new(big.Int)
	for rows.Next() {
		var at int64
		var amount string
		if err := rows.Scan(&at, &amount); err != nil {
			return nil, fmt.Errorf("policy: read window usage of %q %s: %w", keyID, asset, err)
		}
		if _, ok := v.SetString(amount, 10); !ok || v.Sign() < 0 {
			return nil, fmt.Errorf("policy: usage amount %q of %q %s: %w", amount, keyID, asset, ErrCorrupt)
		}
		for i, w := range ws {
			if at > now-int64(w.d) {
				used[i].Add(used[i], v)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("policy: read window usage of %q %s: %w", keyID, asset, err)
	}
	return used, nil
}

func (ev *evaluation) rates() (Decision, bool, error) {
	bs, err := rateBuckets(ev.ctx, ev.q, ev.c, ev.req, ev.req.Now)
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
