package app

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
)

// startsRecorded counts the audit log's "start" entries, read beside the
// running appliance.
func startsRecorded(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM events WHERE kind = 'start'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
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
		if !errors.Is(err, ErrAlreadyServing) || !strings.Contains(err.Error(), fmt.Sprintf("(pid %d)", os.Getpid())) ||
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
