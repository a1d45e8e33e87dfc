// Package devpki mints the certificates that development and tests use for
// mutual TLS: a CA, a server certificate for localhost, and one client
// certificate per principal. Nothing here is for production, where the
// operator's own PKI issues these.
package devpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"
)

// Validity is how long generated certificates last.
const Validity = 2 * 365 * 24 * time.Hour

// backdate absorbs clock skew between the machine that mints and the one that verifies.
const backdate = 5 * time.Minute

// CA is a certificate authority held in memory.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte // Cert, PEM-encoded
}

// NewCA returns a fresh self-signed CA with an ECDSA P-256 key, valid for Validity.
func NewCA(cn string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devpki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"custodysigner development"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(Validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// Leaves only: a dev CA that could mint intermediates would be a
		// bigger key to lose than it needs to be.
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("devpki: self-sign CA: %w", err)
	}
	return caFromDER(der, key)
}

func caFromDER(der []byte, key crypto.Signer) (*CA, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("devpki: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Pool returns a pool holding only this CA, for ClientCAs or RootCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Server mints a server certificate (ExtKeyUsage ServerAuth) for hosts, each
// an IP address or a DNS name. With no hosts it covers localhost, 127.0.0.1 and ::1.
func (ca *CA) Server(hosts ...string) (tls.Certificate, error) {
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0]},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issue(tmpl, clientOptions{})
}

// ClientOption changes a client certificate, mostly to make it wrong on purpose.
type ClientOption func(*clientOptions)

type clientOptions struct {
	notBefore, notAfter time.Time
	eku                 []x509.ExtKeyUsage
	ekuSet              bool
}

// WithValidity sets the validity window, e.g. one wholly in the past (expired)
// or in the future (not yet valid).
func WithValidity(notBefore, notAfter time.Time) ClientOption {
	return func(o *clientOptions) { o.notBefore, o.notAfter = notBefore, notAfter }
}

// WithExtKeyUsage replaces the ClientAuth extended key usage, e.g. with
// ServerAuth to get a certificate a server must refuse. No arguments means no
// EKU extension at all.
func WithExtKeyUsage(eku ...x509.ExtKeyUsage) ClientOption {
	return func(o *clientOptions) { o.eku, o.ekuSet = eku, true }
}

// ClientCert mints a client certificate with subject CN cn, ExtKeyUsage
// ClientAuth and, when uriSAN is not empty, that URI SAN.
func (ca *CA) ClientCert(cn, uriSAN string, opts ...ClientOption) (tls.Certificate, error) {
	var o clientOptions
	for _, opt := range opts {
		opt(&o)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if o.ekuSet {
		tmpl.ExtKeyUsage = o.eku
	}
	if uriSAN != "" {
		u, err := url.Parse(uriSAN)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("devpki: URI SAN %q: %w", uriSAN, err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	return ca.issue(tmpl, o)
}

// issue fills in serial, validity and a fresh P-256 key, and signs tmpl.
func (ca *CA) issue(tmpl *x509.Certificate, o clientOptions) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("devpki: generate key: %w", err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-backdate), now.Add(Validity)
	// A leaf outliving its CA would only fail later and more confusingly.
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	if !o.notBefore.IsZero() || !o.notAfter.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = o.notBefore, o.notAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("devpki: sign %q: %w", tmpl.Subject.CommonName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("devpki: parse %q: %w", tmpl.Subject.CommonName, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// newSerial returns a random positive 128-bit serial number, as the CA/B
// baseline asks, so serials never collide and reveal nothing.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("devpki: serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// CRL returns a PEM "X509 CRL" signed by the CA, revoking the given serial
// numbers, issued at thisUpdate and due for renewal at nextUpdate. Tests
// use it for revoked certificates and for expired and foreign-signed CRLs.
func (ca *CA) CRL(thisUpdate, nextUpdate time.Time, revoked ...*big.Int) ([]byte, error) {
	entries := make([]x509.RevocationListEntry, len(revoked))
	for i, s := range revoked {
		entries[i] = x509.RevocationListEntry{SerialNumber: s, RevocationTime: thisUpdate}
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(thisUpdate.UnixNano()),
		ThisUpdate:                thisUpdate,
		NextUpdate:                nextUpdate,
		RevokedCertificateEntries: entries,
	}, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("devpki: sign CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}
