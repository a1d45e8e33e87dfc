package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/governance"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/store"
)

// Execute carries out an approved proposal inside tx (governance.Executor).
func (a *App) Execute(ctx context.Context, tx *store.Tx, p store.Proposal) (string, error) {
	switch p.Kind {
	case governance.KindUnfreeze:
		if err := a.seal.Unfreeze(ctx, tx, p.ID); err != nil {
			return "", err
		}
		return "unfrozen; sealed until unsealed", nil
	case governance.KindCreateKey:
		var params governance.CreateKeyParams
		if err := json.Unmarshal(p.Params, &params); err != nil {
			return "", err
		}
		return a.createKeyTx(ctx, tx, params)
	case governance.KindGrantKey, governance.KindRevokeKey:
		var params governance.GrantKeyParams
		if err := json.Unmarshal(p.Params, &params); err != nil {
			return "", err
		}
		return a.grantTx(ctx, tx, p.Kind == governance.KindGrantKey, params)
	case governance.KindAddPrincipal:
		var params governance.PrincipalParams
		if err := json.Unmarshal(p.Params, &params); err != nil {
			return "", err
		}
		rec := store.PrincipalRecord{Name: params.Name, Roles: params.Roles, Keys: params.Keys}
		return "principal " + params.Name + " set", store.PutPrincipal(ctx, tx, rec)
	case governance.KindRemovePrincipal:
		var params governance.NameParams
		if err := json.Unmarshal(p.Params, &params); err != nil {
			return "", err
		}
		if a.access.Lookup(params.Name) == nil {
			return "", fmt.Errorf("no principal %q", params.Name)
		}
		return "principal " + params.Name + " removed", store.PutPrincipal(ctx, tx, store.PrincipalRecord{Name: params.Name, Removed: true})
	case governance.KindAddOfficer:
		var params governance.OfficerParams
		if err := json.Unmarshal(p.Params, &params); err != nil {
			return "", err
		}
		return "officer " + params.Name + " added", store.AddOfficer(ctx, tx, store.Officer{Name: params.Name, ApprovalKey: params.ApprovalKey})
	case governance.KindRemoveOfficer:
		var params governance.NameParams
		if err := json.Unmarshal(p.Params, &params); err != nil {
			return "", err
		}
		return "officer " + params.Name + " removed", store.RemoveOfficer(ctx, tx, params.Name)
	case governance.KindSetPolicy:
		var params governance.SetPolicyParams
		if err := json.Unmarshal(p.Params, &params); err != nil {
			return "", err
		}
		v, err := policy.SetRules(ctx, tx, params.KeyID, params.Rules, p.ID)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("policy of key %s is now version %d", params.KeyID, v), nil
	case governance.KindAllowlistAdd:
		var params governance.AllowlistParams
		if err := json.Unmarshal(p.Params, &params); err != nil {
			return "", err
		}
		if err := policy.AddAllowlist(ctx, tx, params.KeyID, params.Address, time.Now(), p.ID); err != nil {
			return "", err
		}
		return fmt.Sprintf("%s allowlisted for key %s, effective now", params.Address, params.KeyID), nil
	default:
		return "", fmt.Errorf("no executor for proposal kind %q", p.Kind)
	}
}

// After applies a committed proposal to the running appliance.
func (a *App) After(ctx context.Context, p store.Proposal) {
	switch p.Kind {
	case governance.KindUnfreeze:
		// In the background: the approving officer's request should not wait
		// for an HSM login.
		a.trip.Rearm()
		go a.seal.AfterUnfreeze(context.WithoutCancel(ctx))
	case governance.KindCreateKey:
		var params governance.CreateKeyParams
		_ = json.Unmarshal(p.Params, &params)
		k, err := a.store.GetKey(ctx, params.ID)
		if m := a.currentModule(); err == nil && m != nil {
			a.keys.Add(k, m)
		} else {
			a.log.Error("new key not loaded; it will be at the next unseal", zap.String("key_id", params.ID), zap.Error(err))
		}
	default:
		if err := a.reloadPrincipals(ctx); err != nil {
			a.log.Error("reloading principals", zap.Error(err))
		}
	}
}

// createKeyTx generates the key in the HSM and registers it inside tx. If
// the registration does not commit, the token holds an unregistered key:
// harmless (nothing signs with it) and reported in the log.
func (a *App) createKeyTx(ctx context.Context, tx *store.Tx, p governance.CreateKeyParams) (string, error) {
	m := a.currentModule()
	if m == nil {
		return "", errors.New("sealed: unseal the appliance before creating keys")
	}
	spec := KeySpec{ID: p.ID, Label: p.Label, Algorithm: hsm.Algorithm(p.Algorithm), Chain: p.Chain, Network: p.Network,
		WrappedBackup: p.WrappedBackup}
	k, err := generateKey(ctx, m, spec)
	if err != nil {
		return "", err
	}
	if err := store.InsertKeyTx(ctx, tx, k); err != nil {
		a.log.Error("key generated but not registered", zap.String("key_id", k.ID), zap.Binary("cka_id", k.CKAID), zap.Error(err))
		return "", err
	}
	return fmt.Sprintf("key %s created (%s %s %s)", k.ID, k.Algorithm, k.Chain, k.Address), nil
}

func (a *App) grantTx(ctx context.Context, tx *store.Tx, grant bool, p governance.GrantKeyParams) (string, error) {
	pr := a.access.Lookup(p.Principal)
	if pr == nil {
		return "", fmt.Errorf("no principal %q", p.Principal)
	}
	if _, err := a.keys.Get(p.KeyID); err != nil {
		return "", fmt.Errorf("no key %q", p.KeyID)
	}
	keys := slices.Clone(pr.Keys)
	if grant {
		if !pr.Has(access.RoleClient) {
			return "", fmt.Errorf("%s does not hold the client role", p.Principal)
		}
		if !slices.Contains(keys, p.KeyID) {
			keys = append(keys, p.KeyID)
		}
	} else {
		keys = slices.DeleteFunc(keys, func(k string) bool { return k == p.KeyID })
	}
	roles := make([]string, 0, len(pr.Roles))
	for _, r := range pr.Roles {
		roles = append(roles, string(r))
	}
	if err := store.PutPrincipal(ctx, tx, store.PrincipalRecord{Name: pr.Name, Roles: roles, Keys: keys}); err != nil {
		return "", err
	}
	verb := "granted to"
	if !grant {
		verb = "revoked from"
	}
	return fmt.Sprintf("key %s %s %s", p.KeyID, verb, p.Principal), nil
}
