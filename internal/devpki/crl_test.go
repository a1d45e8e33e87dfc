package devpki

import (
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

func TestCRLAndLoadCA(t *testing.T) {
	dir := t.TempDir()
	if err := Generate(dir, DefaultClients()); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.Equal(loadCert(t, dir, "ca")) {
		t.Fatal("LoadCA read another CA")
	}
	now := time.Now().Truncate(time.Second)
	b, err := ca.CRL(now, now.Add(time.Hour), big.NewInt(7), big.NewInt(9))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "X509 CRL" {
		t.Fatalf("not a PEM CRL: %q", b)
	}
	l, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if !l.ThisUpdate.Equal(now) || !l.NextUpdate.Equal(now.Add(time.Hour)) || len(l.RevokedCertificateEntries) != 2 ||
		l.RevokedCertificateEntries[1].SerialNumber.Int64() != 9 {
		t.Fatalf("CRL %+v", l)
	}
	if _, err := LoadCA(t.TempDir()); err == nil {
		t.Fatal("LoadCA of an empty directory")
	}
}
