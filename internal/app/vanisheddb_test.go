package app

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/custodysigner/appliance/internal/seal"
	"github.com/custodysigner/appliance/internal/store"
	"github.com/custodysigner/appliance/internal/testfs"
)

// runbookRef is how every refusal names what to do.
const runbookRef = `docs/RECOVERY.md, "Database missing or empty"`

// diskState maps every file under the given directories to its contents:
// the data directory (database, backups, shares) and the SoftHSM token
// directory, compared before and after a refusal. SoftHSM's token.object is
// left out: it is the token's own record, whose generation counter every
// login moves; the token's objects (keys, the audit head) are the other
// files.
func diskState(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	return testfs.Snapshot(t, func(name string) bool { return name == "token.object" }, dirs...)
}

// refusedNoDatabase checks a refusal: ErrNoDatabase, the path, the runbook,
// and no secret.
func refusedNoDatabase(t *testing.T, what string, err error, path string, secrets ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: accepted", what)
	}
	if !errors.Is(err, ErrNoDatabase) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), runbookRef) {
		t.Fatalf("%s: %v; want ErrNoDatabase naming %s and %s", what, err, path, runbookRef)
	}
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("%s: a secret in the error", what)
		}
	}
}

// TestVanishedDatabaseRefused: an appliance provisioned by the ceremony has
// signed and been backed up; stopped, its database is emptied, then deleted.
// Each time the start refuses with ErrNoDatabase, naming the file and the
// runbook, and so do the commands for an installation and a new ceremony
// beside the token; nothing on disk or on the token changes. The runbook
// (a restore in mode database) brings it back: the same key signs again.
func TestVanishedDatabaseRefused(t *testing.T) {
	q := newQuorumEnv(t, "")
	archive, before := runbookSetup(t, q)
	ctx := context.Background()
	path := q.cfg.Store.Path
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pubs := map[string]ed25519.PublicKey{}
	for i, name := range officerNames {
		pubs[name] = q.approval[i].Public().(ed25519.PublicKey)
	}
	secrets := append([]string{string(q.soPIN)}, q.shares...)

	for _, damage := range []struct {
		name string
		do   func() error
	}{
		{"emptied", func() error { return os.Truncate(path, 0) }},
		{"deleted", func() error { return os.Remove(path) }},
	} {
		t.Run(damage.name, func(t *testing.T) {
			if err := os.WriteFile(path, good, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := damage.do(); err != nil {
				t.Fatal(err)
			}
			snap := diskState(t, q.dir, softhsmtest.TokenDir())

			a, err := New(ctx, q.cfg, q.log, "test")
			if err == nil {
				a.Close()
			}
			refusedNoDatabase(t, "start", err, path, secrets...)
			refusedNoDatabase(t, "keys and policy commands", RequireDatabase(q.cfg), path, secrets...)
			err = Reshare(ctx, q.cfg, q.log, []string{filepath.Join(q.dir, "shares", "officer1.share"), filepath.Join(q.dir, "shares", "officer2.share")},
				ReshareSpec{Threshold: 2, Officers: officerNames, OutDir: t.TempDir()})
			refusedNoDatabase(t, "a re-share", err, path, secrets...)
			err = InitAppliance(ctx, q.cfg, q.log, q.soPIN, &CeremonySpec{Threshold: 2, Officers: officerNames,
				OutDir: t.TempDir(), ApprovalKeys: pubs})
			refusedNoDatabase(t, "a new ceremony", err, path, secrets...)
			if !errors.Is(err, hsm.ErrTokenExists) {
				t.Fatalf("a new ceremony: %v, want ErrTokenExists", err)
			}

			testfs.Unchanged(t, snap, diskState(t, q.dir, softhsmtest.TokenDir()))
		})
	}

	// The runbook. A log the lost database left behind is refused first:
	// SQLite would apply it to the restored database.
	if err := os.WriteFile(path+"-wal", []byte("the lost database's log"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := RestoreWith(ctx, q.cfg, q.log, RestoreDatabase, archive, q.shares[:2], nil); err == nil || !strings.Contains(err.Error(), "-wal") {
		t.Fatalf("restore beside the lost database's log: %v", err)
	}
	if err := os.Rename(path+"-wal", path+"-wal.lost"); err != nil {
		t.Fatal(err)
	}
	if _, err := RestoreWith(ctx, q.cfg, q.log, RestoreDatabase, archive, q.shares[:2], nil); err != nil {
		t.Fatal(err)
	}
	q.start()
	q.unseal(1, 2)
	if after := signedSender(t, q.env, otherBody(t, 3, "vanished-3")); after != before {
		t.Fatalf("signs as %s, before %s", after, before)
	}
}

// TestInitRefusesUsedToken: `appliance init` (auto-unseal form) provisions a
// new installation; after the appliance has run, its database is deleted.
// Init again would start an empty database beside the token: it refuses
// (the token holds the appliance's audit head) with ErrNoDatabase and the
// runbook, creating nothing, and so does the start.
func TestInitRefusesUsedToken(t *testing.T) {
	ctx := context.Background()
	e, pin := newBareEnv(t, "")
	cfg, dir, path := e.cfg, e.dir, e.cfg.Store.Path

	// A new installation: init creates the database.
	if err := InitAppliance(ctx, cfg, e.log, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := store.Existing(path); err != nil {
		t.Fatalf("after init: %v", err)
	}
	if _, err := CreateKey(ctx, cfg, e.log, KeySpec{ID: "eth-dev", Chain: "ethereum", Network: "1337"}, nil); err != nil {
		t.Fatal(err)
	}
	e.start() // auto-unseal; the stop checkpoints the chain onto the token
	e.stop()

	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	snap := diskState(t, dir, softhsmtest.TokenDir())
	err := InitAppliance(ctx, cfg, e.log, nil, nil)
	refusedNoDatabase(t, "init beside a used token", err, path, string(pin))
	if !strings.Contains(err.Error(), "audit head") {
		t.Fatalf("init: %v; want the audit head named", err)
	}
	a, err := New(ctx, cfg, e.log, "test")
	if err == nil {
		a.Close()
	}
	refusedNoDatabase(t, "start", err, path, string(pin))
	testfs.Unchanged(t, snap, diskState(t, dir, softhsmtest.TokenDir()))

	// A database with the schema but none of this installation's state,
	// made past init (by hand, or a restore of the wrong file): the start
	// opens it, and the unseal refuses it on the token's audit head before
	// touching the token. Before, the unseal first generated an audit key
	// for the database that had none, leaving an orphan key on the token.
	st, err := store.Open(ctx, path, e.log)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	a, err = New(ctx, cfg, e.log, "test")
	if err != nil {
		t.Fatal(err)
	}
	snap = diskState(t, softhsmtest.TokenDir())
	err = a.seal.Start(ctx)
	a.Close()
	if _, ok := errors.AsType[*seal.IntegrityError](err); !ok || !strings.Contains(err.Error(), "audit") {
		t.Fatalf("unseal with a database younger than the token: %v; want an integrity refusal naming the audit chain", err)
	}
	testfs.Unchanged(t, snap, diskState(t, softhsmtest.TokenDir()))
}

// TestInitRefusesTokenWithKeysOnly: a token with a key made before the
// first start (so no audit head yet, and no backup wrapping key) is not new
// either. Before, init accepted it and left the key orphaned beside an
// empty registry.
func TestInitRefusesTokenWithKeysOnly(t *testing.T) {
	ctx := context.Background()
	e, pin := newBareEnv(t, "")
	cfg, dir, path := e.cfg, e.dir, e.cfg.Store.Path
	if err := InitAppliance(ctx, cfg, e.log, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateKey(ctx, cfg, e.log, KeySpec{ID: "eth-dev", Chain: "ethereum", Network: "1337"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	snap := diskState(t, dir, softhsmtest.TokenDir())
	err := InitAppliance(ctx, cfg, e.log, nil, nil)
	refusedNoDatabase(t, "init beside a token with a key", err, path, string(pin))
	if !strings.Contains(err.Error(), "1 private key(s)") || strings.Contains(err.Error(), "audit head") {
		t.Fatalf("init: %v; want the one private key named, and no audit head", err)
	}
	testfs.Unchanged(t, snap, diskState(t, dir, softhsmtest.TokenDir()))
}
