package access

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"

	"github.com/custodysigner/appliance/internal/config"
)

func TestPrincipalName(t *testing.T) {
	u1, _ := url.Parse("spiffe://acme/svc/withdrawals")
	u2, _ := url.Parse("spiffe://acme/svc/other")
	cases := []struct {
		cert x509.Certificate
		want string
	}{
		{x509.Certificate{Subject: pkix.Name{CommonName: "cn"}, URIs: []*url.URL{u1, u2}}, "spiffe://acme/svc/withdrawals"},
		{x509.Certificate{Subject: pkix.Name{CommonName: "treasury"}}, "treasury"},
	}
	for _, tc := range cases {
		if got := PrincipalName(&tc.cert); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

func TestRegistry(t *testing.T) {
	r := NewRegistry([]config.Principal{
		{Name: "c", Roles: []string{"client"}, Keys: []string{"k1"}},
		{Name: "o", Roles: []string{"officer", "auditor"}, Keys: []string{"k1"}},
	})
	c, o := r.Lookup("c"), r.Lookup("o")
	if r.Lookup("nobody") != nil || r.Len() != 2 {
		t.Fatal("lookup")
	}
	if !c.Granted("k1") || c.Granted("k2") {
		t.Fatal("client grants")
	}
	// Keys listed for a principal without the client role grant nothing.
	if o.Granted("k1") {
		t.Fatal("an officer is not a signing client")
	}
	if !o.HasAny(RoleAuditor) || o.Has(RoleClient) || c.HasAny(RoleOfficer, RoleAuditor) {
		t.Fatal("roles")
	}
	var none *Principal
	if none.Has(RoleClient) {
		t.Fatal("nil principal has no roles")
	}
}
