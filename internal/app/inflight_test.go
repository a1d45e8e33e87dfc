package app

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/config"
)

// panicOnSignInit is the token's library with one planted bug: while armed,
// the next C_SignInit panics instead of answering (a broken vendor wrapper,
// a cgo binding's bug). It strikes before the token is reached.
type panicOnSignInit struct {
	hsm.Cryptoki
	armed *atomic.Bool
}

func (p panicOnSignInit) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	if p.armed.CompareAndSwap(true, false) {
		panic("injected: C_SignInit panicked")
	}
	return p.Cryptoki.SignInit(sh, m, o)
}

// TestPerPrincipalInFlightLimit: over real mutual TLS against the real
// appliance, a principal holding http.max_in_flight_per_principal slow
// requests is refused its next one at once (429 too_many_in_flight,
// Retry-After: 1) while another principal is served; when a second client
// then fills http.max_in_flight, the first is still told it is at its own
// bound, others get 503 overloaded, and an officer is served on the
// reserve. The first principal's count comes back on every path — client
// gone (slow bodies abandoned), success, error, a panic recovered — and
// exactly: it holds its bound again afterwards, no more. The setting is
// restart-only: a reload that changes it says so and the bound in force
// stays.
func TestPerPrincipalInFlightLimit(t *testing.T) {
	e := newEnvWith(t, "http: {max_in_flight: 4, max_in_flight_per_principal: 2, read_header_timeout: 5s, read_timeout: 30s}\n"+
		// No checkpoint signs in the background while the C_SignInit bug is armed.
		"audit: {checkpoint_interval: 1h, checkpoint_every: 1000000}\nhealth: {checkpoint_age_max: -1s}\n")
	// The configuration from a file, as production has it, so that it can
	// be reloaded.
	cfgPath := filepath.Join(e.dir, "appliance.yaml")
	if err := os.WriteFile(cfgPath, e.cfg.Raw(), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if e.cfg, err = config.Load(cfgPath); err != nil {
		t.Fatal(err)
	}
	other := e.addClient2()
	var armed atomic.Bool
	e.interpose = func(c hsm.Cryptoki) hsm.Cryptoki { return panicOnSignInit{Cryptoki: c, armed: &armed} }
	e.start()

	const a = testPrincipalPrefix + "client"
	cert := e.certOf("client")
	srv := e.app.server
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s (%+v, %s has %d in flight)", what, srv.Limits(), a, srv.InFlightOf(a))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// hold opens n connections as cert, each with a sign request whose body
	// never arrives: the handler waits in its body read until read_timeout
	// (30s) or until the connection is closed.
	hold := func(cert *tls.Certificate, n int) []*tls.Conn {
		t.Helper()
		var conns []*tls.Conn
		for range n {
			conn, err := e.dialTLS(cert)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			if _, err := io.WriteString(conn, "POST /v1/sign HTTP/1.1\r\nHost: appliance\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"); err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
		}
		return conns
	}
	refusedAtOnce := func(who string, ans answer, status int, code, retryAfter string, took time.Duration) {
		t.Helper()
		if ans.status != status || ans.code(t) != code || ans.header.Get("Retry-After") != retryAfter {
			t.Fatalf("%s: %d %s Retry-After %q, want %d %s Retry-After %q", who, ans.status, ans.body, ans.header.Get("Retry-After"), status, code, retryAfter)
		}
		if took > 5*time.Second {
			t.Fatalf("%s: the refusal took %v: it must not queue", who, took)
		}
	}
	timed := func(name, method, path string, body any) (answer, time.Duration) {
		t.Helper()
		start := time.Now()
		ans := e.must(e.client(name), method, path, body)
		return ans, time.Since(start)
	}

	// A at its bound; B served.
	heldA := hold(&cert, 2)
	waitFor("A holds its bound", func() bool { return srv.InFlightOf(a) == 2 })
	ans, took := timed("client", "GET", "/v1/keys", nil)
	refusedAtOnce("A beyond its bound", ans, http.StatusTooManyRequests, api.CodeTooManyInFlight, "1", took)
	if ans := e.must(e.client("auditor"), "GET", "/v1/status", nil); ans.status != http.StatusOK {
		t.Fatalf("B while A is at its bound: %d %s", ans.status, ans.body)
	}

	// A second client fills the server: A is still told it is at its own
	// bound, the others that the server is full; an officer gets through.
	heldC := hold(&other, 2)
	waitFor("the server is full", func() bool { return srv.Limits().InFlight == 4 })
	ans, took = timed("client", "GET", "/v1/keys", nil)
	refusedAtOnce("A beyond its bound, server full", ans, http.StatusTooManyRequests, api.CodeTooManyInFlight, "1", took)
	ans, took = timed("auditor", "GET", "/v1/status", nil)
	refusedAtOnce("B, server full", ans, http.StatusServiceUnavailable, api.CodeOverloaded, "1", took)
	if ans := e.must(e.client("officer1"), "GET", "/v1/status", nil); ans.status != http.StatusOK {
		t.Fatalf("officer on the reserve: %d %s", ans.status, ans.body)
	}

	released := func(path string) {
		t.Helper()
		waitFor("A's slots back after "+path, func() bool { return srv.InFlightOf(a) == 0 })
	}
	// Client gone: A abandons its slow requests.
	for _, c := range heldA {
		c.Close()
	}
	released("its callers left")
	// Success.
	if ans := e.must(e.client("client"), "GET", "/v1/keys", nil); ans.status != http.StatusOK {
		t.Fatalf("success path: %d %s", ans.status, ans.body)
	}
	released("a success")
	// Error.
	if ans := e.must(e.client("client"), "GET", "/v1/keys/no-such-key", nil); ans.status != http.StatusNotFound {
		t.Fatalf("error path: %d %s", ans.status, ans.body)
	}
	released("an error")
	// A panic in the handler, recovered into 500 internal.
	armed.Store(true)
	to := common.HexToAddress("0x00000000000000000000000000000000000000a1")
	ans = e.must(e.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, eth(1)), "inflight-panic"))
	if ans.status != http.StatusInternalServerError || ans.code(t) != "internal" || armed.Load() {
		t.Fatalf("panic path: %d %s (armed still %v)", ans.status, ans.body, armed.Load())
	}
	released("a panic")
	// The panic's log line names the request and its principal.
	panics := e.logs.FilterMessage("panic in handler").All()
	if len(panics) != 1 {
		t.Fatalf("%d \"panic in handler\" lines, want 1", len(panics))
	}
	if f := panics[0].ContextMap(); f["http_request_id"] != ans.header.Get("X-Request-Id") || f["principal"] == "" || f["path"] != "/v1/sign" {
		t.Fatalf("the panic's log line lacks the request's fields: %v", f)
	}

	// Exactly the bound again: nothing leaked, nothing given back twice.
	heldA = hold(&cert, 2)
	waitFor("A holds its bound again", func() bool { return srv.InFlightOf(a) == 2 })
	ans, took = timed("client", "GET", "/v1/keys", nil)
	refusedAtOnce("A beyond its bound, second round", ans, http.StatusTooManyRequests, api.CodeTooManyInFlight, "1", took)
	for _, c := range append(heldA, heldC...) {
		c.Close()
	}
	waitFor("every slot back", func() bool { st := srv.Limits(); return st.InFlight == 0 && st.Principals == 0 })

	// Restart-only, like the rest of http: a reload reports it and changes
	// nothing in force.
	raw := strings.Replace(string(e.cfg.Raw()), "max_in_flight_per_principal: 2", "max_in_flight_per_principal: 3", 1)
	if err := os.WriteFile(cfgPath, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := e.app.Reload(context.Background())
	if err != nil || !slices.Contains(rep.NeedsRestart, "http") {
		t.Fatalf("reload: %v %+v", err, rep)
	}
	heldA = hold(&cert, 2)
	waitFor("A holds its bound after the reload", func() bool { return srv.InFlightOf(a) == 2 })
	ans, took = timed("client", "GET", "/v1/keys", nil)
	refusedAtOnce("A beyond the bound in force after the reload", ans, http.StatusTooManyRequests, api.CodeTooManyInFlight, "1", took)
	for _, c := range heldA {
		c.Close()
	}
	waitFor("every slot back at the end", func() bool { st := srv.Limits(); return st.InFlight == 0 && st.Principals == 0 })
}
