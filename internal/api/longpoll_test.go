package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
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
// with the given bounds, and returns its URL and a client whose principal
// requested the pending request.
func longPollServer(t *testing.T, bounds config.HTTP) (string, *http.Client) {
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
	return "https://" + ln.Addr().String(), &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// TestLongPollOutlivesWriteTimeout: GET /v1/requests/{id}?wait= longer
// than http.write_timeout (and http.read_timeout) answers 200 with the
// request once the wait is over, not a connection closed unanswered; the
// connection then serves the next request.
func TestLongPollOutlivesWriteTimeout(t *testing.T) {
	const wait = 2 * time.Second
	base, client := longPollServer(t, config.HTTP{ReadTimeout: config.Duration(time.Second), WriteTimeout: config.Duration(time.Second)})
	get := func(query string) (int, RequestBody, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := client.Get(base + "/v1/requests/req_pending" + query)
		if err != nil {
			t.Fatalf("GET %s: %v after %v", query, err, time.Since(start).Round(time.Millisecond))
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: reading the answer: %v after %v", query, err, time.Since(start).Round(time.Millisecond))
		}
		var b RequestBody
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Fatalf("GET %s: %d %q: %v", query, resp.StatusCode, raw, err)
		}
		return resp.StatusCode, b, time.Since(start)
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
