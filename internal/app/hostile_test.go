package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/devpki"
)

// Hostile clients (docs/SECURITY.md, "Hostile clients"): every bound
// exercised over real TLS connections against the real appliance.

// certOf loads the named dev certificate.
func (e *env) certOf(name string) tls.Certificate {
	e.t.Helper()
	pki := filepath.Join(e.dir, "pki")
	c, err := tls.LoadX509KeyPair(filepath.Join(pki, name+".crt"), filepath.Join(pki, name+".key"))
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// dialTLS opens a raw TLS 1.3 connection presenting cert (always, even one
// the server's CA list would not name; nil: none), HTTP/1.1 by ALPN.
func (e *env) dialTLS(cert *tls.Certificate, mod ...func(*tls.Config)) (*tls.Conn, error) {
	cfg := e.tlsConfig()
	cfg.MinVersion = tls.VersionTLS13
	cfg.NextProtos = []string{"http/1.1"}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	for _, m := range mod {
		m(cfg)
	}
	d := &net.Dialer{Timeout: 10 * time.Second}
	return tls.DialWithDialer(d, "tcp", strings.TrimPrefix(e.url, "https://"), cfg)
}

// getOnce sends one GET over a fresh connection with cert and returns the
// answer, or the error that refused it (in TLS 1.3 a refused client
// certificate surfaces at the client's first read).
func (e *env) getOnce(cert *tls.Certificate, path string) (*http.Response, []byte, error) {
	conn, err := e.dialTLS(cert)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n", path); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body, err
}

// readUntilClosed reads conn until it fails and returns what arrived and
// when the connection ended.
func readUntilClosed(conn net.Conn, limit time.Duration) ([]byte, time.Time, error) {
	_ = conn.SetReadDeadline(time.Now().Add(limit))
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			return got.Bytes(), time.Now(), err
		}
	}
}

// dribble writes chunk every interval until the connection refuses it or
// stop is closed.
func dribble(conn net.Conn, chunk string, interval time.Duration, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(interval):
		}
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, chunk); err != nil {
			return
		}
	}
}

