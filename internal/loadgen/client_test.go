package loadgen

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name       string
		raw        string
		status     int
		body       string
		keep, fail bool
	}{
		{"content length", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 17\r\n\r\n{\"state\":\"signed\"}", 200, `{"state":"signed"`, true, false},
		{"chunked with an extension and a trailer", "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n", 403, "hello world", true, false},
		{"connection close", "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 503, "{}", false, false},
		{"body to the end of the connection", "HTTP/1.0 200 OK\r\n\r\nall of it", 200, "all of it", false, false},
		{"truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 200, "", false, true},
		{"bad status line", "HTTP/1.1 2x0 OK\r\n\r\n", 0, "", false, true},
		{"not HTTP", "SSH-2.0-OpenSSH\r\n\r\n", 0, "", false, true},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 200, "", false, true},
	} {
		c := &conn{br: bufio.NewReader(strings.NewReader(tc.raw))}
		status, keep, err := c.readResponse()
		if tc.fail {
			if err == nil {
				t.Errorf("%s: no error", tc.name)
			}
			continue
		}
		if err != nil || status != tc.status || keep != tc.keep || string(c.body) != tc.body {
			t.Errorf("%s: status %d keep %v body %q err %v; want %d %v %q", tc.name, status, keep, c.body, err, tc.status, tc.keep, tc.body)
		}
	}
}

// TestConnKeepsOneConnection posts over TLS to a real net/http server and
// checks that every request reuses the one connection, that bodies arrive
// intact, and that a connection the server closes is redialled.
func TestConnKeepsOneConnection(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/v1/sign" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "wrong request", http.StatusBadRequest)
			return
		}
		if string(body) == "close" {
			w.Header().Set("Connection", "close")
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"request_id":"req_1","state":"signed","echo":` + string(body) + `}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	cfg := &tls.Config{RootCAs: roots, ServerName: "example.com", NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS13}
	addr := srv.Listener.Addr().String()
	c := newConn(addr, addr, "/v1/sign", cfg)
	defer c.close()
	for i := range 50 {
		body := strings.Repeat("7", 1+i*97) // up to ~5 KB, so answers span TLS records
		status, got, err := c.post([]byte(body))
		if err != nil || status != 200 || !strings.Contains(string(got), `"state":"signed","echo":`+body+"}") {
			t.Fatalf("request %d: %d %v %.80q", i, status, err, got)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 50 requests, want 1", n)
	}
	if status, _, err := c.post([]byte("close")); err != nil || status != 200 {
		t.Fatalf("closing request: %d %v", status, err)
	}
	if status, _, err := c.post([]byte("1")); err != nil || status != 200 {
		t.Fatalf("after the server closed: %d %v", status, err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (one redial after Connection: close)", n)
	}
}
