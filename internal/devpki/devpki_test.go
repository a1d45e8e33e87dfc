package devpki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type snapshot map[string]struct {
	data  []byte
	mtime time.Time
	mode  os.FileMode
}

func snap(t *testing.T, dir string) snapshot {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := snapshot{}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		s[e.Name()] = struct {
			data  []byte
			mtime time.Time
			mode  os.FileMode
		}{data, fi.ModTime(), fi.Mode()}
	}
	return s
}

func loadCert(t *testing.T, dir, name string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return pair.Leaf
}

func caPool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatal("ca.crt holds no certificate")
	}
	return p
}

func TestGenerateFilesAndCertificates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := Generate(dir, DefaultClients()); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	names := []string{"ca", "server"}
	for _, c := range DefaultClients() {
		names = append(names, c.Name)
	}
	s := snap(t, dir)
	if len(s) != 2*len(names) {
		t.Errorf("%d files, want %d (no temporary files left behind)", len(s), 2*len(names))
	}
	for _, n := range names {
		if m := s[n+".key"].mode.Perm(); m != 0o600 {
			t.Errorf("%s.key mode %v, want 0600", n, m)
		}
		if m := s[n+".crt"].mode.Perm(); m != 0o644 {
			t.Errorf("%s.crt mode %v, want 0644", n, m)
		}
	}

	ca := loadCert(t, dir, "ca")
	if !ca.IsCA || ca.Subject.CommonName != caCN {
		t.Errorf("ca.crt: IsCA=%v CN=%q", ca.IsCA, ca.Subject.CommonName)
	}
	roots := caPool(t, dir)
	serials := map[string]bool{ca.SerialNumber.String(): true}

	srv := loadCert(t, dir, "server")
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, DNSName: "localhost", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("server.crt as a server: %v", err)
	}
	for _, h := range []string{"127.0.0.1", "::1"} {
		if err := srv.VerifyHostname(h); err != nil {
			t.Errorf("server.crt for %s: %v", h, err)
		}
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("server.crt verified as a client certificate")
	}
	serials[srv.SerialNumber.String()] = true

	for _, c := range DefaultClients() {
		cert := loadCert(t, dir, c.Name)
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s.crt as a client: %v", c.Name, err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
			t.Errorf("%s.crt verified as a server certificate", c.Name)
		}
		if cert.Subject.CommonName != c.Name || len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://appliance.dev/"+c.Name {
			t.Errorf("%s.crt: CN=%q URIs=%v", c.Name, cert.Subject.CommonName, cert.URIs)
		}
		if got := cert.NotAfter.Sub(cert.NotBefore); got < Validity-time.Hour || got > Validity+time.Hour {
			t.Errorf("%s.crt valid for %v, want about %v", c.Name, got, Validity)
		}
		if cert.SerialNumber.BitLen() < 64 || cert.SerialNumber.BitLen() > 128 {
			t.Errorf("%s.crt serial has %d bits", c.Name, cert.SerialNumber.BitLen())
		}
		serials[cert.SerialNumber.String()] = true
	}
	if len(serials) != len(names) {
		t.Errorf("serial numbers repeat: %d distinct for %d certificates", len(serials), len(names))
	}
}

func TestGenerateTwiceChangesNothing(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(dir, DefaultClients()); err != nil {
		t.Fatal(err)
	}
	before := snap(t, dir)
	// Coarse filesystem timestamps must not hide a rewrite.
	time.Sleep(20 * time.Millisecond)
	if err := Generate(dir, DefaultClients()); err != nil {
		t.Fatal(err)
	}
	after := snap(t, dir)
	if len(after) != len(before) {
		t.Fatalf("%d files before, %d after", len(before), len(after))
	}
	for name, b := range before {
		a := after[name]
		if !bytes.Equal(a.data, b.data) || !a.mtime.Equal(b.mtime) || a.mode != b.mode {
			t.Errorf("%s changed on the second run", name)
		}
	}
}

func TestGenerateFillsInOnlyWhatIsMissing(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(dir, DefaultClients()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "officer2.key")); err != nil {
		t.Fatal(err)
	}
	before := snap(t, dir)
	extra := append(DefaultClients(), Client{Name: "bot", URISAN: "spiffe://appliance.dev/bot"})
	// officer3 asks for a different identity now: it must be reissued.
	extra[3].URISAN = "spiffe://appliance.dev/officer-three"
	if err := Generate(dir, extra); err != nil {
		t.Fatal(err)
	}
	after := snap(t, dir)
	changed := map[string]bool{"officer2.crt": true, "officer2.key": true, "officer3.crt": true, "officer3.key": true, "bot.crt": true, "bot.key": true}
	for name, a := range after {
		b, existed := before[name]
		same := existed && bytes.Equal(a.data, b.data)
		if changed[name] == same {
			t.Errorf("%s: rewritten=%v, want %v", name, !same, changed[name])
		}
	}
	if u := loadCert(t, dir, "officer3").URIs; len(u) != 1 || u[0].String() != "spiffe://appliance.dev/officer-three" {
		t.Errorf("officer3 URI SAN %v", u)
	}
	if _, err := loadCert(t, dir, "officer2").Verify(x509.VerifyOptions{Roots: caPool(t, dir), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("reissued officer2 does not chain to the reused CA: %v", err)
	}
}

