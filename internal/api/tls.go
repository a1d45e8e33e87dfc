package api

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/custodysigner/appliance/internal/config"
)

// TLS is the server's TLS configuration: TLS 1.3 only, HTTP/1.1 by ALPN, a
// client certificate required and verified against the client CA bundle
// (chain, validity dates) and carrying the clientAuth extended key usage
// explicitly (a certificate without the extension, which X.509 lets serve
// any purpose, or with anyExtendedKeyUsage, is refused), no session
// tickets, and, when tls.crl is set, every client certificate checked
// against its issuer's CRL at every handshake. ReloadCRL re-reads the CRL
// file (SIGHUP).
//
// No session tickets: every connection is a full handshake with the
// client certificate verified against the CA and the CRL as they are now,
// and with no pre-shared key there is nothing 0-RTT (early data) could be
// sent under; Go's server refuses early data over TCP in any case.
type TLS struct {
	cfg     *tls.Config
	crlPath string
	cas     []*x509.Certificate
	crl     atomic.Pointer[revocations] // nil: no CRL configured
	now     func() time.Time
}

// NewTLS loads the server certificate, the client CA bundle and the CRL.
// A CRL that does not parse, is not signed by a CA of the bundle, is not
// yet valid or has passed its next update is refused with the reason.
func NewTLS(c config.TLS) (*TLS, error) {
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	caPEM, err := os.ReadFile(c.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	var cas []*x509.Certificate
	for rest := caPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		ca, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("client CA %s: %w", c.ClientCA, err)
		}
		pool.AddCert(ca)
		cas = append(cas, ca)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("client CA %s: no PEM certificate found", c.ClientCA)
	}
	t := &TLS{crlPath: c.CRL, cas: cas, now: time.Now}
	t.cfg = &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{cert},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              pool,
		NextProtos:             []string{"http/1.1"},
		SessionTicketsDisabled: true,
	}
	if c.CRL != "" {
		if _, err := t.ReloadCRL(); err != nil {
			return nil, err
		}
	}
	// VerifyConnection, unlike VerifyPeerCertificate, also runs on resumed
	// sessions, should tickets ever be turned on.
	t.cfg.VerifyConnection = t.verifyConnection
	return t, nil
}

// Config is the configuration for the http.Server.
func (t *TLS) Config() *tls.Config { return t.cfg }

// ReloadCRL re-reads tls.crl. A file that is refused (see NewTLS) leaves
// the CRL in force unchanged. It reports whether a CRL is configured.
func (t *TLS) ReloadCRL() (bool, error) {
	if t.crlPath == "" {
		return false, nil
	}
	r, err := loadCRL(t.crlPath, t.cas, t.now())
	if err != nil {
		return true, err
	}
	t.crl.Store(r)
	return true, nil
}

// CRLState is what the CRL in force says about itself.
type CRLState struct {
	Path       string
	LoadedAt   time.Time // when this file was put in force (at start or a reload)
	Issuers    []string  // subjects of the CAs it covers, sorted
	Revoked    int       // revoked serials, all issuers together
	NextUpdate time.Time // earliest of the CRLs' next updates (zero: none says)
	// Stale is true once a CRL has passed its next update: every client
	// certificate of its CA is then refused at the handshake.
	Stale bool
	Lists []CRLListState // one per CRL in force, by issuer
}

// CRLListState is one CA's CRL in force.
type CRLListState struct {
	Issuer     string
	ThisUpdate time.Time
	NextUpdate time.Time // zero: the CRL names none
	Revoked    int
	Stale      bool
}

// CRL describes the CRL in force (nil when none is configured).
func (t *TLS) CRL() *CRLState {
	r := t.crl.Load()
	if r == nil {
		return nil
	}
	now := t.now()
	st := &CRLState{Path: t.crlPath, LoadedAt: r.loadedAt}
	seen := map[*crlList]bool{} // a CRL signed by two CAs of the bundle is in byCA twice
	for _, l := range r.byCA {
		if seen[l] {
			continue
		}
		seen[l] = true
		ls := CRLListState{Issuer: l.issuer, ThisUpdate: l.this, NextUpdate: l.next, Revoked: len(l.serials), Stale: l.expired(now)}
		st.Lists = append(st.Lists, ls)
		st.Issuers = append(st.Issuers, l.issuer)
		st.Revoked += ls.Revoked
		st.Stale = st.Stale || ls.Stale
		if !l.next.IsZero() && (st.NextUpdate.IsZero() || l.next.Before(st.NextUpdate)) {
			st.NextUpdate = l.next
		}
	}
	slices.SortFunc(st.Lists, func(a, b CRLListState) int { return strings.Compare(a.Issuer, b.Issuer) })
	slices.Sort(st.Issuers)
	return st
}

