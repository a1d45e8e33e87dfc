package loadgen

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestConnPostDeadline: a server that never answers costs Post its
// timeout, not forever; the next Post redials; answers are copies.
func TestConnPostDeadline(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength == 4 { // "hang"
			<-release
			return
		}
		_, _ = w.Write([]byte(`{"state":"signed"}`))
	}))
	srv.StartTLS()
	defer srv.Close()
	defer close(release)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	cfg := &tls.Config{RootCAs: roots, ServerName: "example.com", NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS13}
	addr := srv.Listener.Addr().String()
	c := &Conn{c: newConn(addr, addr, "/v1/sign", cfg), timeout: 300 * time.Millisecond}
	defer c.Close()

	status, first, err := c.Post([]byte("{}"))
	if err != nil || status != 200 {
		t.Fatalf("first post: %d %v", status, err)
	}
	start := time.Now()
	_, _, err = c.Post([]byte("hang"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("post to a server that does not answer: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the timed-out post took %v", d)
	}
	status, again, err := c.Post([]byte("{}"))
	if err != nil || status != 200 || string(first) != string(again) {
		t.Fatalf("post after the timeout: %d %q %v", status, again, err)
	}
	first[0] = 'X' // a copy: the connection's buffer is not shared
	if status, b, _ := c.Post([]byte("{}")); status != 200 || b[0] != '{' {
		t.Fatalf("the answer aliases the connection's buffer: %q", b)
	}

	if _, err := NewConn("no-port", "/v1/sign", TLSFiles{}, time.Second); err == nil {
		t.Fatal("NewConn accepted an address without a port")
	}
	if _, err := NewConn(addr, "/v1/sign", TLSFiles{}, 0); err == nil {
		t.Fatal("NewConn accepted no timeout")
	}
}

// TestBodiesFreshKeys: every body has a new idempotency key and payload.
func TestBodiesFreshKeys(t *testing.T) {
	b, err := EthBodies("eth-dev", 1337, "t")
	if err != nil {
		t.Fatal(err)
	}
	keys, payloads := map[string]bool{}, map[string]bool{}
	for range 20 {
		raw, err := b.Next()
		if err != nil {
			t.Fatal(err)
		}
		var s signBody
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		if keys[s.IdempotencyKey] || payloads[s.Payload] || s.KeyID != "eth-dev" || s.Network != "1337" {
			t.Fatalf("body %s repeats a key or payload, or names another key or network", raw)
		}
		keys[s.IdempotencyKey], payloads[s.Payload] = true, true
	}
	if EthValue().Cmp(ethValue) != 0 || BTCPayment != btcPay || BTCCoin != btcCoin {
		t.Fatal("the exported amounts are not the bodies' amounts")
	}
}
