package app

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/ethereum"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

const (
	// dashboardRecent is how many recent requests the dashboard lists.
	dashboardRecent = 20
	// dashboardPending bounds the pending approvals it lists.
	dashboardPending = 50
	// dashboardRefresh is the page's <meta http-equiv="refresh"> period.
	dashboardRefresh = 30
)

// requestStates are every state a request can be in, for the recent list.
var requestStates = []string{store.StateSigning, store.StateSigned, store.StateFailed, store.StateDenied,
	store.StatePendingApproval, store.StateRejected, store.StateExpired}

// dashboard gathers GET /dashboard: read-only, from the seal manager, the
// health checker, the key registry, the store, the screener and (while
// unsealed) the HSM. It records nothing and holds no lock while it reads.
// What cannot be read is listed in Problems instead of failing the page.
func (a *App) dashboard(ctx context.Context, _ *access.Principal) (*api.DashboardView, error) {
	v := &api.DashboardView{
		GeneratedAt: time.Now().UTC(), RefreshSeconds: dashboardRefresh,
		Version: a.version, Mode: string(a.cfg.Mode), GoVersion: runtime.Version(),
		StartedAt: a.started.UTC(), Uptime: time.Since(a.started), Ready: a.ready.Load(),
		Seal: a.seal.State(), Health: a.checker.Run(ctx),
	}
	problem := func(what string, err error) { v.Problems = append(v.Problems, what+": "+err.Error()) }

	m := a.currentModule()
	for _, k := range a.keys.List() {
		dk := api.DashboardKey{ID: k.ID, Label: k.Label, Algorithm: k.Algorithm, Chain: k.Chain, Network: k.Network,
			Address: k.Address, State: "in service"}
		if m == nil {
			dk.State, dk.Reason = "unchecked", "sealed: keys are checked against the token at unseal"
		} else {
			err := a.keys.Refused(k.ID)
			if err == nil {
				err = m.KeyError(k.CKAID)
			}
			if err != nil {
				dk.State, dk.Reason = "refused", signing.RefusalText(err)
			}
		}
		v.Keys = append(v.Keys, dk)
	}

	if m == nil {
		v.HSMNote = "sealed: the PKCS#11 library is loaded and the token opened only while unsealed"
		if v.Seal.Frozen {
			v.HSMNote = "frozen (sealed): the HSM is closed until the quorum lifts the freeze and officers unseal"
		}
	} else {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := m.Info(ictx)
		cancel()
		if err != nil {
			v.HSMNote = "unavailable: " + err.Error()
			problem("PKCS#11 library and token", err)
		} else {
			v.HSM = &info
		}
	}

	var err error
	if v.SchemaVersion, err = a.store.SchemaVersion(ctx); err != nil {
		problem("schema version", err)
	}
	if err := a.dashboardRequests(ctx, v); err != nil {
		problem("requests", err)
	}
	if a.screener != nil {
		for _, l := range a.screener.Versions() {
			v.Lists = append(v.Lists, api.DashboardList{Name: l.Name, Chain: string(l.Chain), SHA256: l.SHA256,
				Count: l.Count, Rejected: l.Rejected, LoadedAt: l.LoadedAt, Error: l.Error})
		}
		sort.Slice(v.Lists, func(i, j int) bool { return v.Lists[i].Name < v.Lists[j].Name })
	}

	seq, hash, err := a.store.AuditHead(ctx)
	if err != nil {
		problem("audit head", err)
	}
	v.Audit.HeadSeq, v.Audit.HeadHash = seq, hex.EncodeToString(hash)
	switch cp, err := a.store.LastCheckpoint(ctx); {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		problem("last audit checkpoint", err)
	default:
		v.Audit.CheckpointSeq, v.Audit.CheckpointAt, v.Audit.CheckpointKeyID = cp.Seq, time.Unix(0, cp.At).UTC(), cp.KeyID
		v.Audit.CheckpointHash = hex.EncodeToString(cp.Hash)
	}
	return v, nil
}

// dashboardRequests fills the pending approvals and the most recent
// requests of any state. Payloads and idempotency keys are never copied.
func (a *App) dashboardRequests(ctx context.Context, v *api.DashboardView) error {
	var all []store.Request
	for _, state := range requestStates {
		limit := dashboardRecent
		if state == store.StatePendingApproval {
			limit = max(limit, dashboardPending)
		}
		rs, err := a.store.ListRequests(ctx, state, limit)
		if err != nil {
			return err
		}
		all = append(all, rs...)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].CreatedAt.After(all[j].CreatedAt) })
	for _, r := range all {
		if r.State == store.StatePendingApproval && len(v.Pending) < dashboardPending {
			p, approvals, err := a.store.PendingOf(ctx, r.ID)
			if err != nil {
				return err
			}
			dp := api.DashboardPending{ID: r.ID, KeyID: r.KeyID, Chain: r.Chain, Network: r.Network, Principal: r.Principal,
				CreatedAt: r.CreatedAt, ExpiresAt: p.ExpiresAt, Required: p.ApprovalsRequired,
				Summary: intentFields(r.Chain, r.Intent), IntentJSON: indentJSON(r.Intent), Digest: hex.EncodeToString(r.Digest),
				Approvals: []string{}}
			for _, ap := range approvals {
				dp.Approvals = append(dp.Approvals, ap.Officer)
			}
			v.Pending = append(v.Pending, dp)
		}
		if len(v.Recent) < dashboardRecent {
			v.Recent = append(v.Recent, api.DashboardRequest{ID: r.ID, KeyID: r.KeyID, Chain: r.Chain, State: r.State,
				Code: r.ErrorCode, Message: r.ErrorMessage, Principal: r.Principal, Summary: intentLine(r.Chain, r.Intent),
				CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt})
		}
	}
	return nil
}