// auditSince returns the audit entries after seq.
func (e *env) auditSince(seq int64) []*audit.Entry {
	e.t.Helper()
	var out []*audit.Entry
	if err := e.app.store.AuditEntries(context.Background(), seq, 0, func(en *audit.Entry) error {
		c := *en
		out = append(out, &c)
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) auditHead() int64 {
	e.t.Helper()
	seq, _, err := e.app.store.AuditHead(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return seq
}

// waitAudited waits until an auth_failure with code tls_handshake whose
// detail contains fragment is in the audit after seq: handshake failures
// are audited from the server's connection goroutine, after the client
// has seen them.
func (e *env) waitAudited(seq int64, fragment string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, en := range e.auditSince(seq) {
			if en.Kind == "auth_failure" && strings.Contains(en.Fields, `"tls_handshake"`) && strings.Contains(en.Detail, fragment) {
				return
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no tls_handshake auth_failure mentioning %q audited", fragment)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSlowClientsAreCut: a client that never finishes its TLS handshake,
// one that dribbles its headers (slowloris) and one that dribbles its body
// are each cut off at their bound, however steadily they send.
func TestSlowClientsAreCut(t *testing.T) {
	e := newEnvWith(t, "http: {read_header_timeout: 1s, read_timeout: 2s}\n")
	e.start()
	cert := e.certOf("client")
	addr := strings.TrimPrefix(e.url, "https://")
	const slack = 3 * time.Second // a busy machine; the bounds are 1 s and 2 s

	t.Run("silent TCP connection: the handshake is bounded by read_header_timeout", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		_, end, err := readUntilClosed(conn, 10*time.Second)
		if took := end.Sub(start); errors.Is(err, os.ErrDeadlineExceeded) || took < 900*time.Millisecond || took > time.Second+slack {
			t.Fatalf("connection ended after %v (%v), want about 1s", took, err)
		}
	})

	t.Run("slow headers: closed at read_header_timeout, unanswered", func(t *testing.T) {
		conn, err := e.dialTLS(&cert)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		if _, err := io.WriteString(conn, "GET /v1/health HTTP/1.1\r\nHost: appliance\r\n"); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		defer close(stop)
		go dribble(conn, "X-Slow: y\r\n", 100*time.Millisecond, stop)
		got, end, err := readUntilClosed(conn, 10*time.Second)
		if took := end.Sub(start); errors.Is(err, os.ErrDeadlineExceeded) || took > time.Second+slack || took < 900*time.Millisecond {
			t.Fatalf("connection ended after %v (%v), want about 1s", took, err)
		}
		if len(got) != 0 {
			t.Fatalf("a request whose headers never ended was answered: %q", got)
		}
	})

	t.Run("slow body: 408 request_timeout at read_timeout, then closed", func(t *testing.T) {
		conn, err := e.dialTLS(&cert)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		if _, err := io.WriteString(conn, "POST /v1/sign HTTP/1.1\r\nHost: appliance\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"key_id\":"); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		defer close(stop)
		go dribble(conn, " ", 100*time.Millisecond, stop)
		got, end, err := readUntilClosed(conn, 10*time.Second)
		if took := end.Sub(start); errors.Is(err, os.ErrDeadlineExceeded) || took > 2*time.Second+slack || took < 1900*time.Millisecond {
			t.Fatalf("connection ended after %v (%v), want about 2s", took, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
		if err != nil {
			t.Fatalf("answer %q: %v", got, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), `"code":"request_timeout"`) {
			t.Fatalf("slow body answered %d %s", resp.StatusCode, body)
		}
	})

	// The server is still serving everyone else.
	if a := e.must(e.client("client"), "GET", "/v1/keys", nil); a.status != http.StatusOK {
		t.Fatalf("after the slow clients: %d %s", a.status, a.body)
	}
}

// TestOversizedRequests: headers over http.max_header_bytes are 431; a
// body over http.max_body_bytes is 413 too_large, announced (answered
// before a byte of it is sent) or chunked (cut at the limit).
func TestOversizedRequests(t *testing.T) {
	e := newEnv(t)
	e.start()
	cert := e.certOf("client")

	// exchange writes req from a goroutine (the server may answer and hang
	// up before it is all written) and reads one answer.
	exchange := func(t *testing.T, head string, body io.Reader) (*http.Response, []byte, time.Duration) {
		t.Helper()
		conn, err := e.dialTLS(&cert)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		start := time.Now()
		go func() {
			if _, err := io.WriteString(conn, head); err == nil && body != nil {
				_, _ = io.Copy(conn, body)
			}
		}()
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		raw, _ := io.ReadAll(resp.Body)
		took := time.Since(start)
		// Then the server hangs up rather than read the rest.
		if _, err := br.ReadByte(); err == nil {
			t.Error("the connection stayed open after the refusal")
		}
		return resp, raw, took
	}

	t.Run("headers over max_header_bytes: 431", func(t *testing.T) {
		head := "GET /v1/health HTTP/1.1\r\nHost: appliance\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n"
		resp, _, _ := exchange(t, head, nil)
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})

	t.Run("announced 1 GiB body: 413 too_large before it is sent", func(t *testing.T) {
		head := "POST /v1/sign HTTP/1.1\r\nHost: appliance\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
		resp, raw, took := exchange(t, head, nil) // not one byte of the body
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(raw), `"code":"too_large"`) || !resp.Close {
			t.Fatalf("%d %s (close %v)", resp.StatusCode, raw, resp.Close)
		}
		if took > 5*time.Second {
			t.Fatalf("answered after %v", took)
		}
	})

	t.Run("chunked 8 MiB body: 413 too_large at the limit", func(t *testing.T) {
		head := "POST /v1/sign HTTP/1.1\r\nHost: appliance\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
		chunk := fmt.Sprintf("%x\r\n%s\r\n", 64<<10, strings.Repeat(" ", 64<<10))
		body := strings.NewReader(strings.Repeat(chunk, 128) + "0\r\n\r\n")
		resp, raw, _ := exchange(t, head, body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(raw), `"code":"too_large"`) {
			t.Fatalf("%d %s", resp.StatusCode, raw)
		}
	})

	t.Run("announced batch body over its limit: 413 too_large", func(t *testing.T) {
		head := "POST /v1/sign/batch HTTP/1.1\r\nHost: appliance\r\nContent-Type: application/json\r\nContent-Length: 4194305\r\n\r\n"
		resp, raw, _ := exchange(t, head, nil)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(raw), `"code":"too_large"`) {
			t.Fatalf("%d %s", resp.StatusCode, raw)
		}
	})
}

// TestRateLimitTenThousandRequests: 10,000 requests from one principal as
// fast as 8 connections go. The burst and the rate pass, every other
// request is 429 throttled with Retry-After, answered before any store
// work (nothing audited); another principal is unaffected; the limiter
// holds one bucket per principal; the refusals warn once in the log, not
// once each.
func TestRateLimitTenThousandRequests(t *testing.T) {
	const rate, burst, total = 50, 100, 10_000
	e := newEnvWith(t, fmt.Sprintf("http: {rate_per_principal: %d, rate_burst: %d}\n", rate, burst))
	e.start()
	head := e.auditHead()
	c := e.client("client")
	officer := e.client("officer1")

	var next, ok, limited atomic.Int64
	var mu sync.Mutex
	other := map[string]int{}
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= total {
				a, err := e.do(c, "GET", "/v1/keys", nil)
				switch {
				case err != nil:
					mu.Lock()
					other[err.Error()]++
					mu.Unlock()
				case a.status == http.StatusOK:
					ok.Add(1)
				case a.status == http.StatusTooManyRequests && bytes.Contains(a.body, []byte(`"code":"throttled"`)) && a.header.Get("Retry-After") == "1":
					limited.Add(1)
				default:
					mu.Lock()
					other[fmt.Sprintf("%d %s Retry-After %q", a.status, a.body, a.header.Get("Retry-After"))]++
					mu.Unlock()
				}
			}
		})
	}
	// Meanwhile an officer, within its own rate, is served throughout.
	stop := make(chan struct{})
	officerDone := make(chan error, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				if n == 0 {
					officerDone <- errors.New("the officer made no request")
				}
				officerDone <- nil
				return
			case <-time.After(50 * time.Millisecond):
			}
			a, err := e.do(officer, "GET", "/v1/status", nil)
			if err != nil || a.status != http.StatusOK {
				officerDone <- fmt.Errorf("officer during the flood: %v %d %s", err, a.status, a.body)
				return
			}
			n++
		}
	}()
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	if err := <-officerDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d requests in %v: %d passed, %d throttled", total, elapsed, ok.Load(), limited.Load())
	if len(other) > 0 {
		t.Fatalf("answers other than 200 and 429 throttled: %v", other)
	}
	maxOK := int64(burst + rate*elapsed.Seconds() + 1)
	if ok.Load() < burst || ok.Load() > maxOK || ok.Load()+limited.Load() != total {
		t.Fatalf("%d passed and %d limited of %d in %v; want between %d and %d passed", ok.Load(), limited.Load(), total, elapsed, burst, maxOK)
	}
	if st := e.app.server.Limits(); st.RateBuckets != 2 {
		t.Fatalf("limiter holds %d buckets after two principals, want 2", st.RateBuckets)
	}
	for _, en := range e.auditSince(head) {
		t.Errorf("audited during the flood: %s %s", en.Kind, en.Detail)
	}
	warnings, loud := 0, 0
	for _, l := range e.logs.All() {
		if strings.HasPrefix(l.Message, "principal rate limited at the API") && l.ContextMap()["principal"] == testPrincipalPrefix+"client" {
			warnings++
		}
		if l.Message == "request" && l.Level >= zapcore.WarnLevel && l.ContextMap()["status"] == int64(http.StatusTooManyRequests) {
			loud++
		}
	}
	if warnings != 1 || loud != 0 {
		t.Fatalf("%d rate-limit warnings (want 1) and %d warn-level request lines for 429s (want 0)", warnings, loud)
	}
}

