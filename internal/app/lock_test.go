package app

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// startsRecorded counts the audit log's "start" entries, read beside the
// running appliance.
func startsRecorded(t *testing.T, path string) int {
	t.Helper()
	return countRows(t, path, `SELECT count(*) FROM events WHERE kind = 'start'`)
}

// TestSecondApplianceOnOneDatabaseRefused: while one appliance serves a
// database, a second start on it is refused before it writes anything,
// naming the holder; the first keeps serving. Once the first has stopped,
// the lock file it leaves behind does not block the next start.
func TestSecondApplianceOnOneDatabaseRefused(t *testing.T) {
	e := newEnv(t)
	e.start()
	path := e.cfg.Store.Path
	starts := startsRecorded(t, path)

	for range 2 { // a refusal must not release the holder's lock
		a, err := New(context.Background(), e.cfg, e.log, "test")
		if err == nil {
			a.Close()
			t.Fatal("a second appliance started on a database already served")
		}
		if !errors.Is(err, ErrAlreadyServing) || !strings.Contains(err.Error(), fmt.Sprintf("(pid %d: ", os.Getpid())) ||
			!strings.Contains(err.Error(), path+".lock") {
			t.Fatalf("second start: %v; want ErrAlreadyServing naming pid %d and the lock file", err, os.Getpid())
		}
	}
	if got := startsRecorded(t, path); got != starts {
		t.Fatalf("the refused start recorded %d start entries", got-starts)
	}
	if got := e.must(e.client("client"), http.MethodGet, "/v1/health", nil); got.status != http.StatusOK {
		t.Fatalf("the serving appliance after the refusals: %d %s", got.status, got.body)
	}

	e.stop()
	if _, err := os.Stat(path + ".lock"); err != nil {
		t.Fatalf("the lock file: %v", err)
	}
	e.start()
	if got := startsRecorded(t, path); got != starts+1 {
		t.Fatalf("restart after a stop: %d start entries, want %d", got, starts+1)
	}
}

// TestOfflineCommandsRefusedWhileServing: the commands that change an
// installation without the appliance (init, keys create, policy set,
// restore, reshare) are refused while an appliance serves its database,
// before they open it, and the database and token are unchanged; once it
// has stopped, they run.
func TestOfflineCommandsRefusedWhileServing(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.start()
	snap := func() map[string]string {
		keys, err := e.app.store.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{"keys": fmt.Sprint(len(keys)), "starts": fmt.Sprint(startsRecorded(t, e.cfg.Store.Path))}
	}
	before := snap()
	for name, run := range map[string]func() error{
		"init": func() error { return InitAppliance(ctx, e.cfg, e.log, nil, nil) },
		"keys create": func() error {
			_, err := CreateKey(ctx, e.cfg, e.log, KeySpec{ID: "eth-two", Chain: "ethereum", Network: "1337"}, nil)
			return err
		},
		"policy set": func() error {
			_, err := SetPolicyLocal(ctx, e.cfg, e.log, "eth-dev", []byte(`{"approval_above":{"ETH":"1"},"approvals":2}`), nil)
			return err
		},
		"reshare": func() error { return Reshare(ctx, e.cfg, e.log, nil, ReshareSpec{}) },
		"restore": func() error {
			_, err := RestoreWith(ctx, e.cfg, e.log, RestoreDatabase, filepath.Join(e.dir, "none.tar"), nil, nil)
			return err
		},
	} {
		err := run()
		if !errors.Is(err, ErrAlreadyServing) || !strings.HasPrefix(err.Error(), name+" refused: ") ||
			!strings.Contains(err.Error(), fmt.Sprintf("(pid %d: ", os.Getpid())) {
			t.Errorf("%s while serving: %v; want it refused with ErrAlreadyServing, naming this process", name, err)
		}
	}
	if after := snap(); !maps.Equal(before, after) {
		t.Fatalf("refused commands changed the installation: %v, then %v", before, after)
	}
	e.stop()
	if _, err := CreateKey(ctx, e.cfg, e.log, KeySpec{ID: "eth-two", Chain: "ethereum", Network: "1337"}, nil); err != nil {
		t.Fatalf("keys create after the stop: %v", err)
	}
}
