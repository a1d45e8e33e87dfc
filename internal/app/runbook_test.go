package app

import (
	"context"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/hsm"
)

// runbookSetup: a quorum appliance with a backup-able key eth-other next to
// the ordinary eth-dev, unsealed, one signature, a backup, then two more
// signatures after the backup; stopped. It returns the archive.
func runbookSetup(t *testing.T, q *quorumEnv) (archive string, before common.Address) {
	t.Helper()
	ctx := context.Background()
	files := []string{filepath.Join(q.dir, "shares", "officer1.share"), filepath.Join(q.dir, "shares", "officer2.share")}
	if _, err := CreateKey(ctx, q.cfg, q.log, KeySpec{ID: "eth-other", Chain: "ethereum", Network: "1337", WrappedBackup: true}, files); err != nil {
		t.Fatal(err)
	}
	q.start()
	q.unseal(1, 2)
	before = signedSender(t, q.env, otherBody(t, 0, "rb-0"))
	b := q.must(q.client("operator"), "POST", "/v1/backups", map[string]string{})
	if b.status != http.StatusCreated {
		t.Fatalf("backup: %d %s", b.status, b.body)
	}
	archive = b.json(t)["path"].(string)
	for i := 1; i <= 2; i++ {
		signedSender(t, q.env, otherBody(t, uint64(i), fmt.Sprint("rb-", i)))
	}
	q.stop()
	return archive, before
}

func otherBody(t *testing.T, nonce uint64, idem string) map[string]string {
	b := signBody(unsignedEIP1559(t, 1337, nonce, common.HexToAddress("0x00000000000000000000000000000000000000ee"), big.NewInt(1)), idem)
	b["key_id"] = "eth-other"
	return b
}

// TestRunbookDatabaseCorrupted: the database is damaged, the token intact.
// The appliance refuses to start; the operator moves the database aside and
// the quorum restores the last backup in mode "database". The token's keys
// (backup-able or not) sign again; the token's audit head moves back to the
// archive's with a restore entry naming the lost entries; the chain verifies.
func TestRunbookDatabaseCorrupted(t *testing.T) {
	q := newQuorumEnv(t, "")
	archive, before := runbookSetup(t, q)
	raw, err := os.ReadFile(q.cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	raw[3*4096] ^= 0xff
	if err := os.WriteFile(q.cfg.Store.Path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"-wal", "-shm"} {
		_ = os.Remove(q.cfg.Store.Path + s)
	}
	if _, err := New(context.Background(), q.cfg, q.log, "test"); err == nil {
		t.Fatal("a corrupted database was accepted")
	}
	if err := os.Rename(q.cfg.Store.Path, q.cfg.Store.Path+".corrupt"); err != nil {
		t.Fatal(err)
	}
	rep, err := RestoreWith(context.Background(), q.cfg, q.log, RestoreDatabase, archive, q.shares[:2], nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.TokenHeadBefore <= rep.AuditHeadSeq || len(rep.KeysNotInBackup) != 0 {
		t.Fatalf("report %+v", rep)
	}
	q.start()
	q.unseal(1, 2)
	if after := signedSender(t, q.env, otherBody(t, 3, "rb-3")); after != before {
		t.Fatalf("signs as %s, before %s", after, before)
	}
	if a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, common.HexToAddress("0x00000000000000000000000000000000000000ee"), big.NewInt(1)), "dev-after")); a.status != http.StatusOK {
		t.Fatalf("eth-dev (not backup-able, kept on the token): %d %s", a.status, a.body)
	}
	keysNow := q.auditKeys(t)
	q.stop()
	if _, err := verifyDB(t, q.cfg.Store.Path, keysNow); err != nil {
		t.Fatalf("chain after restore: %v", err)
	}
}

// TestRunbookTokenLost: the token is gone, the database intact. The quorum
// restores the keys from the last backup into a fresh token in mode
// "token"; the live database is kept, so nothing after the backup is lost.
func TestRunbookTokenLost(t *testing.T) {
	q := newQuorumEnv(t, "")
	archive, before := runbookSetup(t, q)
	// A fresh token in place of the lost one.
	uri, err := hsm.ParseURI(q.cfg.HSM.URI)
	if err != nil {
		t.Fatal(err)
	}
	uri.Token = fmt.Sprintf("replacement-%d", os.Getpid()%100000)
	q.cfg.HSM.URI = uri.String()
	rep, err := RestoreWith(context.Background(), q.cfg, q.log, RestoreToken, archive, q.shares[1:], []byte("replacement-so"))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rep.KeysNotInBackup) != "[eth-dev]" {
		t.Fatalf("report %+v", rep)
	}
	q.cfg.Seal.AllowKeyMismatch = true // eth-dev awaits the vendor's replication
	q.start()
	q.unseal(2, 3)
	if after := signedSender(t, q.env, otherBody(t, 3, "rb-3")); after != before {
		t.Fatalf("signs as %s, before %s", after, before)
	}
	// Nothing after the backup was lost: the replay of a pre-restore
	// request answers from the kept database.
	if a := q.must(q.client("client"), "POST", "/v1/sign", otherBody(t, 2, "rb-2")); a.status != http.StatusOK {
		t.Fatalf("replay of a request made after the backup: %d %s", a.status, a.body)
	}
	keysNow := q.auditKeys(t)
	q.stop()
	r, err := verifyDB(t, q.cfg.Store.Path, keysNow)
	if err != nil {
		t.Fatalf("chain after restore: %v", err)
	}
	if r.Unprotected != 0 {
		t.Fatalf("report %+v", r)
	}
}

// TestRunbookFreezeAndResume: one officer freezes; signing stops at once and
// stays stopped across a restart; the quorum unfreezes (a proposal and two
// approvals) and unseals; signing resumes. Both steps are in the audit chain.
func TestRunbookFreezeAndResume(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	if a := q.must(q.client("officer3"), "POST", "/v1/freeze", map[string]string{"reason": "suspected compromise of the withdrawal service"}); a.status != http.StatusOK {
		t.Fatalf("freeze: %d %s", a.status, a.body)
	}
	if a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "f0")); a.status != http.StatusServiceUnavailable || a.code(t) != "frozen" {
		t.Fatalf("sign while frozen: %d %s", a.status, a.body)
	}
	q.stop()
	q.start()
	p := q.propose(1, "unfreeze", `{"reason":"investigated: credentials rotated"}`)
	q.approve(1, p["proposal_id"].(string), q.approval[0], p["digest"].(string))
	if a := q.approve(2, p["proposal_id"].(string), q.approval[1], p["digest"].(string)); a.json(t)["state"] != "executed" {
		t.Fatalf("unfreeze: %s", a.body)
	}
	q.unseal(1, 2)
	if a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "f1")); a.status != http.StatusOK {
		t.Fatalf("sign after resume: %d %s", a.status, a.body)
	}
	q.stop()
	kinds := " " + fmt.Sprint(auditKinds(t, q.cfg.Store.Path)) + " "
	for _, k := range []string{" freeze ", " unfreeze ", " proposal_executed "} {
		if !strings.Contains(strings.NewReplacer("[", " ", "]", " ").Replace(kinds), k) {
			t.Errorf("no%sentry", k)
		}
	}
}
