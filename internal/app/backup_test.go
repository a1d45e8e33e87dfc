package app

import (
	"context"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/backup"
	"github.com/custodysigner/appliance/internal/store"
)

// signedSender signs payload over the API and returns the sender go-ethereum
// recovers from the answer.
func signedSender(t *testing.T, e *env, body map[string]string) common.Address {
	t.Helper()
	a := e.must(e.client("client"), "POST", "/v1/sign", body)
	if a.status != http.StatusOK {
		t.Fatalf("sign: %d %s", a.status, a.body)
	}
	raw, err := hex.DecodeString(strings.TrimPrefix(a.json(t)["signed_tx"].(string), "0x"))
	if err != nil {
		t.Fatal(err)
	}
	tx := new(types.Transaction)
	if err := tx.UnmarshalBinary(raw); err != nil {
		t.Fatalf("go-ethereum refuses the signed tx: %v", err)
	}
	from, err := types.Sender(types.LatestSignerForChainID(big.NewInt(1337)), tx)
	if err != nil {
		t.Fatal(err)
	}
	return from
}

// TestBackupWipeRestoreSign: the runbook "host lost". A running appliance
// writes an encrypted backup; the host (database and token) is gone; on a
// new host with a fresh token and an empty data directory the quorum
// restores it. The wrapped key comes back with the same public key
// (go-ethereum recovers the same address), the pending request and the
// policy come back, a key without the wrapped-backup attribute is reported
// and refuses the unseal until allowed, and the audit chain verifies across
// the restore under the original audit key.
func TestBackupWipeRestoreSign(t *testing.T) {
	q := newQuorumEnv(t, "")
	ctx := context.Background()
	shareFiles := []string{filepath.Join(q.dir, "shares", "officer1.share"), filepath.Join(q.dir, "shares", "officer2.share")}
	vault, err := CreateKey(ctx, q.cfg, q.log, KeySpec{ID: "eth-other", Chain: "ethereum", Network: "1337", WrappedBackup: true}, shareFiles)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SetPolicyLocal(ctx, q.cfg, q.log, "eth-other", []byte(`{"approval_above":{"ETH":"10000000000000000000"},"approvals":2}`), shareFiles); err != nil {
		t.Fatal(err)
	}
	q.start()
	q.unseal(1, 2)
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	body := func(nonce uint64, value *big.Int, idem string) map[string]string {
		b := signBody(unsignedEIP1559(t, 1337, nonce, to, value), idem)
		b["key_id"] = "eth-other"
		return b
	}
	before := signedSender(t, q.env, body(0, big.NewInt(1), "b0"))
	if before != common.HexToAddress(vault.Address) {
		t.Fatalf("signed by %s, registered address %s", before, vault.Address)
	}
	p := q.must(q.client("client"), "POST", "/v1/sign", body(1, eth(20), "big"))
	if p.status != http.StatusAccepted {
		t.Fatalf("20 ETH: %d %s", p.status, p.body)
	}
	pending := p.json(t)["request_id"].(string)
	// A principal added by the quorum lives in the database, not the configuration.
	pp := q.propose(1, "add_principal", `{"name":"spiffe://appliance.dev/treasury","roles":["client"],"keys":["eth-other"]}`)
	q.approve(1, pp["proposal_id"].(string), q.approval[0], pp["digest"].(string))
	if a := q.approve(2, pp["proposal_id"].(string), q.approval[1], pp["digest"].(string)); a.json(t)["state"] != "executed" {
		t.Fatalf("add_principal: %s", a.body)
	}
	auditKeys := q.auditKeys(t)

	// Clients cannot take backups; operators can.
	if a := q.must(q.client("client"), "POST", "/v1/backups", map[string]string{}); a.status != http.StatusForbidden {
		t.Fatalf("client backup: %d %s", a.status, a.body)
	}
	b := q.must(q.client("operator"), "POST", "/v1/backups", map[string]string{})
	if b.status != http.StatusCreated {
		t.Fatalf("backup: %d %s", b.status, b.body)
	}
	archive := b.json(t)["path"].(string)
	q.stop()
	raw, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "eth-other") || strings.Contains(string(raw), "SQLite format") {
		t.Fatal("the archive is not encrypted")
	}
	if h, err := backup.ReadHeader(strings.NewReader(string(raw))); err != nil || h.Created.IsZero() {
		t.Fatalf("header: %v", err)
	}

	// A new host: fresh token, empty data directory, its own PKI.
	uri, err := hsm.ParseURI(q.cfg.HSM.URI)
	if err != nil {
		t.Fatal(err)
	}
	uri.Token = "restored-" + fmt.Sprint(os.Getpid()%100000)
	dir2 := t.TempDir()
	cfg2 := testConfig(t, dir2, uri.String(), "", "client", "officer1", "officer2", "officer3", "auditor", "operator")
	core, logs := observer.New(zap.DebugLevel)
	e2 := &env{t: t, dir: dir2, cfg: cfg2, logs: logs, log: zap.New(core)}
	q2 := &quorumEnv{env: e2, shares: q.shares, approval: q.approval}

	// Wrong shares (one short) restore nothing.
	if _, err := Restore(ctx, cfg2, e2.log, archive, q.shares[:1], []byte("new-so-pin")); err == nil {
		t.Fatal("restored with one share")
	}
	rep, err := Restore(ctx, cfg2, e2.log, archive, []string{q.shares[2], q.shares[0]}, []byte("new-so-pin"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.KeysRestored, ",") != "eth-other,"+auditKeyMemberID(rep.auditKeyID(t)) || strings.Join(rep.KeysNotInBackup, ",") != "eth-dev" {
		t.Fatalf("report %+v", rep)
	}

	// eth-dev was not backup-able: the unseal is refused, naming it.
	q2.start()
	q2.must(q2.client("officer1"), "POST", "/v1/unseal", map[string]string{"share": q.shares[0]})
	a := q2.must(q2.client("officer3"), "POST", "/v1/unseal", map[string]string{"share": q.shares[2]})
	if a.status != http.StatusServiceUnavailable || !strings.Contains(string(a.body), `eth-dev`) {
		t.Fatalf("unseal with a key missing: %d %s", a.status, a.body)
	}
	q2.stop()
	cfg2.Seal.AllowKeyMismatch = true
	q2.start()
	q2.unseal(1, 3)

	after := signedSender(t, e2, body(2, big.NewInt(1), "after"))
	if after != before {
		t.Fatalf("restored key signs as %s, before %s", after, before)
	}
	if r := q2.must(q2.client("officer1"), "GET", "/v1/requests/"+pending, nil); r.status != http.StatusOK || r.json(t)["state"] != "pending_approval" {
		t.Fatalf("pending request after restore: %d %s", r.status, r.body)
	}
	// The policy came back: 20 ETH still needs the quorum.
	if r := q2.must(q2.client("client"), "POST", "/v1/sign", body(3, eth(20), "big2")); r.status != http.StatusAccepted {
		t.Fatalf("policy after restore: %d %s", r.status, r.body)
	}
	q2.stop()
	st2, err := store.Open(ctx, cfg2.Store.Path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ps, err := st2.ListPrincipals(ctx)
	st2.Close()
	if err != nil || len(ps) != 1 || ps[0].Name != "spiffe://appliance.dev/treasury" || ps[0].Removed {
		t.Fatalf("principals after restore: %+v %v", ps, err)
	}

	r, err := verifyDB(t, cfg2.Store.Path, auditKeys)
	if err != nil {
		t.Fatalf("audit chain across the restore: %v", err)
	}
	if r.Unprotected != 0 || !strings.Contains(" "+strings.Join(auditKinds(t, cfg2.Store.Path), " ")+" ", " restore ") {
		t.Fatalf("report %+v", r)
	}
}

// auditKeyID is the audit key among the restored keys.
func (r *RestoreReport) auditKeyID(t *testing.T) string {
	for _, k := range r.KeysRestored {
		if id, ok := strings.CutPrefix(k, "audit-key-"); ok {
			return id
		}
	}
	t.Fatalf("no audit key restored: %v", r.KeysRestored)
	return ""
}