// TestInFlightLimit: with http.max_in_flight requests already in the
// handlers (here: four slow bodies), the next is 503 overloaded with
// Retry-After at once; an officer still gets through on the reserve; the
// slots come back when those requests end.
func TestInFlightLimit(t *testing.T) {
	e := newEnvWith(t, "http: {max_in_flight: 4, max_in_flight_per_principal: -1, read_header_timeout: 5s, read_timeout: 30s}\n")
	e.start()
	cert := e.certOf("client")
	var held []*tls.Conn
	for range 4 {
		conn, err := e.dialTLS(&cert)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, "POST /v1/sign HTTP/1.1\r\nHost: appliance\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"); err != nil {
			t.Fatal(err)
		}
		held = append(held, conn)
	}
	waitInFlight := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for e.app.server.Limits().InFlight != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d requests in flight, want %d", e.app.server.Limits().InFlight, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitInFlight(4)

	start := time.Now()
	a := e.must(e.client("client"), "GET", "/v1/keys", nil)
	if a.status != http.StatusServiceUnavailable || a.code(t) != api.CodeOverloaded || a.header.Get("Retry-After") != "1" {
		t.Fatalf("fifth request: %d %s Retry-After %q", a.status, a.body, a.header.Get("Retry-After"))
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the refusal took %v: it must not queue", took)
	}
	if a := e.must(e.client("auditor"), "GET", "/v1/status", nil); a.status != http.StatusServiceUnavailable {
		t.Fatalf("auditor while full: %d %s", a.status, a.body)
	}
	if a := e.must(e.client("officer1"), "GET", "/v1/status", nil); a.status != http.StatusOK {
		t.Fatalf("officer on the reserve: %d %s", a.status, a.body)
	}
	for _, conn := range held {
		conn.Close()
	}
	waitInFlight(0)
	if a := e.must(e.client("client"), "GET", "/v1/keys", nil); a.status != http.StatusOK {
		t.Fatalf("after the slots came back: %d %s", a.status, a.body)
	}
	if st := e.app.server.Limits(); st.PeakInFlight != 5 {
		t.Fatalf("peak in flight %d, want 5 (4 + the officer's)", st.PeakInFlight)
	}
	warnings := 0
	for _, l := range e.logs.All() {
		if strings.HasPrefix(l.Message, "server overloaded") {
			warnings++
		}
	}
	if warnings != 1 {
		t.Fatalf("%d overload warnings, want 1", warnings)
	}
}

