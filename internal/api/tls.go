package api

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/custodysigner/appliance/internal/config"
)

// TLSConfig builds the server's TLS: 1.3 only, a client certificate
// required and verified against the client CA bundle, and the CRL honoured
// when one is configured. Session tickets stay on (resumption is useful for
// keep-alive clients) but 0-RTT is never accepted: Go's server does not
// implement it.
func TLSConfig(c config.TLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	caPEM, err := os.ReadFile(c.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("client CA %s: no PEM certificate found", c.ClientCA)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
	if c.CRL != "" {
		crl, err := loadCRL(c.CRL, caPEM)
		if err != nil {
			return nil, err
		}
		cfg.VerifyPeerCertificate = crl.verify
	}
	return cfg, nil
}

type revocations struct {
	serials map[string]bool
	next    time.Time
}

func loadCRL(path string, caPEM []byte) (*revocations, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CRL: %w", err)
	}
	if b, _ := pem.Decode(raw); b != nil {
		raw = b.Bytes
	}
	list, err := x509.ParseRevocationList(raw)
	if err != nil {
		return nil, fmt.Errorf("CRL %s: %w", path, err)
	}
	// The CRL must be signed by one of the client CAs.
	var signed bool
	for rest := caPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		ca, err := x509.ParseCertificate(b.Bytes)
		if err == nil && list.CheckSignatureFrom(ca) == nil {
			signed = true
			break
		}
	}
	if !signed {
		return nil, fmt.Errorf("CRL %s is not signed by the client CA", path)
	}
	r := &revocations{serials: map[string]bool{}, next: list.NextUpdate}
	for _, e := range list.RevokedCertificateEntries {
		r.serials[e.SerialNumber.String()] = true
	}
	return r, nil
}

var errRevoked = errors.New("client certificate is revoked")

func (r *revocations) verify(_ [][]byte, chains [][]*x509.Certificate) error {
	for _, chain := range chains {
		if len(chain) > 0 && r.serials[chain[0].SerialNumber.String()] {
			return errRevoked
		}
	}
	return nil
}