// crlSkew is how far in the future a CRL's thisUpdate may be (the CA's
// clock ahead of ours) before the CRL is refused as not yet valid.
const crlSkew = 5 * time.Minute

// revocations is the CRL in force: one list per CA of the bundle that
// signed one.
type revocations struct {
	byCA     map[string]*crlList // by the CA certificate's DER
	loadedAt time.Time
}

type crlList struct {
	issuer  string
	serials map[string]bool
	this    time.Time
	next    time.Time
}

// expired reports whether the CRL has passed its next update at now: a
// stale CRL may miss revocations, so its CA's clients are refused.
func (l *crlList) expired(now time.Time) bool { return !l.next.IsZero() && !now.Before(l.next) }

// loadCRL reads one or more CRLs (PEM "X509 CRL" blocks, or one DER CRL).
// Each must be signed by a CA of cas and be current at now; of two CRLs
// from one CA the later (thisUpdate) is kept.
func loadCRL(path string, cas []*x509.Certificate, now time.Time) (*revocations, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CRL: %w", err)
	}
	var ders [][]byte
	if bytes.Contains(raw, []byte("-----BEGIN")) {
		for rest := raw; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if b.Type == "X509 CRL" {
				ders = append(ders, b.Bytes)
			}
		}
		if len(ders) == 0 {
			return nil, fmt.Errorf("CRL %s: no PEM \"X509 CRL\" block", path)
		}
	} else {
		ders = [][]byte{raw}
	}
	r := &revocations{byCA: map[string]*crlList{}, loadedAt: now}
	for i, der := range ders {
		list, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("CRL %s (#%d): %w", path, i+1, err)
		}
		var signers []*x509.Certificate
		for _, ca := range cas {
			if bytes.Equal(ca.RawSubject, list.RawIssuer) && list.CheckSignatureFrom(ca) == nil {
				signers = append(signers, ca)
			}
		}
		if len(signers) == 0 {
			return nil, fmt.Errorf("CRL %s (#%d, issuer %q) is not signed by a CA of tls.client_ca", path, i+1, list.Issuer.String())
		}
		switch {
		case list.ThisUpdate.After(now.Add(crlSkew)):
			return nil, fmt.Errorf("CRL %s (#%d, issuer %q) is not valid before %s", path, i+1, list.Issuer.String(), list.ThisUpdate.UTC().Format(time.RFC3339))
		case !list.NextUpdate.IsZero() && !now.Before(list.NextUpdate):
			return nil, fmt.Errorf("CRL %s (#%d, issuer %q) expired at %s (its next update): a fresh CRL is needed",
				path, i+1, list.Issuer.String(), list.NextUpdate.UTC().Format(time.RFC3339))
		}
		l := &crlList{issuer: list.Issuer.String(), serials: map[string]bool{}, this: list.ThisUpdate, next: list.NextUpdate}
		for _, e := range list.RevokedCertificateEntries {
			l.serials[e.SerialNumber.String()] = true
		}
		for _, ca := range signers {
			if prev := r.byCA[string(ca.Raw)]; prev == nil || l.this.After(prev.this) {
				r.byCA[string(ca.Raw)] = l
			}
		}
	}
	return r, nil
}

var (
	errRevoked   = errors.New("client certificate is revoked")
	errNoCRL     = errors.New("client certificate's issuer has no CRL in tls.crl")
	errNoEKU     = errors.New("client certificate does not carry the clientAuth extended key usage")
	errUnchecked = errors.New("client certificate not verified")
)

// verifyConnection runs after Go has verified the chain, dates and key
// usage. It refuses a client certificate without an explicit clientAuth
// extended key usage and, with a CRL, one that its issuer's CRL revokes,
// whose issuer has no CRL in the file, or whose issuer's CRL has passed its
// next update (fail closed: a stale CRL may miss revocations; a fresh file
// and SIGHUP restore service).
func (t *TLS) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return errUnchecked
	}
	if !slices.Contains(cs.PeerCertificates[0].ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return errNoEKU
	}
	r := t.crl.Load()
	if r == nil {
		return nil
	}
	now := t.now()
	for _, chain := range cs.VerifiedChains {
		if len(chain) < 2 {
			return errNoCRL
		}
		leaf, issuer := chain[0], chain[1]
		l := r.byCA[string(issuer.Raw)]
		switch {
		case l == nil:
			return fmt.Errorf("%w (issuer %q)", errNoCRL, issuer.Subject.String())
		case l.expired(now):
			return fmt.Errorf("the CRL of %q expired at %s (its next update): client certificates are refused until a fresh CRL is loaded",
				l.issuer, l.next.UTC().Format(time.RFC3339))
		case l.serials[leaf.SerialNumber.String()]:
			return fmt.Errorf("%w (serial %s, issuer %q)", errRevoked, leaf.SerialNumber.Text(16), l.issuer)
		}
	}
	return nil
}
