package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

// pendingSigner serves one request that stays pending approval; the
// server's other calls to a Signer are not expected here (a nil Signer
// panics, which the server answers 500).
type pendingSigner struct {
	Signer
	req store.Request
}

func (p pendingSigner) Get(_ context.Context, id string) (store.Request, error) {
	if id != p.req.ID {
		return store.Request{}, store.ErrNotFound
	}
	return p.req, nil
}

func (pendingSigner) Approvals(context.Context, string) (int, []string, error) {
	return 2, []string{}, nil
}

// longPollServer runs the real server over mutual TLS on a loopback port
// with the given bounds, and returns its URL, a client whose principal
// requested the pending request, and the server (stopped at cleanup, if the
// test has not stopped it).
func longPollServer(t *testing.T, bounds config.HTTP) (string, *http.Client, *Server) {
	t.Helper()
	ca, tc := clientsTLS(t)
	keys, err := signing.LoadKeyring(context.Background(), keyList{})
	if err != nil {
		t.Fatal(err)
	}
	const principal = "spiffe://appliance.dev/client"
	bounds.MaxBodyBytes = 1 << 20
	srv, err := New(Deps{
		Log:    zap.NewNop(),
		Access: access.NewRegistry([]config.Principal{{Name: principal, Roles: []string{"client"}}}),
		Signer: pendingSigner{req: store.Request{ID: "req_pending", State: store.StatePendingApproval, Principal: principal,
			Chain: "ethereum", Network: "1", CreatedAt: time.Now(), UpdatedAt: time.Now()}},
		Keys:   keys,
		Health: health.NewChecker(time.Second, time.Second),
		Status: func(context.Context) any { return map[string]string{} },
		Seal:   &fuzzSeal{},
		HTTP:   bounds,
		TLS:    tc.Config(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	cert, err := ca.ClientCert("client", principal)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}}}
	t.Cleanup(tr.CloseIdleConnections)
	return "https://" + ln.Addr().String(), &http.Client{Transport: tr, Timeout: 20 * time.Second}, srv
}

// TestLongPollOutlivesWriteTimeout: GET /v1/requests/{id}?wait= longer
// than http.write_timeout (and http.read_timeout) answers 200 with the
// request once the wait is over, not a connection closed unanswered; the
// connection then serves the next request.
func TestLongPollOutlivesWriteTimeout(t *testing.T) {
	const wait = 2 * time.Second
	base, client, _ := longPollServer(t, config.HTTP{ReadTimeout: config.Duration(time.Second), WriteTimeout: config.Duration(time.Second)})
	get := func(query string) (int, RequestBody, time.Duration) {
		t.Helper()
		return getPending(t, client, base, query)
	}
	status, b, took := get("?wait=" + wait.String())
	if status != http.StatusOK || b.ID != "req_pending" || b.State != store.StatePendingApproval || b.ApprovalsRequired != 2 {
		t.Fatalf("long poll: %d %+v", status, b)
	}
	if took < wait {
		t.Fatalf("long poll answered after %v, before the %v wait", took, wait)
	}
	if status, b, _ := get(""); status != http.StatusOK || b.State != store.StatePendingApproval {
		t.Fatalf("next request: %d %+v", status, b)
	}
}

// getPending GETs the pending request with query and decodes the answer.
func getPending(t *testing.T, client *http.Client, base, query string) (int, RequestBody, time.Duration) {
	t.Helper()
	status, b, took, err := fetchPending(client, base, query)
	if err != nil {
		t.Fatal(err)
	}
	return status, b, took
}

// fetchPending is getPending for a goroutine other than the test's.
func fetchPending(client *http.Client, base, query string) (int, RequestBody, time.Duration, error) {
	start := time.Now()
	resp, err := client.Get(base + "/v1/requests/req_pending" + query)
	if err != nil {
		return 0, RequestBody{}, 0, fmt.Errorf("GET %s: %w after %v", query, err, time.Since(start).Round(time.Millisecond))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, RequestBody{}, 0, fmt.Errorf("GET %s: reading the answer: %w after %v", query, err, time.Since(start).Round(time.Millisecond))
	}
	var b RequestBody
	if err := json.Unmarshal(raw, &b); err != nil {
		return 0, RequestBody{}, 0, fmt.Errorf("GET %s: %d %q: %w", query, resp.StatusCode, raw, err)
	}
	return resp.StatusCode, b, time.Since(start), nil
}

// TestLongPollAnsweredAtShutdown: a stop answers a waiting long poll at
// once, 200 with the request as it stands, and the shutdown then finishes
// well inside its bound. Before, the shutdown waited for the poll's whole
// wait and, with a wait longer than its timeout, closed the connection
// under it unanswered.
func TestLongPollAnsweredAtShutdown(t *testing.T) {
	base, client, srv := longPollServer(t, config.HTTP{})
	type answer struct {
		status int
		body   RequestBody
		took   time.Duration
		err    error
	}
	got := make(chan answer, 1)
	go func() {
		s, b, took, err := fetchPending(client, base, "?wait=60s")
		got <- answer{s, b, took, err}
	}()
	// The poll is waiting once the server counts it in flight.
	for deadline := time.Now().Add(10 * time.Second); srv.inflight.n.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the long poll never reached the server")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with a long poll waiting: %v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	stopped := time.Since(start)
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	if a.status != http.StatusOK || a.body.ID != "req_pending" || a.body.State != store.StatePendingApproval {
		t.Fatalf("long poll at shutdown: %d %+v", a.status, a.body)
	}
	// The poll would otherwise wait 60 s and the shutdown's bound is 15 s.
	if stopped > 5*time.Second || a.took > 10*time.Second {
		t.Fatalf("shutdown took %v and the poll %v: the wait was not ended", stopped, a.took)
	}
}
