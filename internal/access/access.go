// Package access turns a verified client certificate into a principal and
// answers what that principal may do: which roles it holds and which keys
// it may sign with.
package access

import (
	"crypto/x509"
	"slices"
	"sync/atomic"

	"github.com/custodysigner/appliance/internal/config"
)

// Role is one of the API's roles.
type Role string

// Roles from ../shared/API.md.
const (
	RoleClient   Role = "client"
	RoleOfficer  Role = "officer"
	RoleAuditor  Role = "auditor"
	RoleOperator Role = "operator"
)

// PrincipalName returns the certificate's first URI SAN, else its subject CN.
func PrincipalName(cert *x509.Certificate) string {
	if len(cert.URIs) > 0 {
		return cert.URIs[0].String()
	}
	return cert.Subject.CommonName
}

// Principal is a registered identity.
type Principal struct {
	Name  string
	Roles []Role
	Keys  []string
}

// Has reports whether the principal holds role r.
func (p *Principal) Has(r Role) bool { return p != nil && slices.Contains(p.Roles, r) }

// HasAny reports whether the principal holds any of roles.
func (p *Principal) HasAny(roles ...Role) bool {
	for _, r := range roles {
		if p.Has(r) {
			return true
		}
	}
	return false
}

// Granted reports whether the principal may sign with key id.
func (p *Principal) Granted(keyID string) bool {
	return p.Has(RoleClient) && slices.Contains(p.Keys, keyID)
}

// Override is a principal changed by quorum: it replaces the
// configuration's entry of the same name, or removes it.
type Override struct {
	Name    string
	Roles   []string
	Keys    []string
	Removed bool
}

// Registry maps principal names to principals. Lookups are lock-free; a
// quorum decision swaps in a whole new map.
type Registry struct {
	byName atomic.Pointer[map[string]*Principal]
}

// NewRegistry builds a registry from the configuration's principals.
func NewRegistry(ps []config.Principal) *Registry {
	r := &Registry{}
	r.Set(ps, nil)
	return r
}

// Set rebuilds the registry: the configuration's principals with the
// quorum's overrides applied.
func (r *Registry) Set(ps []config.Principal, overrides []Override) {
	m := make(map[string]*Principal, len(ps)+len(overrides))
	for _, p := range ps {
		m[p.Name] = newPrincipal(p.Name, p.Roles, p.Keys)
	}
	for _, o := range overrides {
		if o.Removed {
			delete(m, o.Name)
			continue
		}
		m[o.Name] = newPrincipal(o.Name, o.Roles, o.Keys)
	}
	r.byName.Store(&m)
}

func newPrincipal(name string, roles, keys []string) *Principal {
	pr := &Principal{Name: name, Keys: slices.Clone(keys)}
	for _, role := range roles {
		pr.Roles = append(pr.Roles, Role(role))
	}
	return pr
}

// Lookup returns the registered principal, or nil.
func (r *Registry) Lookup(name string) *Principal { return (*r.byName.Load())[name] }

// Len is the number of registered principals.
func (r *Registry) Len() int { return len(*r.byName.Load()) }