// TestOneRequestAtATimePerConnection: HTTP/2 is not offered, so a
// connection carries one request at a time: 50 pipelined requests on one
// connection are answered in order, never two in flight.
func TestOneRequestAtATimePerConnection(t *testing.T) {
	e := newEnv(t)
	e.start()
	cert := e.certOf("client")

	conn, err := e.dialTLS(&cert, func(c *tls.Config) { c.NextProtos = []string{"h2", "http/1.1"} })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Fatalf("ALPN chose %q, want http/1.1", p)
	}
	const n = 50
	var reqs strings.Builder
	for i := range n {
		fmt.Fprintf(&reqs, "GET /v1/keys/eth-dev?i=%d HTTP/1.1\r\nHost: appliance\r\n\r\n", i)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, reqs.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for i := range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("answer %d: %d", i, resp.StatusCode)
		}
	}
	if st := e.app.server.Limits(); st.PeakInFlight != 1 {
		t.Fatalf("peak in flight %d over one connection, want 1", st.PeakInFlight)
	}

	// A client that speaks only HTTP/2 is refused at the handshake; one
	// that prefers it (net/http forced to try HTTP/2) gets HTTP/1.1.
	if _, _, err := func() (*http.Response, []byte, error) {
		c, err := e.dialTLS(&cert, func(c *tls.Config) { c.NextProtos = []string{"h2"} })
		if err == nil {
			c.Close()
		}
		return nil, nil, err
	}(); err == nil {
		t.Fatal("an HTTP/2-only client completed the handshake")
	}
	cfg := e.tlsConfig()
	cfg.Certificates = []tls.Certificate{cert}
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	resp, err := h2.Get(e.url + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 1 {
		t.Fatalf("answered over %s", resp.Proto)
	}
}

// ticketCounter is a client session cache that counts the tickets the
// server issues.
type ticketCounter struct {
	tls.ClientSessionCache
	puts atomic.Int64
}

func (c *ticketCounter) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.puts.Add(1)
	}
	c.ClientSessionCache.Put(key, cs)
}

