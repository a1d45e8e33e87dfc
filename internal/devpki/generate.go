package devpki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Client names one client certificate that Generate writes as NAME.crt and NAME.key.
type Client struct {
	Name   string // file name stem and subject CN
	URISAN string // e.g. "spiffe://appliance.dev/client"; empty for none
}

// DefaultClients returns the principals the development config registers:
// an upstream client, three officers, an auditor and an operator.
func DefaultClients() []Client {
	names := []string{"client", "officer1", "officer2", "officer3", "auditor", "operator"}
	cs := make([]Client, len(names))
	for i, n := range names {
		cs[i] = Client{Name: n, URISAN: "spiffe://appliance.dev/" + n}
	}
	return cs
}

// caCN is the subject of the CA Generate creates.
const caCN = "Appliance Development CA"

// Generate writes a development PKI into dir (created 0700): ca.crt/ca.key,
// server.crt/server.key for localhost, 127.0.0.1 and ::1, and NAME.crt/NAME.key
// per client. Keys are 0600, certificates 0644. It is idempotent: an existing
// CA is reused, and a leaf is rewritten only if a file is missing or no longer
// matches (wrong CA, expired, changed URI SAN, key mismatch), so running it
// again changes nothing.
func Generate(dir string, clients []Client) error {
	if err := checkNames(clients); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("devpki: create %s: %w", dir, err)
	}
	ca, err := loadOrCreateCA(dir)
	if err != nil {
		return err
	}
	want := []leafSpec{{name: "server", eku: x509.ExtKeyUsageServerAuth, cn: "localhost"}}
	for _, c := range clients {
		want = append(want, leafSpec{name: c.Name, eku: x509.ExtKeyUsageClientAuth, cn: c.Name, uri: c.URISAN})
	}
	for _, l := range want {
		if l.current(dir, ca) {
			continue
		}
		var cert tls.Certificate
		if l.eku == x509.ExtKeyUsageServerAuth {
			cert, err = ca.Server("localhost", "127.0.0.1", "::1")
		} else {
			cert, err = ca.ClientCert(l.cn, l.uri)
		}
		if err != nil {
			return err
		}
		if err := writePair(dir, l.name, cert.Certificate[0], cert.PrivateKey); err != nil {
			return err
		}
	}
	return nil
}

func checkNames(clients []Client) error {
	seen := map[string]bool{"ca": true, "server": true}
	for _, c := range clients {
		if c.Name == "" || c.Name == "." || c.Name == ".." || filepath.Base(c.Name) != c.Name || seen[c.Name] {
			return fmt.Errorf("devpki: client name %q is empty, reserved, repeated or not a plain file name", c.Name)
		}
		seen[c.Name] = true
	}
	return nil
}

type leafSpec struct {
	name, cn, uri string
	eku           x509.ExtKeyUsage
}

// current reports whether NAME.crt and NAME.key exist, belong together,
// chain to ca with the right EKU, and still say what was asked for.
func (l leafSpec) current(dir string, ca *CA) bool {
	cert, _, err := readPair(dir, l.name)
	if err != nil || cert.Subject.CommonName != l.cn {
		return false
	}
	_, err = cert.Verify(x509.VerifyOptions{
		Roots:       ca.Pool(),
		KeyUsages:   []x509.ExtKeyUsage{l.eku},
		CurrentTime: time.Now().Add(24 * time.Hour), // reissue rather than expire mid-session
	})
	if err != nil {
		return false
	}
	if l.eku == x509.ExtKeyUsageServerAuth {
		return cert.VerifyHostname("localhost") == nil && cert.VerifyHostname("127.0.0.1") == nil && cert.VerifyHostname("::1") == nil
	}
	if l.uri == "" {
		return len(cert.URIs) == 0
	}
	return len(cert.URIs) == 1 && cert.URIs[0].String() == l.uri
}

// LoadCA reads the CA that Generate wrote into dir (ca.crt and ca.key), to
// mint more certificates or CRLs from it.
func LoadCA(dir string) (*CA, error) {
	cert, key, err := readPair(dir, "ca")
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("devpki: %s/ca.crt is not a CA", dir)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil
}

// loadOrCreateCA reuses dir/ca.crt and ca.key, or creates both when neither exists.
func loadOrCreateCA(dir string) (*CA, error) {
	cert, key, err := readPair(dir, "ca")
	switch {
	case err == nil:
		if !cert.IsCA || time.Now().After(cert.NotAfter) {
			return nil, fmt.Errorf("devpki: %s/ca.crt is not a CA or has expired; remove the directory to start over", dir)
		}
		return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	// Half a CA (one file without the other) is refused rather than
	// overwritten: it is not ours to guess which half is wanted.
	for _, f := range []string{"ca.crt", "ca.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("devpki: %s/%s exists without its pair; remove it or restore the other", dir, f)
		}
	}
	ca, err := NewCA(caCN)
	if err != nil {
		return nil, err
	}
	if err := writePair(dir, "ca", ca.Cert.Raw, ca.Key); err != nil {
		return nil, err
	}
	return ca, nil
}

func readPair(dir, name string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, name+".crt"))
	if err != nil {
		return nil, nil, fmt.Errorf("devpki: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, name+".key"))
	if err != nil {
		return nil, nil, fmt.Errorf("devpki: %w", err)
	}
	// X509KeyPair also proves the key belongs to the certificate.
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("devpki: %s/%s: %w", dir, name, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("devpki: %s/%s.key is not a signing key", dir, name)
	}
	return pair.Leaf, signer, nil
}

// writePair writes the key before the certificate, each atomically, so a
// certificate on disk always has its key beside it.
func writePair(dir, name string, certDER []byte, key crypto.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("devpki: marshal %s key: %w", name, err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeAtomic(filepath.Join(dir, name+".key"), keyPEM, 0o600); err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	return writeAtomic(filepath.Join(dir, name+".crt"), certPEM, 0o644)
}

// writeAtomic replaces path with data via a temporary file and rename, so a
// crash never leaves a truncated key, and the mode is set before any byte is
// written so a key is never briefly world-readable.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("devpki: %w", err)
	}
	tmp := f.Name()
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("devpki: write %s: %w", path, err)
	}
	return nil
}
