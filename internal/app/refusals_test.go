package app

import (
	"context"
	"crypto/tls"
	"math/big"
	"net/http"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/devpki"
	"github.com/custodysigner/appliance/internal/store"
)

// TestHandshakeRefusals: no client certificate, a certificate from another
// CA, and TLS 1.2 get no handshake at all.
func TestHandshakeRefusals(t *testing.T) {
	e := newEnv(t)
	e.start()
	addr := strings.TrimPrefix(e.url, "https://")

	other, err := devpki.NewCA("some other CA")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.ClientCert("client", testPrincipalPrefix+"client")
	if err != nil {
		t.Fatal(err)
	}
	good, err := tls.LoadX509KeyPair(e.dir+"/pki/client.crt", e.dir+"/pki/client.key")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		mod  func(*tls.Config)
		ok   bool
	}{
		{"valid client certificate", func(c *tls.Config) { c.Certificates = []tls.Certificate{good} }, true},
		{"no client certificate", func(c *tls.Config) {}, false},
		{"certificate from another CA", func(c *tls.Config) { c.Certificates = []tls.Certificate{foreign} }, false},
		{"TLS 1.2", func(c *tls.Config) {
			c.Certificates = []tls.Certificate{good}
			c.MaxVersion = tls.VersionTLS12
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.tlsConfig()
			tc.mod(cfg)
			conn, err := tls.Dial("tcp", addr, cfg)
			if err == nil {
				// In TLS 1.3 the client learns of a refused certificate on its
				// first read, after the server has checked it.
				_, err = conn.Write([]byte("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"))
				if err == nil {
					buf := make([]byte, 64)
					_, err = conn.Read(buf)
				}
				conn.Close()
			}
			if tc.ok && err != nil {
				t.Fatalf("handshake refused: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatal("handshake accepted")
			}
		})
	}
}

// TestAccessAndDecodeRefusals covers the stable error codes of the
// foundation.
func TestAccessAndDecodeRefusals(t *testing.T) {
	e := newEnv(t)
	e.start()
	stranger := devpkiClient(t, e, "stranger")
	to := common.HexToAddress("0x00000000000000000000000000000000000000dd")
	good := unsignedEIP1559(t, 1337, 1, to, big.NewInt(1))

	// An unregistered principal reaches /v1/health and nothing else.
	if a := e.must(stranger, "GET", "/v1/health", nil); a.status != http.StatusOK || a.json(t)["status"] != "ok" {
		t.Fatalf("health for an unregistered principal: %d %s", a.status, a.body)
	}
	for _, ep := range []struct{ method, path string }{{"GET", "/v1/status"}, {"GET", "/v1/keys"}, {"GET", "/v1/keys/eth-dev"}, {"POST", "/v1/sign"}, {"GET", "/v1/requests/req_x"}} {
		var body any
		if ep.method == "POST" {
			body = signBody(good, "s")
		}
		a := e.must(stranger, ep.method, ep.path, body)
		if a.status != http.StatusForbidden || a.code(t) != "forbidden" {
			t.Errorf("unregistered %s %s: %d %s", ep.method, ep.path, a.status, a.body)
		}
	}

	c := e.client("client")
	cases := []struct {
		name   string
		body   any
		status int
		code   string
	}{
		{"wrong chain id in the transaction", signBody(unsignedEIP1559(t, 1, 1, to, big.NewInt(1)), "w1"), 422, "wrong_network"},
		{"wrong network named", map[string]string{"key_id": "eth-dev", "chain": "ethereum", "network": "mainnet", "payload": good}, 422, "wrong_network"},
		{"garbage payload", signBody("0x02deadbeef", "g1"), 422, "decode_failed"},
		{"not hex", signBody("hello", "g2"), 422, "decode_failed"},
		{"blob transaction type", signBody("0x03c0", "g3"), 422, "unsupported"},
		{"malformed JSON", []byte(`{"key_id":`), 400, "bad_request"},
		{"unknown field", []byte(`{"key_id":"eth-dev","chain":"ethereum","payload":"0x02","colour":"red"}`), 400, "bad_request"},
		{"missing payload", map[string]string{"key_id": "eth-dev", "chain": "ethereum"}, 400, "bad_request"},
		{"unknown key", map[string]string{"key_id": "nope", "chain": "ethereum", "payload": good}, 404, "not_found"},
		{"body over 1 MiB", []byte(`{"payload":"` + strings.Repeat("a", 1<<20) + `"}`), 413, "too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := e.must(c, "POST", "/v1/sign", tc.body)
			if a.status != tc.status || a.code(t) != tc.code {
				t.Fatalf("got %d %s, want %d %s", a.status, a.body, tc.status, tc.code)
			}
		})
	}
	// An officer is registered but has no client role: no signing.
	if a := e.must(e.client("officer1"), "POST", "/v1/sign", signBody(good, "o1")); a.status != http.StatusForbidden {
		t.Fatalf("officer signs: %d %s", a.status, a.body)
	}
	// Nothing was recorded for any refusal above: decode and access checks
	// come before the record.
	st, err := store.Open(context.Background(), e.cfg.Store.Path, e.log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, state := range []string{store.StateSigning, store.StateSigned, store.StateFailed} {
		if n, _ := st.CountRequests(context.Background(), state); n != 0 {
			t.Errorf("%d requests in state %s after refusals only", n, state)
		}
	}
}

// devpkiClient mints a certificate from the appliance's own CA for a
// principal that is not registered.
func devpkiClient(t *testing.T, e *env, name string) *http.Client {
	t.Helper()
	if err := devpki.Generate(e.dir+"/pki", []devpki.Client{{Name: name, URISAN: testPrincipalPrefix + name}}); err != nil {
		t.Fatal(err)
	}
	return e.client(name)
}