func indentJSON(raw []byte) string {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return "(not valid JSON)"
	}
	return b.String()
}

// intentFields renders a stored intent as labelled lines for officers'
// eyes: Ethereum to/value/asset/fee, Bitcoin outputs and fee.
func intentFields(chain string, raw []byte) []api.DashboardField {
	var out []api.DashboardField
	add := func(name, format string, args ...any) {
		out = append(out, api.DashboardField{Name: name, Value: fmt.Sprintf(format, args...)})
	}
	switch chain {
	case "ethereum":
		var in ethereum.Intent
		if json.Unmarshal(raw, &in) != nil {
			return []api.DashboardField{{Name: "intent", Value: "(could not be decoded; see the JSON)"}}
		}
		add("kind", "%s (type %d transaction, chain id %s, nonce %d)", in.Kind, in.Type, in.ChainID, in.Nonce)
		if in.To != "" {
			add("to", "%s", in.To)
		} else {
			add("to", "(contract creation)")
		}
		add("value", "%s ETH (%s wei)", units(in.Value, 18), in.Value)
		if t := in.Token; t != nil {
			add("asset", "ERC-20 token %s", t.Contract)
			if t.From != "" {
				add("token from", "%s", t.From)
			}
			recipient := "token recipient"
			if t.Method == "approve" {
				recipient = "spender"
			}
			add(recipient, "%s", t.To)
			add("token amount", "%s base units (%s)", t.Amount, t.Method)
		} else {
			add("asset", "ETH")
		}
		if in.Selector != "" {
			add("call", "selector %s, %d bytes of calldata", in.Selector, in.DataLen)
		}
		add("fee", "%s", ethFee(in))
	case "bitcoin":
		var in bitcoin.Intent
		if json.Unmarshal(raw, &in) != nil {
			return []api.DashboardField{{Name: "intent", Value: "(could not be decoded; see the JSON)"}}
		}
		add("network", "%s", in.Network)
		for _, o := range in.Outputs {
			to := o.Address
			if to == "" {
				to = "(no address: " + o.Type + ")"
			}
			change := ""
			if o.Change {
				change = " — change, back to the appliance"
			}
			add(fmt.Sprintf("output %d", o.Index), "%s BTC to %s%s", sats(o.Amount), to, change)
		}
		add("inputs", "%d, %s BTC in total", len(in.Inputs), sats(in.TotalIn))
		add("fee", "%s BTC (%d sat, about %.1f sat/vB)", sats(in.Fee), in.Fee, in.FeeRateSatVB)
	default:
		add("intent", "chain %q: see the JSON", chain)
	}
	return out
}

// intentLine is a one-line summary for the recent requests table.
func intentLine(chain string, raw []byte) string {
	switch chain {
	case "ethereum":
		var in ethereum.Intent
		if json.Unmarshal(raw, &in) != nil {
			return ""
		}
		if t := in.Token; t != nil {
			return fmt.Sprintf("ERC-20 %s %s units of %s → %s", t.Method, t.Amount, t.Contract, t.To)
		}
		to := in.To
		if to == "" {
			to = "(contract creation)"
		}
		return fmt.Sprintf("%s ETH → %s", units(in.Value, 18), to)
	case "bitcoin":
		var in bitcoin.Intent
		if json.Unmarshal(raw, &in) != nil {
			return ""
		}
		var parts []string
		for _, o := range in.Outputs {
			if !o.Change {
				parts = append(parts, sats(o.Amount)+" BTC → "+o.Address)
			}
		}
		return strings.Join(parts, "; ") + fmt.Sprintf(" (fee %d sat)", in.Fee)
	}
	return ""
}

// ethFee is the most the transaction can pay in fees: gas × max fee (or gas price).
func ethFee(in ethereum.Intent) string {
	price, what := in.MaxFeePerGas, "max fee"
	if price == "" {
		price, what = in.GasPrice, "gas price"
	}
	p, ok := new(big.Int).SetString(price, 10)
	if !ok {
		return fmt.Sprintf("gas %d", in.Gas)
	}
	total := new(big.Int).Mul(p, new(big.Int).SetUint64(in.Gas))
	s := fmt.Sprintf("at most %s ETH (gas %d × %s %s gwei", units(total.String(), 18), in.Gas, what, units(price, 9))
	if in.MaxPriorityFeePerGas != "" {
		s += ", priority " + units(in.MaxPriorityFeePerGas, 9) + " gwei"
	}
	return s + ")"
}

// units writes a non-negative decimal integer string divided by 10^decimals,
// exactly, without trailing zeros.
func units(dec string, decimals int) string {
	n, ok := new(big.Int).SetString(dec, 10)
	if !ok || n.Sign() < 0 {
		return dec
	}
	q, r := new(big.Int).QuoRem(n, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(decimals)), nil), new(big.Int))
	if r.Sign() == 0 {
		return q.String()
	}
	digits := r.String()
	frac := strings.TrimRight(strings.Repeat("0", decimals-len(digits))+digits, "0")
	return q.String() + "." + frac
}

func sats(n int64) string {
	if n < 0 {
		return "-" + units(fmt.Sprint(-n), 8)
	}
	return units(fmt.Sprint(n), 8)
}
