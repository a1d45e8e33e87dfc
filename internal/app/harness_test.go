package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/devpki"
)

// env is one appliance under test: a fresh SoftHSM token, a dev PKI, a
// SQLite file, and the real server on a loopback port.
type env struct {
	t      *testing.T
	bodies bodyLog // every HTTP answer body, for secret scans
	dir    string
	cfg    *config.Config
	logs   *observer.ObservedLogs
	log    *zap.Logger
	url    string
	app    *App
	cancel context.CancelFunc
	done   chan error
	// interpose, if set before start, wraps the PKCS#11 library of the
	// modules the appliance opens (fault injection: hsm/hsmfault).
	interpose func(hsm.Cryptoki) hsm.Cryptoki
}

const testPrincipalPrefix = "spiffe://appliance.dev/"

type bodyLog struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (b *bodyLog) add(p []byte) {
	b.mu.Lock()
	b.bodies = append(b.bodies, p)
	b.mu.Unlock()
}

func (b *bodyLog) all() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Join(b.bodies, []byte("\n"))
}

// newEnv provisions token, PKI and config, and creates an Ethereum key
// "eth-dev" for chain id 1337 granted to the "client" principal. It does not
// start the server.
func newEnv(t *testing.T) *env { t.Helper(); return newEnvWith(t, "") }

// newEnvWith is newEnv with extra top-level YAML (e.g. a screening section).
func newEnvWith(t *testing.T, extraYAML string) *env {
	t.Helper()
	e, _ := newBareEnv(t, extraYAML)
	if _, err := CreateKey(context.Background(), e.cfg, e.log, KeySpec{ID: "eth-dev", Chain: "ethereum", Network: "1337"}, nil); err != nil {
		t.Fatal(err)
	}
	return e
}

// newBareEnv is newEnvWith before anything is created: a new token (whose
// user PIN it returns), its configuration, no database.
func newBareEnv(t *testing.T, extraYAML string) (*env, []byte) {
	t.Helper()
	uri, pin := softhsmtest.NewToken(t)
	dir := t.TempDir()
	// The PIN by path, as production configures it.
	pinFile := filepath.Join(dir, "user.pin")
	if err := os.WriteFile(pinFile, append(pin, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	uri.PinValue, uri.PinSource = "", "file:"+pinFile
	cfg := testConfig(t, dir, uri.String(), "seal: {auto_unseal: true}\n"+extraYAML, "client", "officer1", "auditor", "operator")
	core, logs := observer.New(zap.DebugLevel)
	e := &env{t: t, dir: dir, cfg: cfg, logs: logs, log: zap.New(core)}
	// Whatever a test did, the PIN never reached a log line (debug included).
	t.Cleanup(func() { e.assertNotLogged(string(pin)) })
	return e, pin
}

func (e *env) assertNotLogged(secret string) {
	for _, entry := range e.logs.All() {
		line := entry.Message
		for k, v := range entry.ContextMap() {
			line += fmt.Sprintf(" %s=%v", k, v)
		}
		if strings.Contains(line, secret) {
			e.t.Errorf("secret found in a log line: %q", entry.Message)
		}
	}
}

// testConfig writes a dev PKI into dir/pki and returns a parsed
// configuration for it: the given dev principals (client granted eth-dev
// and eth-other, the others by their role: officerN → officer), a store in
// dir, the HSM at uri, and extra top-level YAML.
func testConfig(t *testing.T, dir, uri, extraYAML string, principals ...string) *config.Config {
	t.Helper()
	pki := filepath.Join(dir, "pki")
	if err := devpki.Generate(pki, devpki.DefaultClients()); err != nil {
		t.Fatal(err)
	}
	var ps strings.Builder
	for _, p := range principals {
		role, keys := strings.TrimRight(p, "0123456789"), ""
		if role == "client" {
			keys = ", keys: [eth-dev, eth-other]"
		}
		fmt.Fprintf(&ps, "  - {name: %s%s, roles: [%s]%s}\n", testPrincipalPrefix, p, role, keys)
	}
	yaml := fmt.Sprintf(`
mode: dev
listen: 127.0.0.1:0
tls: {cert: %[1]s/server.crt, key: %[1]s/server.key, client_ca: %[1]s/ca.crt}
hsm: {uri: %[2]q, pool_size: 4, acquire_timeout: 2s}
store: {path: %[3]s/appliance.db}
log: {level: debug}
%[4]s
principals:
%[5]s`, pki, uri, dir, extraYAML, ps.String())
	cfg, err := config.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// start runs the appliance until the test ends.
func (e *env) start() {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, e.cfg, e.log, "test")
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	a.interpose = e.interpose
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		a.Close()
		e.t.Fatal(err)
	}
	e.app, e.cancel, e.done = a, cancel, make(chan error, 1)
	e.url = "https://" + ln.Addr().String()
	go func() { e.done <- a.ServeListener(ctx, ln) }()
	e.t.Cleanup(e.stop)
	deadline := time.Now().Add(30 * time.Second)
	for !a.Ready() {
		if time.Now().After(deadline) {
			e.t.Fatal("appliance not ready within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) stop() {
	if e.app == nil {
		return
	}
	e.cancel()
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("serve returned: %v", err)
		}
	case <-time.After(30 * time.Second):
		e.t.Error("serve did not return within 30s of cancellation")
	}
	e.app.Close()
	e.app = nil
}

// client returns an HTTPS client presenting the named dev certificate.
func (e *env) client(name string) *http.Client {
	e.t.Helper()
	pki := filepath.Join(e.dir, "pki")
	cfg := e.tlsConfig()
	if name != "" {
		cert, err := tls.LoadX509KeyPair(filepath.Join(pki, name+".crt"), filepath.Join(pki, name+".key"))
		if err != nil {
			e.t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 256}}
}

func (e *env) tlsConfig() *tls.Config {
	e.t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(e.dir, "pki", "ca.crt"))
	if err != nil {
		e.t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
}

type answer struct {
	status int
	body   []byte
	header http.Header
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("status %d, body %q: %v", a.status, a.body, err)
	}
	return m
}

func (a answer) code(t *testing.T) string {
	t.Helper()
	m := a.json(t)
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func (e *env) do(c *http.Client, method, path string, body any) (answer, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return answer{}, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	e.bodies.add(raw)
	return answer{status: resp.StatusCode, body: raw, header: resp.Header}, err
}

func (e *env) must(c *http.Client, method, path string, body any) answer {
	e.t.Helper()
	a, err := e.do(c, method, path, body)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	return a
}

// addClient2 registers a second upstream client, client2, granted eth-dev
// (before start), and returns its certificate, of the same CA.
func (e *env) addClient2() tls.Certificate {
	e.t.Helper()
	ca, err := devpki.LoadCA(filepath.Join(e.dir, "pki"))
	if err != nil {
		e.t.Fatal(err)
	}
	cert, err := ca.ClientCert("client2", testPrincipalPrefix+"client2")
	if err != nil {
		e.t.Fatal(err)
	}
	e.cfg.Principals = append(e.cfg.Principals, config.Principal{Name: testPrincipalPrefix + "client2", Roles: []string{"client"}, Keys: []string{"eth-dev"}})
	return cert
}
