package app

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// rbacMatrix is who may call each endpoint, from docs/API.md: the roles a
// request passes authorisation with. "none" is a certificate of the client
// CA whose principal is not registered. Every registered route must be
// here, and every route here must be registered.
var rbacMatrix = map[string][]string{
	"GET /v1/health":                   {"client", "officer", "auditor", "operator", "none"},
	"GET /v1/status":                   {"client", "officer", "auditor", "operator"},
	"GET /v1/keys":                     {"client", "officer", "auditor"},
	"GET /v1/keys/:id":                 {"client", "officer", "auditor"},
	"POST /v1/sign":                    {"client"},
	"POST /v1/sign/batch":              {"client"},
	"GET /v1/requests":                 {"officer", "auditor"},
	"GET /v1/requests/:id":             {"client", "officer", "auditor", "operator"}, // then 404 unless its requester, an officer or an auditor
	"POST /v1/requests/:id/approvals":  {"officer"},
	"POST /v1/requests/:id/rejections": {"officer"},
	"POST /v1/allowlist":               {"officer"},
	"POST /v1/policy/evaluate":         {"client", "officer"},
	"POST /v1/addresses/validate":      {"client", "officer"},
	"POST /v1/unseal":                  {"officer"},
	"POST /v1/freeze":                  {"officer"},
	"POST /v1/proposals":               {"officer"},
	"GET /v1/proposals":                {"officer", "auditor"},
	"GET /v1/proposals/:id":            {"officer", "auditor"},
	"POST /v1/proposals/:id/approvals": {"officer"},
	"POST /v1/backups":                 {"operator", "officer"},
	"GET /v1/audit":                    {"auditor"},
	"GET /v1/audit/keys":               {"auditor", "officer"},
	"GET /dashboard":                   {"operator", "officer", "auditor"},
}

// rbacCallers are the callers of the matrix: each dev principal of newEnv
// by its role, and "none".
var rbacCallers = map[string]string{"client": "client", "officer": "officer1", "auditor": "auditor", "operator": "operator", "none": "stranger"}

// TestRBACMatrix calls every registered route (read from the router, so a
// new endpoint without a matrix entry fails here) with every role, with
// an unregistered principal, and without a client certificate. Allowed
// callers get neither 401 nor 403; the others get exactly 403 forbidden,
// each audited as an auth_failure; without a certificate there is no
// handshake. The bodies are harmless ({}: refused after authorisation as
// malformed), so nothing is signed, frozen or unsealed; the state-changing
// endpoints still run last, and the appliance is checked unsealed and
// unfrozen at the end.
func TestRBACMatrix(t *testing.T) {
	// The denials below would otherwise freeze the appliance (burst of
	// refusals) and be summarised rather than audited one by one.
	e := newEnvWith(t, "freeze: {after_denials: 100000}\naudit: {auth_failures_per_minute: 100000}\n")
	e.start()
	clients := map[string]*http.Client{}
	for role, name := range rbacCallers {
		if role == "none" {
			clients[role] = devpkiClient(t, e, name)
		} else {
			clients[role] = e.client(name)
		}
	}
	noCert := e.client("")

	var routes []string
	for _, r := range e.app.server.Routes() {
		routes = append(routes, r.Method+" "+r.Path)
	}
	for _, r := range routes {
		if _, ok := rbacMatrix[r]; !ok {
			t.Errorf("route %s has no entry in the RBAC matrix: add who may call it", r)
		}
	}
	for r := range rbacMatrix {
		if !slices.Contains(routes, r) {
			t.Errorf("the RBAC matrix names %s, which is not registered", r)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	// Reads first, then writes, the seal and freeze endpoints last.
	rank := func(r string) int {
		switch {
		case strings.HasSuffix(r, "/unseal") || strings.HasSuffix(r, "/freeze"):
			return 2
		case strings.HasPrefix(r, "POST "):
			return 1
		}
		return 0
	}
	sort.Slice(routes, func(i, j int) bool {
		if a, b := rank(routes[i]), rank(routes[j]); a != b {
			return a < b
		}
		return routes[i] < routes[j]
	})

	head := e.auditHead()
	denials := 0
	roles := []string{"client", "officer", "auditor", "operator", "none"}
	for _, route := range routes {
		method, path, _ := strings.Cut(route, " ")
		path = strings.NewReplacer("/keys/:id", "/keys/eth-dev", "/requests/:id", "/requests/req_rbac", "/proposals/:id", "/proposals/prop_rbac").Replace(path)
		var body any
		if method == http.MethodPost {
			body = []byte(`{}`)
		}
		for _, role := range roles {
			a := e.must(clients[role], method, path, body)
			allowed := slices.Contains(rbacMatrix[route], role)
			switch {
			case allowed && (a.status == http.StatusUnauthorized || a.status == http.StatusForbidden):
				t.Errorf("%s as %s: %d %s, want it allowed", route, role, a.status, a.body)
			case !allowed && (a.status != http.StatusForbidden || a.code(t) != "forbidden"):
				t.Errorf("%s as %s: %d %s, want 403 forbidden", route, role, a.status, a.body)
			case !allowed:
				denials++
			}
		}
		if _, err := e.do(noCert, method, path, body); err == nil {
			t.Errorf("%s without a client certificate: answered", route)
		}
	}

	// Every denial was audited; so was every handshake without a
	// certificate (from the server's connection goroutine: waited for).
	var authFailures, handshakes int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		authFailures, handshakes = 0, 0
		for _, en := range e.auditSince(head) {
			if en.Kind != "auth_failure" {
				continue
			}
			var f map[string]string
			if err := json.Unmarshal([]byte(en.Fields), &f); err != nil {
				t.Fatal(err)
			}
			switch f["code"] {
			case "forbidden":
				authFailures++
			case "tls_handshake":
				handshakes++
			}
		}
		if handshakes >= len(routes) || time.Now().After(deadline) {
			break
		}
	}
	if authFailures != denials {
		t.Errorf("%d forbidden auth_failure entries for %d denials", authFailures, denials)
	}
	if handshakes != len(routes) {
		t.Errorf("%d tls_handshake auth_failure entries for %d attempts without a certificate", handshakes, len(routes))
	}

	// Nothing above changed the appliance's state.
	st := e.must(clients["officer"], "GET", "/v1/status", nil).json(t)
	if seal, _ := st["seal"].(map[string]any); st["sealed"] != false || st["frozen"] != false || seal == nil {
		t.Fatalf("after the matrix: sealed %v frozen %v", st["sealed"], st["frozen"])
	}
	for _, state := range []string{"signing", "signed", "failed", "denied", "pending_approval"} {
		if n, _ := e.app.store.CountRequests(context.Background(), state); n != 0 {
			t.Errorf("%d requests %s after the matrix", n, state)
		}
	}
}
