// Package access turns a verified client certificate into a principal and
// answers what that principal may do: which roles it holds and which keys
// it may sign with.
package access

import (
	"crypto/x509"
	"slices"

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

// Registry maps principal names to principals. It is immutable once built,
// so it is safe for concurrent use.
type Registry struct {
	byName map[string]*Principal
}

// NewRegistry builds a registry from the configuration's principals.
func NewRegistry(ps []config.Principal) *Registry {
	r := &Registry{byName: make(map[string]*Principal, len(ps))}
	for _, p := range ps {
		pr := &Principal{Name: p.Name, Keys: slices.Clone(p.Keys)}
		for _, role := range p.Roles {
			pr.Roles = append(pr.Roles, Role(role))
		}
		r.byName[p.Name] = pr
	}
	return r
}

// Lookup returns the registered principal, or nil.
func (r *Registry) Lookup(name string) *Principal { return r.byName[name] }

// Len is the number of registered principals.
func (r *Registry) Len() int { return len(r.byName) }
