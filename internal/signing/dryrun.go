package signing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/address"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/store"
)

// Evaluation is what POST /v1/policy/evaluate answers: what /v1/sign would
// decide for a payload, without recording or signing anything.
type Evaluation struct {
	Decision          string          `json:"decision"` // allow | deny | needs_approval
	Code              string          `json:"code,omitempty"`
	Rule              string          `json:"rule,omitempty"`
	Message           string          `json:"message,omitempty"`
	ApprovalsRequired int             `json:"approvals_required,omitempty"`
	PolicyVersion     int             `json:"policy_version"`
	Intent            json.RawMessage `json:"intent"`
}

// errRollback ends the dry run's transaction without committing.
var errRollback = errors.New("dry run: roll back")

// Evaluate decodes and checks req exactly as Sign would and asks the policy
// engine for its decision, then rolls everything back. Clients may evaluate
// only keys granted to them; officers any key.
func (s *Service) Evaluate(ctx context.Context, p *access.Principal, req Request) (*Evaluation, error) {
	key, err := s.keys.Get(req.KeyID)
	if err != nil {
		return nil, err
	}
	if !p.Granted(key.ID) && !p.Has(access.RoleOfficer) {
		return nil, apierr.New(http.StatusForbidden, apierr.CodeForbidden, "key %q is not granted to %s", key.ID, p.Name)
	}
	// As Sign: a request naming another chain than the key's is refused.
	if req.Chain != "" && !strings.EqualFold(req.Chain, key.Chain) {
		return nil, apierr.New(http.StatusUnprocessableEntity, apierr.CodeWrongNetwork, "key %q signs for chain %q, not %q", key.ID, key.Chain, req.Chain)
	}
	prep, err := s.prepare(key, req)
	if err != nil {
		return nil, err
	}
	ev := &Evaluation{Decision: "allow", Intent: prep.intent}
	if err := s.refusal(prep, req); err != nil {
		ae := apierr.From(err)
		ev.Decision, ev.Code, ev.Message = "deny", ae.Code, ae.Message
		return ev, nil
	}
	if s.rules == nil {
		return ev, nil
	}
	var d policy.Decision
	err = s.store.WriteTx(ctx, func(tx *store.Tx) error {
		var derr error
		d, derr = s.rules.DryRun(ctx, tx, policy.Request{KeyID: key.ID, Principal: p.Name, RequestID: "dry-run", Intent: prep.policy})
		if derr != nil {
			return derr
		}
		return errRollback
	})
	if err != nil && !errors.Is(err, errRollback) {
		return nil, apierr.Internal(err)
	}
	ev.PolicyVersion, ev.Rule, ev.Message, ev.Code = d.Version, d.Rule, d.Message, d.Code
	switch d.Outcome {
	case policy.NeedsApproval:
		ev.Decision, ev.ApprovalsRequired = "needs_approval", d.Approvals
	case policy.Deny:
		ev.Decision = "deny"
	}
	return ev, nil
}

// Allowlisted is the answer of an allowlist addition.
type Allowlisted struct {
	KeyID       string    `json:"key_id"`
	Address     string    `json:"address"`
	EffectiveAt time.Time `json:"effective_at"`
}

// AddAllowlist lets one officer add a destination to a key's allowlist. It
// takes effect only after the key's policy time lock (allowlist_delay); the
// quorum's allowlist_add proposal is effective at once. The address is
// validated for the key's chain and network and stored in its normal form.
func (s *Service) AddAllowlist(ctx context.Context, officer *access.Principal, keyID, addr string) (*Allowlisted, error) {
	key, err := s.keys.Get(keyID)
	if err != nil {
		return nil, err
	}
	v, err := address.Validate(key.Chain, key.Network, addr, nil)
	if err != nil || !v.Valid {
		return nil, apierr.New(http.StatusUnprocessableEntity, apierr.CodeAddressInvalid, "%s is not a valid %s %s address: %s", addr, key.Chain, key.Network, v.Reason)
	}
	out := &Allowlisted{KeyID: key.ID, Address: v.Normalized}
	err = s.store.WriteTx(ctx, func(tx *store.Tx) error {
		rules, _, err := policy.CurrentRules(ctx, tx, key.ID)
		if err != nil {
			return err
		}
		if out.EffectiveAt, err = rules.AllowlistEffectiveAt(s.now().UTC(), false); err != nil {
			return err
		}
		if err := policy.AddAllowlist(ctx, tx, key.ID, v.Normalized, out.EffectiveAt, officer.Name); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "allowlist_add", officer.Name, fmt.Sprintf("%s %s effective %s", key.ID, v.Normalized, out.EffectiveAt.Format(time.RFC3339)))
	})
	if err != nil {
		return nil, apierr.Internal(err)
	}
	return out, nil
}
