package api

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/devpki"
)

// tlsFiles writes a CA, a server certificate and the CA bundle into a
// temporary directory and returns the tls section for them.
func tlsFiles(t *testing.T, ca *devpki.CA) config.TLS {
	t.Helper()
	dir := t.TempDir()
	srv, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srv.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return config.TLS{
		Cert:     write("server.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate[0]})),
		Key:      write("server.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		ClientCA: write("ca.crt", ca.PEM),
	}
}

func writeCRL(t *testing.T, dir string, crls ...[]byte) string {
	t.Helper()
	p := filepath.Join(dir, "clients.crl")
	if err := os.WriteFile(p, []byte(strings.Join(func() []string {
		var s []string
		for _, c := range crls {
			s = append(s, string(c))
		}
		return s
	}(), "")), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustCRL(t *testing.T, ca *devpki.CA, this, next time.Time, revoked ...*big.Int) []byte {
	t.Helper()
	b, err := ca.CRL(this, next, revoked...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTLSConfigHardening: TLS 1.3 only, HTTP/1.1 by ALPN, no session
// tickets (so no resumption and nothing for 0-RTT), client certificates
// required and verified.
func TestTLSConfigHardening(t *testing.T) {
	_, tc := clientsTLS(t)
	c := tc.Config()
	if c.MinVersion != tls.VersionTLS13 || c.MaxVersion != tls.VersionTLS13 || c.ClientAuth != tls.RequireAndVerifyClientCert ||
		!c.SessionTicketsDisabled || len(c.NextProtos) != 1 || c.NextProtos[0] != "http/1.1" || c.VerifyConnection == nil {
		t.Fatalf("TLS configuration: %+v", c)
	}
	if tc.CRL() != nil {
		t.Fatal("a CRL without tls.crl")
	}
}

// TestCRLLoading: what tls.crl accepts and what it refuses at start (and at
// a reload, which keeps the CRL in force).
func TestCRLLoading(t *testing.T) {
	ca, err := devpki.NewCA("Clients CA")
	if err != nil {
		t.Fatal(err)
	}
	// Same subject, another key: its CRLs name our CA but are not signed by it.
	impostor, err := devpki.NewCA("Clients CA")
	if err != nil {
		t.Fatal(err)
	}
	files := tlsFiles(t, ca)
	dir := filepath.Dir(files.ClientCA)
	now := time.Now()
	good := mustCRL(t, ca, now.Add(-time.Hour), now.Add(24*time.Hour), big.NewInt(7))
	der, _ := pem.Decode(good)
	cases := []struct {
		name string
		data []byte
		want string // "" accepted, else a fragment of the error
	}{
		{"PEM", good, ""},
		{"DER", der.Bytes, ""},
		{"two CRLs of one CA: the later counts", append(mustCRL(t, ca, now.Add(-2*time.Hour), now.Add(time.Hour)), good...), ""},
		{"expired (next update passed)", mustCRL(t, ca, now.Add(-48*time.Hour), now.Add(-time.Hour)), "expired at"},
		{"not yet valid", mustCRL(t, ca, now.Add(time.Hour), now.Add(48*time.Hour)), "is not valid before"},
		{"signed by another key", mustCRL(t, impostor, now.Add(-time.Hour), now.Add(24*time.Hour)), "not signed by a CA of tls.client_ca"},
		{"not a CRL", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "no PEM \"X509 CRL\" block"},
		{"garbage DER", []byte{0x30, 0x03, 0x01, 0x02, 0x03}, "CRL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := files
			f.CRL = writeCRL(t, dir, tc.data)
			got, err := NewTLS(f)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				st := got.CRL()
				if st == nil || st.Revoked != 1 || st.NextUpdate.Before(now.Add(23*time.Hour)) {
					t.Fatalf("CRL state %+v, want the later CRL with one serial", st)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	if _, err := NewTLS(config.TLS{Cert: files.Cert, Key: files.Key, ClientCA: files.ClientCA, CRL: filepath.Join(dir, "missing.crl")}); err == nil {
		t.Fatal("a missing CRL file was accepted")
	}

	// A reload that is refused keeps the CRL in force.
	f := files
	f.CRL = writeCRL(t, dir, good)
	tc, err := NewTLS(f)
	if err != nil {
		t.Fatal(err)
	}
	writeCRL(t, dir, mustCRL(t, impostor, now.Add(-time.Hour), now.Add(24*time.Hour)))
	if configured, err := tc.ReloadCRL(); !configured || err == nil {
		t.Fatalf("reload of a forged CRL: configured %v, err %v", configured, err)
	}
	if st := tc.CRL(); st == nil || st.Revoked != 1 {
		t.Fatalf("after a refused reload: %+v", st)
	}
	writeCRL(t, dir, mustCRL(t, ca, now, now.Add(time.Hour), big.NewInt(7), big.NewInt(8)))
	if _, err := tc.ReloadCRL(); err != nil || tc.CRL().Revoked != 2 {
		t.Fatalf("reload of a fresh CRL: %v, %+v", err, tc.CRL())
	}
}

// TestVerifyConnection: the checks after Go's own chain verification.
func TestVerifyConnection(t *testing.T) {
	ca, err := devpki.NewCA("Clients CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := devpki.NewCA("Partner CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(ca *devpki.CA, opts ...devpki.ClientOption) *x509.Certificate {
		c, err := ca.ClientCert("svc", "spiffe://appliance.dev/svc", opts...)
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf
	}
	good, revoked := leaf(ca), leaf(ca)
	noEKU := leaf(ca, devpki.WithExtKeyUsage())
	anyEKU := leaf(ca, devpki.WithExtKeyUsage(x509.ExtKeyUsageAny))
	partner := leaf(other)
	state := func(l, issuer *x509.Certificate) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{l}, VerifiedChains: [][]*x509.Certificate{{l, issuer}}}
	}

	files := tlsFiles(t, ca)
	// Both CAs in the bundle; the CRL covers only ours.
	bundle := append(append([]byte{}, ca.PEM...), other.PEM...)
	if err := os.WriteFile(files.ClientCA, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	plain, err := NewTLS(files)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	files.CRL = writeCRL(t, filepath.Dir(files.ClientCA), mustCRL(t, ca, now.Add(-time.Hour), now.Add(time.Hour), revoked.SerialNumber))
	withCRL, err := NewTLS(files)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		tc       *TLS
		cs       tls.ConnectionState
		want     error // nil: accepted
		fragment string
	}{
		{"valid, no CRL", plain, state(good, ca.Cert), nil, ""},
		{"partner CA, no CRL", plain, state(partner, other.Cert), nil, ""},
		{"no EKU extension", plain, state(noEKU, ca.Cert), errNoEKU, ""},
		{"anyExtendedKeyUsage", plain, state(anyEKU, ca.Cert), errNoEKU, ""},
		{"not verified", plain, tls.ConnectionState{PeerCertificates: []*x509.Certificate{good}}, errUnchecked, ""},
		{"valid, CRL", withCRL, state(good, ca.Cert), nil, ""},
		{"revoked", withCRL, state(revoked, ca.Cert), errRevoked, revoked.SerialNumber.Text(16)},
		{"issuer without a CRL", withCRL, state(partner, other.Cert), errNoCRL, "Partner CA"},
		{"chain of one", withCRL, tls.ConnectionState{PeerCertificates: []*x509.Certificate{good}, VerifiedChains: [][]*x509.Certificate{{good}}}, errNoCRL, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.tc.verifyConnection(c.cs)
			if c.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.fragment) {
				t.Fatalf("got %v, want %v with %q", err, c.want, c.fragment)
			}
		})
	}
	// The CRL passes its next update while loaded: every client is refused
	// (fail closed) until a fresh CRL is loaded.
	withCRL.now = func() time.Time { return now.Add(2 * time.Hour) }
	if err := withCRL.verifyConnection(state(good, ca.Cert)); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("stale CRL: %v", err)
	}
}

// clientsTLS is the API's TLS for a new dev "Clients CA", and the CA.
func clientsTLS(t *testing.T) (*devpki.CA, *TLS) {
	t.Helper()
	ca, err := devpki.NewCA("Clients CA")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := NewTLS(tlsFiles(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	return ca, tc
}