// TestNoResumptionNoEarlyData: the server issues no session tickets, so
// every connection is a full handshake with the client certificate
// checked (nothing to resume, no PSK for 0-RTT); a ClientHello offering
// early data is refused with an alert, and the refusal is audited.
func TestNoResumptionNoEarlyData(t *testing.T) {
	e := newEnv(t)
	e.start()
	cert := e.certOf("client")
	cache := &ticketCounter{ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	for i := range 2 {
		conn, err := e.dialTLS(&cert, func(c *tls.Config) { c.ClientSessionCache = cache })
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		// A request and its whole answer: post-handshake messages (where a
		// ticket would travel) have been read.
		if _, err := io.WriteString(conn, "GET /v1/health HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readUntilClosed(conn, 10*time.Second); err != io.EOF {
			t.Fatalf("connection %d: %v", i, err)
		}
		if conn.ConnectionState().DidResume {
			t.Fatalf("connection %d resumed a session", i)
		}
		conn.Close()
	}
	if n := cache.puts.Load(); n != 0 {
		t.Fatalf("the server issued %d session tickets", n)
	}

	head := e.auditHead()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(clientHelloWithEarlyData(t)); err != nil {
		t.Fatal(err)
	}
	got, _, _ := readUntilClosed(conn, 10*time.Second)
	// A plaintext fatal alert record: type 21, version, length 2, level 2,
	// description 110 (unsupported_extension).
	if len(got) < 7 || got[0] != 21 || got[5] != 2 || got[6] != 110 {
		t.Fatalf("answer to a ClientHello with early_data: % x", got)
	}
	e.waitAudited(head, "early data")
}

// clientHelloWithEarlyData is a TLS 1.3 ClientHello (X25519, ECDSA P-256,
// TLS_AES_128_GCM_SHA256) carrying the early_data extension, as a client
// about to send 0-RTT data would.
func clientHelloWithEarlyData(t *testing.T) []byte {
	t.Helper()
	u16 := func(b []byte, v int) []byte { return binary.BigEndian.AppendUint16(b, uint16(v)) }
	ext := func(b []byte, typ int, body []byte) []byte { return append(u16(u16(b, typ), len(body)), body...) }
	share := make([]byte, 32)
	random := make([]byte, 32)
	_, _ = rand.Read(share)
	_, _ = rand.Read(random)
	var exts []byte
	exts = ext(exts, 0x002b, []byte{2, 0x03, 0x04})                              // supported_versions: TLS 1.3
	exts = ext(exts, 0x000a, []byte{0, 2, 0x00, 0x1d})                           // supported_groups: x25519
	exts = ext(exts, 0x000d, []byte{0, 2, 0x04, 0x03})                           // signature_algorithms: ecdsa_secp256r1_sha256
	exts = ext(exts, 0x0033, append([]byte{0, 36, 0x00, 0x1d, 0, 32}, share...)) // key_share
	exts = ext(exts, 0x002a, nil)                                                // early_data
	body := []byte{0x03, 0x03}
	body = append(body, random...)
	body = append(body, 0)                // legacy_session_id
	body = append(body, 0, 2, 0x13, 0x01) // cipher_suites
	body = append(body, 1, 0)             // compression: null
	body = append(u16(body, len(exts)), exts...)
	hs := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	return append(u16([]byte{22, 0x03, 0x01}, len(hs)), hs...)
}

// TestClientCertificateChecks: over real handshakes, expired, not yet
// valid, wrong-EKU and revoked client certificates are refused (each
// refusal audited as a tls_handshake auth_failure with its reason) while
// a valid one is served. tls.crl is re-read at a reload: a newly revoked
// certificate is refused from then on; a forged CRL is refused and the one
// in force stays; a CRL past its next update refuses every client (fail
// closed) until a fresh one is loaded; and an expired CRL refuses the start.
func TestClientCertificateChecks(t *testing.T) {
	e := newEnv(t)
	pki := filepath.Join(e.dir, "pki")
	ca, err := devpki.LoadCA(pki)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	mint := func(opts ...devpki.ClientOption) *tls.Certificate {
		t.Helper()
		c, err := ca.ClientCert("client", testPrincipalPrefix+"client", opts...)
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}
	valid, valid2, revoked := mint(), mint(), mint()
	crlPath := filepath.Join(pki, "clients.crl")
	writeCRL := func(ca *devpki.CA, this, next time.Time, serials ...*big.Int) {
		t.Helper()
		b, err := ca.CRL(this, next, serials...)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crlPath, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCRL(ca, now.Add(-time.Minute), now.Add(time.Hour), revoked.Leaf.SerialNumber)
	// The configuration from a file with tls.crl, as production has it.
	raw := strings.Replace(string(e.cfg.Raw()), "client_ca: "+pki+"/ca.crt}", "client_ca: "+pki+"/ca.crt, crl: "+crlPath+"}", 1)
	cfgPath := filepath.Join(e.dir, "appliance.yaml")
	if err := os.WriteFile(cfgPath, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	if e.cfg, err = config.Load(cfgPath); err != nil || e.cfg.TLS.CRL != crlPath {
		t.Fatalf("config with tls.crl: %v", err)
	}
	e.start()

	accepted := func(t *testing.T, cert *tls.Certificate) {
		t.Helper()
		resp, body, err := e.getOnce(cert, "/v1/keys")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("valid certificate: %v %v %s", err, resp, body)
		}
	}
	refused := func(t *testing.T, cert *tls.Certificate, reason string) {
		t.Helper()
		head := e.auditHead()
		resp, _, err := e.getOnce(cert, "/v1/keys")
		if err == nil {
			t.Fatalf("served (%d)", resp.StatusCode)
		}
		e.waitAudited(head, reason)
	}

	cases := []struct {
		name   string
		cert   *tls.Certificate
		reason string // "": accepted; else a fragment of the audited reason
	}{
		{"valid", valid, ""},
		{"expired", mint(devpki.WithValidity(now.Add(-48*time.Hour), now.Add(-24*time.Hour))), "certificate has expired or is not yet valid: current time"},
		{"not yet valid", mint(devpki.WithValidity(now.Add(24*time.Hour), now.Add(48*time.Hour))), "is before"},
		{"serverAuth EKU only", mint(devpki.WithExtKeyUsage(x509.ExtKeyUsageServerAuth)), "incompatible key usage"},
		{"codeSigning EKU only", mint(devpki.WithExtKeyUsage(x509.ExtKeyUsageCodeSigning)), "incompatible key usage"},
		{"no EKU extension", mint(devpki.WithExtKeyUsage()), "does not carry the clientAuth extended key usage"},
		{"anyExtendedKeyUsage", mint(devpki.WithExtKeyUsage(x509.ExtKeyUsageAny)), "does not carry the clientAuth extended key usage"},
		{"revoked by the CRL", revoked, "client certificate is revoked (serial " + revoked.Leaf.SerialNumber.Text(16)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.reason == "" {
				accepted(t, tc.cert)
			} else {
				refused(t, tc.cert, tc.reason)
			}
		})
	}

	reload := func(t *testing.T) *ReloadReport {
		t.Helper()
		rep, err := e.app.Reload(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	t.Run("reload revokes another certificate", func(t *testing.T) {
		accepted(t, valid2)
		writeCRL(ca, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), revoked.Leaf.SerialNumber, valid2.Leaf.SerialNumber)
		if rep := reload(t); !slices.Contains(rep.Applied, "tls.crl (re-read)") || len(rep.Refused) != 0 {
			t.Fatalf("reload report %+v", rep)
		}
		refused(t, valid2, "client certificate is revoked")
		accepted(t, valid)
	})
	t.Run("a forged CRL is refused; the one in force stays", func(t *testing.T) {
		impostor, err := devpki.NewCA(ca.Cert.Subject.CommonName)
		if err != nil {
			t.Fatal(err)
		}
		writeCRL(impostor, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
		rep := reload(t)
		if len(rep.Refused) != 1 || !strings.Contains(rep.Refused[0], "not signed by a CA of tls.client_ca") || slices.Contains(rep.Applied, "tls.crl (re-read)") {
			t.Fatalf("reload report %+v", rep)
		}
		refused(t, valid2, "client certificate is revoked")
		accepted(t, valid)
	})
	t.Run("a CRL past its next update refuses everyone until a fresh one", func(t *testing.T) {
		next := time.Now().Add(3 * time.Second)
		writeCRL(ca, time.Now().Add(-time.Minute), next, revoked.Leaf.SerialNumber)
		if rep := reload(t); len(rep.Refused) != 0 {
			t.Fatalf("reload report %+v", rep)
		}
		accepted(t, valid2) // no longer revoked
		time.Sleep(time.Until(next) + 100*time.Millisecond)
		refused(t, valid, "expired at")
		writeCRL(ca, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), revoked.Leaf.SerialNumber)
		reload(t)
		accepted(t, valid)
	})
	t.Run("an expired CRL refuses the start", func(t *testing.T) {
		e.stop()
		writeCRL(ca, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
		a, err := New(context.Background(), e.cfg, e.log, "test")
		if err == nil {
			a.Close()
			t.Fatal("started with an expired CRL")
		}
		if !strings.Contains(err.Error(), "expired at") {
			t.Fatalf("start refused with %v", err)
		}
	})
}
