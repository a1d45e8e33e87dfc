package app

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/backup"
	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/store"
)

func readShares(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for i := 1; i <= 3; i++ {
		raw, err := os.ReadFile(filepath.Join(dir, "shares", fmt.Sprintf("officer%d.share", i)))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, strings.TrimSpace(string(raw)))
	}
	return out
}

// TestRunbookShareLost: officer 3's share is lost. With the appliance
// stopped, officers 1 and 2 re-share. Afterwards the old shares are refused
// by the appliance and the PIN they derive no longer opens the token; the
// new shares unseal and the appliance signs; and a backup taken before the
// re-share restores with the new shares.
func TestRunbookShareLost(t *testing.T) {
	q := newQuorumEnv(t, "")
	ctx := context.Background()
	old := q.shares
	oldFiles := []string{filepath.Join(q.dir, "shares", "officer1.share"), filepath.Join(q.dir, "shares", "officer2.share")}
	if _, err := CreateKey(ctx, q.cfg, q.log, KeySpec{ID: "eth-other", Chain: "ethereum", Network: "1337", WrappedBackup: true}, oldFiles); err != nil {
		t.Fatal(err)
	}
	q.start()
	q.unseal(1, 2)
	b := q.must(q.client("officer1"), "POST", "/v1/backups", map[string]string{})
	if b.status != http.StatusCreated {
		t.Fatalf("backup: %d %s", b.status, b.body)
	}
	archive := b.json(t)["path"].(string)
	q.stop()

	// The re-share: a share of another ceremony, or too few, changes nothing.
	newDir := t.TempDir()
	spec := ReshareSpec{Threshold: 2, Officers: officerNames, OutDir: newDir}
	if err := Reshare(ctx, q.cfg, q.log, oldFiles[:1], spec); err == nil {
		t.Fatal("re-shared with one share")
	}
	if err := Reshare(ctx, q.cfg, q.log, oldFiles, spec); err != nil {
		t.Fatal(err)
	}
	fresh := readShares(t, newDir)

	// The old PIN no longer opens the token.
	secret, _, err := ceremony.Recover(old[:2])
	if err != nil {
		t.Fatal(err)
	}
	oldPIN := secret.DerivePIN()
	secret.Destroy()
	if m, err := OpenHSM(ctx, q.cfg, q.log, oldPIN); err == nil {
		m.Close()
		t.Fatal("the old shares' PIN still opens the token")
	}

	q.start()
	a := q.must(q.client("officer1"), "POST", "/v1/unseal", map[string]string{"share": old[0]})
	if a.status != http.StatusUnprocessableEntity || a.code(t) != "share_invalid" {
		t.Fatalf("old share: %d %s", a.status, a.body)
	}
	q.shares = fresh
	q.unseal(2, 3)
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	if a := q.must(q.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "after-reshare")); a.status != http.StatusOK {
		t.Fatalf("sign after re-share: %d %s", a.status, a.body)
	}
	q.stop()

	// The backup from before the re-share, restored with the new shares.
	uri, _ := hsm.ParseURI(q.cfg.HSM.URI)
	uri.Token = fmt.Sprintf("reshared-%d", os.Getpid()%100000)
	dir2 := t.TempDir()
	cfg2 := testConfig(t, dir2, uri.String(), "seal: {allow_key_mismatch: true}\n", "client", "officer1", "officer2", "officer3", "auditor", "operator")
	core, logs := observer.New(zap.DebugLevel)
	q2 := &quorumEnv{env: &env{t: t, dir: dir2, cfg: cfg2, logs: logs, log: zap.New(core)}, shares: fresh}
	if _, err := Restore(ctx, cfg2, q2.log, archive, fresh[:2], []byte("so-pin-2")); err != nil {
		t.Fatal(err)
	}
	q2.start()
	q2.unseal(1, 3)
	a = q2.must(q2.client("officer1"), "POST", "/v1/unseal", map[string]string{"share": old[0]})
	if a.status == http.StatusOK && a.json(t)["sealed"] == true {
		t.Fatalf("old share accepted after restore: %s", a.body)
	}
}

// TestForgedBackupRefused: the backup recipient key is public, so anyone
// can write an archive that decrypts; without the appliance's manifest MAC
// it is refused before anything touches a token.
func TestForgedBackupRefused(t *testing.T) {
	q := newQuorumEnv(t, "")
	ctx := context.Background()
	st, err := store.Open(ctx, q.cfg.Store.Path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	recText, err := st.BackupRecipient(ctx)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := backup.ParsePublicKey(recText)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(q.cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	man := &backup.Manifest{FormatVersion: backup.ManifestVersion, ApplianceVersion: "forger", CreatedAt: time.Now().UTC(), SchemaVersion: 8,
		DatabaseMember: memberDB, DatabaseSHA256: fmt.Sprintf("%x", sha(db)), ConfigMember: memberConfig, ConfigSHA256: fmt.Sprintf("%x", sha(nil)),
		Ceremony: backup.CeremonyInfo{ID: strings.Split(q.shares[0], "-")[1], Threshold: 2, Total: 3}}
	manJSON, err := man.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "forged.apbk")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := backup.NewWriter(f, pub, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		name string
		data []byte
	}{{backup.ManifestName, manJSON}, {memberMAC, []byte(manifestMAC(make([]byte, 32), manJSON))}, {memberDB, db}, {memberConfig, nil}} {
		if err := w.AddBytes(m.name, m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(w.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	uri, _ := hsm.ParseURI(q.cfg.HSM.URI)
	uri.Token = fmt.Sprintf("forged-%d", os.Getpid()%100000)
	dir2 := t.TempDir()
	cfg2 := testConfig(t, dir2, uri.String(), "", "client")
	_, err = Restore(ctx, cfg2, zap.NewNop(), path, q.shares[:2], []byte("so-pin-3"))
	if err == nil || !strings.Contains(err.Error(), "MAC does not verify") {
		t.Fatalf("forged archive: %v", err)
	}
	if _, err := os.Stat(cfg2.Store.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a forged archive left a database behind")
	}
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
