package app

import (
	"context"
	"crypto/ecdsa"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/store"
)

// auditKeys fetches the audit public keys as an auditor would, once, over
// the API (in production: out of band, and pinned).
func (e *env) auditKeys(t *testing.T) []*ecdsa.PublicKey {
	t.Helper()
	a := e.must(e.client("auditor"), "GET", "/v1/audit/keys", nil)
	if a.status != http.StatusOK {
		t.Fatalf("audit keys: %d %s", a.status, a.body)
	}
	var body struct {
		Keys []struct {
			PEM string `json:"public_key_pem"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(a.body, &body); err != nil {
		t.Fatal(err)
	}
	var out []*ecdsa.PublicKey
	for _, k := range body.Keys {
		pub, err := audit.ParsePublicKey([]byte(k.PEM))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pub)
	}
	if len(out) == 0 {
		t.Fatal("no audit key")
	}
	return out
}

func verifyDB(t *testing.T, path string, keys []*ecdsa.PublicKey) (audit.Report, error) {
	t.Helper()
	f, err := store.OpenAuditFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return f.Verify(context.Background(), keys, nil)
}

// auditKinds lists the kinds in the chain, in order, read offline.
func auditKinds(t *testing.T, path string) []string {
	t.Helper()
	f, err := store.OpenAuditFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var kinds []string
	if err := f.Entries(context.Background(), 0, func(e *audit.Entry) error { kinds = append(kinds, e.Kind); return nil }); err != nil {
		t.Fatal(err)
	}
	return kinds
}

// TestAuditTrailEndToEnd: a quorum unseal, a signature, a denial, a refused
// client and a stop all land in the chain; auditors read it over the API and
// clients cannot; the file verifies offline with only the audit public key,
// and the stop was checkpointed by the HSM's audit key.
func TestAuditTrailEndToEnd(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	const idem = "idem-audit-e2e-7f3a"
	if a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), idem)); a.status != http.StatusOK {
		t.Fatalf("sign: %d %s", a.status, a.body)
	}
	// Clients may not read the audit log; the refusal is itself audited.
	if a := q.must(q.client("client"), "GET", "/v1/audit", nil); a.status != http.StatusForbidden || a.code(t) != "forbidden" {
		t.Fatalf("client reads the audit log: %d %s", a.status, a.body)
	}
	keys := q.auditKeys(t)
	a := q.must(q.client("auditor"), "GET", "/v1/audit?after=0&limit=1000", nil)
	if a.status != http.StatusOK {
		t.Fatalf("auditor: %d %s", a.status, a.body)
	}
	var page struct {
		Entries []audit.Line `json:"entries"`
		HeadSeq int64        `json:"head_seq"`
		Next    int64        `json:"next"`
	}
	if err := json.Unmarshal(a.body, &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Entries) == 0 || page.Next != page.HeadSeq {
		t.Fatalf("page: %d entries, next %d, head %d", len(page.Entries), page.Next, page.HeadSeq)
	}
	// The page's entries are the chain itself: they verify as an export.
	v, err := audit.NewVerifier(keys, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range page.Entries {
		e, err := l.Entry()
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Add(&e); err != nil {
			t.Fatal(err)
		}
	}
	q.stop()

	path := q.cfg.Store.Path
	r, err := verifyDB(t, path, keys)
	if err != nil {
		t.Fatal(err)
	}
	if r.Unprotected != 0 || r.Checkpoints == 0 {
		t.Fatalf("after a clean stop the head should be checkpointed: %+v", r)
	}
	kinds := strings.Join(auditKinds(t, path), " ")
	for _, k := range []string{"ceremony", "start", "unseal_share", "unseal", "audit_key_created", "sign_request", "request_signed", "auth_failure", "stop"} {
		if !strings.Contains(" "+kinds+" ", " "+k+" ") {
			t.Errorf("no %q entry in %s", k, kinds)
		}
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), idem) && !strings.Contains(string(raw), "idempotency_key\":\"hmac") {
		t.Error("idempotency key stored raw in the audit")
	}
}

// TestRolledBackDatabaseRefusesUnseal: the token keeps the last checkpoint,
// so a database replaced by an older copy (or truncated) cannot be unsealed;
// officers get a report saying so.
func TestRolledBackDatabaseRefusesUnseal(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	q.stop()
	old := q.cfg.Store.Path + ".old"
	copyFile(t, q.cfg.Store.Path, old)

	q.start()
	q.unseal(1, 2)
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	if a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "r1")); a.status != http.StatusOK {
		t.Fatalf("sign: %d %s", a.status, a.body)
	}
	q.stop()

	// Roll the database back.
	for _, suffix := range []string{"-wal", "-shm"} {
		_ = os.Remove(q.cfg.Store.Path + suffix)
	}
	copyFile(t, old, q.cfg.Store.Path)
	q.start()
	q.must(q.client("officer1"), "POST", "/v1/unseal", map[string]string{"share": q.shares[0]})
	a := q.must(q.client("officer2"), "POST", "/v1/unseal", map[string]string{"share": q.shares[1]})
	if a.status != http.StatusServiceUnavailable || !strings.Contains(string(a.body), "rolled back or truncated") {
		t.Fatalf("unseal of a rolled-back database: %d %s", a.status, a.body)
	}
	if st := q.must(q.client("operator"), "GET", "/v1/status", nil).json(t); st["sealed"] != true {
		t.Fatalf("unsealed: %v", st)
	}
}

// TestSigningFailsClosedWithoutAudit: when audit entries cannot be
// committed, nothing is signed, and the appliance freezes itself after the
// configured number of failures.
func TestSigningFailsClosedWithoutAudit(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	db, err := sql.Open("sqlite3", q.cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TRIGGER audit_broken BEFORE INSERT ON events WHEN NEW.kind <> 'freeze'
		BEGIN SELECT RAISE(ABORT, 'audit device full'); END`); err != nil {
		t.Fatal(err)
	}
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	for i := 0; i < 3; i++ {
		a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)), fmt.Sprint("fc-", i)))
		if a.status == http.StatusOK || strings.Contains(string(a.body), "signed_tx") {
			t.Fatalf("signed without an audit entry: %d %s", a.status, a.body)
		}
	}
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM requests WHERE state = 'signed' OR signed_tx IS NOT NULL AND length(signed_tx) > 0`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d signatures recorded", n)
	}
	st := q.must(q.client("operator"), "GET", "/v1/status", nil).json(t)
	if st["frozen"] != true {
		t.Fatalf("not frozen after repeated audit failures: %v", st)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

var _ = errors.Is
