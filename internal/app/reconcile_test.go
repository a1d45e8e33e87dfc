package app

import (
	"context"
	"database/sql"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	_ "github.com/mattn/go-sqlite3"

	"github.com/custodysigner/appliance/internal/store"
)

// TestRegistryReconciliation: at unseal a registered key that is missing
// from the token, or whose public key on the token differs from the pinned
// one, refuses the unseal with a report naming both. With
// seal.allow_key_mismatch the appliance unseals and refuses only those keys,
// with the reason in /v1/status; the good key still signs.
func TestRegistryReconciliation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// A second real key whose pinned public key is then altered in the
	// database: what a swapped token (or a tampered registry) looks like.
	if _, err := CreateKey(ctx, e.cfg, e.log, KeySpec{ID: "eth-other", Chain: "ethereum", Network: "1337"}, nil); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", e.cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	var pub []byte
	if err := db.QueryRow(`SELECT public_key FROM keys WHERE id = 'eth-other'`).Scan(&pub); err != nil {
		t.Fatal(err)
	}
	pub[10] ^= 1
	if _, err := db.Exec(`UPDATE keys SET public_key = ? WHERE id = 'eth-other'`, pub); err != nil {
		t.Fatal(err)
	}
	// A key registered but absent from the token.
	st, err := store.Open(ctx, e.cfg.Store.Path, e.log)
	if err != nil {
		t.Fatal(err)
	}
	good, err := st.GetKey(ctx, "eth-dev")
	if err != nil {
		t.Fatal(err)
	}
	missing := good
	missing.ID, missing.Label, missing.CKAID = "eth-missing", "eth-missing", []byte("no-such-cka-id-0")
	if err := st.InsertKey(ctx, missing); err != nil {
		t.Fatal(err)
	}
	st.Close()
	db.Close()
	e.start()
	if st := e.must(e.client("operator"), "GET", "/v1/status", nil).json(t); st["sealed"] != true {
		t.Fatalf("unsealed despite a registry that does not reconcile: %v", st)
	}
	report := ""
	for _, l := range e.logs.FilterMessage("automatic unseal failed; staying sealed").All() {
		report = fmt.Sprint(l.ContextMap()["error"])
	}
	if !strings.Contains(report, `key "eth-missing": missing from the HSM token`) ||
		!strings.Contains(report, `key "eth-other": its public key on the token differs`) || strings.Contains(report, `"eth-dev"`) {
		t.Fatalf("report: %q", report)
	}
	e.stop()
	e.cfg.Seal.AllowKeyMismatch = true
	e.start()

	a := e.must(e.client("operator"), "GET", "/v1/status", nil)
	if a.status != http.StatusOK {
		t.Fatalf("status: %d %s", a.status, a.body)
	}
	refused := map[string]string{}
	for _, r := range a.json(t)["keys_refused"].([]any) {
		m := r.(map[string]any)
		refused[m["id"].(string)] = m["reason"].(string)
	}
	if !strings.Contains(refused["eth-missing"], "missing from the HSM token") ||
		!strings.Contains(refused["eth-other"], "differs from the pinned one") || refused["eth-dev"] != "" {
		t.Fatalf("keys_refused = %v", refused)
	}
	if h := e.must(e.client("operator"), "GET", "/v1/health", nil).json(t); h["status"] != "degraded" {
		t.Fatalf("health with refused keys: %v", h)
	}
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	body := signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "r1")
	body["key_id"] = "eth-other"
	if a := e.must(e.client("client"), "POST", "/v1/sign", body); a.status != http.StatusServiceUnavailable || a.code(t) != "hsm_unavailable" {
		t.Fatalf("refused key signs: %d %s", a.status, a.body)
	}
	if a := e.must(e.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "r2")); a.status != http.StatusOK {
		t.Fatalf("good key: %d %s", a.status, a.body)
	}
}
