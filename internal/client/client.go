// Package client is the appliance's own API client, used by the officer
// commands of the CLI (unseal, freeze, propose, approve). It speaks mutual
// TLS 1.3 with the officer's certificate.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Options locate the appliance and the caller's certificate.
type Options struct {
	URL  string // https://host:port
	Cert string // client certificate (PEM)
	Key  string // its key (PEM)
	CA   string // CA bundle that signed the server certificate (PEM)
}

// FromEnv fills empty fields from APPLIANCE_URL, APPLIANCE_CERT,
// APPLIANCE_KEY and APPLIANCE_CA.
func (o *Options) FromEnv() {
	for _, f := range []struct {
		p   *string
		env string
	}{{&o.URL, "APPLIANCE_URL"}, {&o.Cert, "APPLIANCE_CERT"}, {&o.Key, "APPLIANCE_KEY"}, {&o.CA, "APPLIANCE_CA"}} {
		if *f.p == "" {
			*f.p = os.Getenv(f.env)
		}
	}
	if o.URL == "" {
		o.URL = "https://127.0.0.1:8443"
	}
}

// Client calls the API.
type Client struct {
	base string
	http *http.Client
}

// New builds a client; every option is required.
func New(o Options) (*Client, error) {
	if o.Cert == "" || o.Key == "" || o.CA == "" {
		return nil, errors.New("client: --tls-cert, --tls-key and --ca (or APPLIANCE_CERT, APPLIANCE_KEY, APPLIANCE_CA) are required")
	}
	cert, err := tls.LoadX509KeyPair(o.Cert, o.Key)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(o.CA)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("CA %s: no certificate", o.CA)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{cert}}}
	return &Client{base: strings.TrimRight(o.URL, "/"), http: &http.Client{Transport: tr, Timeout: 60 * time.Second}}, nil
}

// Error is an API error answer.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// Do sends body (nil for none) and decodes a 2xx answer into out (nil to discard).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var eb struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.Unmarshal(raw, &eb)
		return &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}
