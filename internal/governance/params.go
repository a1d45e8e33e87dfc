package governance

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"github.com/custodysigner/appliance/internal/jsonstrict"
	"github.com/custodysigner/appliance/internal/policy"
)

// Proposal kinds.
const (
	KindUnfreeze        = "unfreeze"
	KindCreateKey       = "create_key"
	KindGrantKey        = "grant_key"
	KindRevokeKey       = "revoke_key"
	KindAddPrincipal    = "add_principal"
	KindRemovePrincipal = "remove_principal"
	KindAddOfficer      = "add_officer"
	KindRemoveOfficer   = "remove_officer"
	KindSetPolicy       = "set_policy"
	KindAllowlistAdd    = "allowlist_add"
)

// SetPolicyParams installs a new version of a key's policy rules.
type SetPolicyParams struct {
	KeyID string       `json:"key_id"`
	Rules policy.Rules `json:"rules"`
}

// AllowlistParams adds a destination to a key's allowlist; by quorum it is
// effective at once (no time lock).
type AllowlistParams struct {
	KeyID   string `json:"key_id"`
	Address string `json:"address"`
}

// UnfreezeParams lifts a freeze.
type UnfreezeParams struct {
	Reason string `json:"reason"`
}

// CreateKeyParams generates a key in the HSM and registers it.
type CreateKeyParams struct {
	ID        string `json:"id"`
	Label     string `json:"label,omitempty"`
	Algorithm string `json:"algorithm,omitempty"`
	Chain     string `json:"chain,omitempty"`
	Network   string `json:"network,omitempty"`
	// WrappedBackup: the key can be backed up wrapped inside the HSM.
	WrappedBackup bool `json:"wrapped_backup,omitempty"`
}

// GrantKeyParams grants (or, for revoke_key, revokes) a key to a client principal.
type GrantKeyParams struct {
	Principal string `json:"principal"`
	KeyID     string `json:"key_id"`
}

// PrincipalParams adds (or replaces) a principal.
type PrincipalParams struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles"`
	Keys  []string `json:"keys,omitempty"`
}

// NameParams names a principal or officer to remove.
type NameParams struct {
	Name string `json:"name"`
}

// OfficerParams registers an officer's Ed25519 approval key (32 bytes, base64 in JSON).
type OfficerParams struct {
	Name        string `json:"name"`
	ApprovalKey []byte `json:"approval_key"`
}

var roles = map[string]bool{"client": true, "officer": true, "auditor": true, "operator": true}

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// CanonicalParams strictly decodes params for kind (jsonstrict.Decode: an
// unknown member, a member name in another case or one repeated in an
// object is refused), validates them, and re-encodes them canonically: the
// bytes the digest binds.
func CanonicalParams(kind string, raw json.RawMessage) ([]byte, error) {
	var v any
	var check func() error
	switch kind {
	case KindUnfreeze:
		p := &UnfreezeParams{}
		v, check = p, func() error { return nil }
	case KindCreateKey:
		p := &CreateKeyParams{}
		v, check = p, func() error {
			if !idPattern.MatchString(p.ID) {
				return fmt.Errorf("create_key: id %q is not 1-63 of a-z 0-9 . _ -", p.ID)
			}
			return nil
		}
	case KindGrantKey, KindRevokeKey:
		p := &GrantKeyParams{}
		v, check = p, func() error {
			if p.Principal == "" || p.KeyID == "" {
				return fmt.Errorf("%s: principal and key_id are required", kind)
			}
			return nil
		}
	case KindAddPrincipal:
		p := &PrincipalParams{}
		v, check = p, func() error {
			if p.Name == "" || len(p.Roles) == 0 {
				return errors.New("add_principal: name and roles are required")
			}
			for _, r := range p.Roles {
				if !roles[r] {
					return fmt.Errorf("add_principal: unknown role %q", r)
				}
			}
			return nil
		}
	case KindRemovePrincipal, KindRemoveOfficer:
		p := &NameParams{}
		v, check = p, func() error {
			if p.Name == "" {
				return fmt.Errorf("%s: name is required", kind)
			}
			return nil
		}
	case KindAddOfficer:
		p := &OfficerParams{}
		v, check = p, func() error {
			if p.Name == "" || len(p.ApprovalKey) != ed25519.PublicKeySize {
				return errors.New("add_officer: name and a 32-byte Ed25519 approval_key are required")
			}
			return nil
		}
	case KindSetPolicy:
		p := &SetPolicyParams{}
		v, check = p, func() error {
			if p.KeyID == "" {
				return errors.New("set_policy: key_id is required")
			}
			return p.Rules.Validate()
		}
	case KindAllowlistAdd:
		p := &AllowlistParams{}
		v, check = p, func() error {
			if p.KeyID == "" || p.Address == "" {
				return errors.New("allowlist_add: key_id and address are required")
			}
			return nil
		}
	default:
		return nil, fmt.Errorf("unknown proposal kind %q", kind)
	}
	if len(raw) == 0 {
		raw = json.RawMessage("{}")
	}
	// As the body around them: a tool that reads these bytes before the
	// appliance (the first "key_id", or only the exact one) reads what is
	// proposed.
	if err := jsonstrict.Decode(bytes.NewReader(raw), v); err != nil {
		return nil, fmt.Errorf("%s parameters: %w", kind, err)
	}
	if err := check(); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}
