package access

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/config"
)

// fuzzCAKey signs the certificates of FuzzPrincipalName.
var fuzzCAKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// issue makes a certificate with common name cn and, when uri is not
// empty, exactly that string as its URI SAN (written as raw DER, so the
// fuzzer reaches crypto/x509's parsing of it, not only Go's encoder), and
// parses it as the TLS stack does.
func issue(tb testing.TB, cn, uri string) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Unix(1_700_000_000, 0), NotAfter: time.Unix(1_900_000_000, 0)}
	if uri != "" {
		san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(uri)}})
		if err != nil {
			return nil, err
		}
		tmpl.ExtraExtensions = []pkix.Extension{{Id: oidSAN, Value: san}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, fuzzCAKey.Public(), fuzzCAKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// FuzzPrincipalName: the principal a verified client certificate speaks
// for. It is the first URI SAN as crypto/x509 parsed it, else the subject
// CN; the name is a fixed point (a certificate issued for the name the
// appliance logs and an operator registers maps back to exactly that name);
// and the registry matches names exactly: no case folding, no trimming.
func FuzzPrincipalName(f *testing.F) {
	for _, s := range [][2]string{
		{"wallet-1", "spiffe://acme/svc/withdrawals"},
		{"officer-1", ""},
		{"ignored CN", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"},
		{"", "spiffe://acme/ops/monitoring?x=1#f"},
		{"Ünïcode ☃", ""},
		{"x", "HTTPS://Example.COM/a b/%41"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, cn, uri string) {
		cert, err := issue(t, cn, uri)
		if err != nil {
			return // refused by crypto/x509: no handshake would carry it
		}
		name := PrincipalName(cert)
		switch {
		case len(cert.URIs) > 0:
			if name != cert.URIs[0].String() {
				t.Fatalf("name %q, first URI SAN %q", name, cert.URIs[0])
			}
			if name == "" {
				// A SAN like "#" reads as the empty URI: the empty name,
				// which no principal can have (the configuration and
				// add_principal require one), so the certificate is refused.
				if r := NewRegistry(nil); r.Lookup(name) != nil {
					t.Fatal("the empty name is a principal")
				}
				return
			}
			again, err := issue(t, "other", name)
			if err != nil || PrincipalName(again) != name {
				t.Fatalf("a certificate issued for %q (from SAN %q) does not map back to it (%v)", name, uri, err)
			}
		case uri != "":
			t.Fatalf("SAN %q accepted but not parsed as a URI", uri)
		default:
			if name != cert.Subject.CommonName {
				t.Fatalf("name %q, CN %q", name, cert.Subject.CommonName)
			}
		}
		r := NewRegistry([]config.Principal{{Name: name, Roles: []string{"client"}}})
		if name != "" && r.Lookup(name) == nil {
			t.Fatalf("%q is registered but not found", name)
		}
		for _, other := range []string{strings.ToUpper(name), strings.ToLower(name), " " + name, name + "\x00", strings.TrimSpace(name)} {
			if other != name && r.Lookup(other) != nil {
				t.Fatalf("%q matches the principal %q", other, name)
			}
		}
	})
}