func TestGenerateRefuses(t *testing.T) {
	tests := []struct {
		name    string
		clients []Client
		setup   func(dir string) error
	}{
		{"empty name", []Client{{Name: ""}}, nil},
		{"path in name", []Client{{Name: "../evil"}}, nil},
		{"reserved name", []Client{{Name: "server"}}, nil},
		{"duplicate", []Client{{Name: "a"}, {Name: "a"}}, nil},
		{"half a CA", nil, func(dir string) error { return os.WriteFile(filepath.Join(dir, "ca.key"), []byte("x"), 0o600) }},
		{"garbage CA", nil, func(dir string) error {
			return errors.Join(os.WriteFile(filepath.Join(dir, "ca.key"), []byte("x"), 0o600),
				os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("x"), 0o644))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.setup != nil {
				if err := tt.setup(dir); err != nil {
					t.Fatal(err)
				}
			}
			if err := Generate(dir, tt.clients); err == nil {
				t.Fatal("Generate succeeded")
			}
		})
	}
}

// handshake runs a TLS 1.3 handshake over loopback TCP between a server
// that requires and verifies client certificates and a client, and returns
// the server's error and the verified client certificate.
func handshake(t *testing.T, serverCert tls.Certificate, clientCAs *x509.CertPool, clientCert tls.Certificate, roots *x509.CertPool) (*x509.Certificate, error) {
	t.Helper()
	// Loopback TCP rather than net.Pipe: an unbuffered pipe makes both sides'
	// close_notify writes wait on each other until tls.Conn's 5 s close timeout.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	_ = sc.SetDeadline(deadline)
	_ = cc.SetDeadline(deadline)
	srv := tls.Server(sc, &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		MinVersion:   tls.VersionTLS13,
	})
	cli := tls.Client(cc, &tls.Config{
		// Always present the certificate: Go's client would otherwise withhold
		// one the server's CA list does not name, and the server's own
		// verification would go untested.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &clientCert, nil },
		RootCAs:              roots,
		ServerName:           "localhost",
		MinVersion:           tls.VersionTLS13,
	})
	done := make(chan error, 1)
	go func() {
		// In TLS 1.3 the client's handshake can finish before the server has
		// judged its certificate; a read surfaces the server's verdict.
		err := cli.Handshake()
		if err == nil {
			_, err = cli.Read(make([]byte, 1))
		}
		done <- err
		cli.Close()
	}()
	err = srv.Handshake()
	var peer *x509.Certificate
	if err == nil {
		st := srv.ConnectionState()
		if st.Version != tls.VersionTLS13 {
			t.Errorf("negotiated %x, want TLS 1.3", st.Version)
		}
		peer = st.PeerCertificates[0]
		_, _ = srv.Write([]byte{1})
	}
	srv.Close()
	if cerr := <-done; err == nil && cerr != nil {
		t.Errorf("client side: %v", cerr)
	}
	return peer, err
}

func TestHandshakeWithGeneratedFiles(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(dir, DefaultClients()); err != nil {
		t.Fatal(err)
	}
	load := func(name string) tls.Certificate {
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	pool := caPool(t, dir)
	peer, err := handshake(t, load("server"), pool, load("client"), pool)
	if err != nil {
		t.Fatalf("handshake with client.crt: %v", err)
	}
	if len(peer.URIs) != 1 || peer.URIs[0].String() != "spiffe://appliance.dev/client" {
		t.Errorf("server saw URI SANs %v", peer.URIs)
	}

	other, err := NewCA("someone else")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.ClientCert("client", "spiffe://appliance.dev/client")
	if err != nil {
		t.Fatal(err)
	}
	_, err = handshake(t, load("server"), pool, stranger, pool)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("client certificate from another CA: %v, want x509.UnknownAuthorityError", err)
	}
}

func TestCAClientCertificates(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	const ok = x509.InvalidReason(-1)
	tests := []struct {
		name string
		opts []ClientOption
		want x509.InvalidReason // ok, or why the server must refuse
	}{
		{"valid", nil, ok},
		{"expired", []ClientOption{WithValidity(now.Add(-48*time.Hour), now.Add(-24*time.Hour))}, x509.Expired},
		{"not yet valid", []ClientOption{WithValidity(now.Add(24*time.Hour), now.Add(48*time.Hour))}, x509.Expired},
		{"server EKU", []ClientOption{WithExtKeyUsage(x509.ExtKeyUsageServerAuth)}, x509.IncompatibleUsage},
		{"both EKUs", []ClientOption{WithExtKeyUsage(x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)}, ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := ca.ClientCert("svc", "spiffe://appliance.dev/svc", tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			peer, err := handshake(t, server, ca.Pool(), cert, ca.Pool())
			if tt.want != ok {
				var inv x509.CertificateInvalidError
				if !errors.As(err, &inv) || inv.Reason != tt.want {
					t.Fatalf("handshake: %v, want x509.CertificateInvalidError reason %d", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if peer.Subject.CommonName != "svc" || peer.URIs[0].String() != "spiffe://appliance.dev/svc" {
				t.Errorf("peer CN=%q URIs=%v", peer.Subject.CommonName, peer.URIs)
			}
		})
	}

	noURI, err := ca.ClientCert("plain", "")
	if err != nil || len(noURI.Leaf.URIs) != 0 {
		t.Fatalf("ClientCert without URI SAN: %v, URIs %v", err, noURI.Leaf.URIs)
	}
	if _, err := ca.ClientCert("bad", "://not a uri"); err == nil {
		t.Error("ClientCert accepted an unparsable URI SAN")
	}
	if !bytes.Contains(ca.PEM, []byte("BEGIN CERTIFICATE")) {
		t.Error("CA.PEM is not a PEM certificate")
	}
	custom, err := ca.Server("appliance.internal", "10.0.0.7")
	if err != nil {
		t.Fatal(err)
	}
	if custom.Leaf.VerifyHostname("appliance.internal") != nil || custom.Leaf.VerifyHostname("10.0.0.7") != nil || custom.Leaf.VerifyHostname("localhost") == nil {
		t.Errorf("Server(hosts) SANs: DNS %v IP %v", custom.Leaf.DNSNames, custom.Leaf.IPAddresses)
	}
}
