package app

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Shared by the storage and HSM fault tests: a systemd notify socket that records what the watchdog hears, and the request rows
// as the database holds them.

// notifyLog is a systemd notify socket (NOTIFY_SOCKET) with the watchdog
// enabled (WATCHDOG_USEC): every datagram the appliance sends, with the time
// it arrived. Set it up before start: the monitor reads the watchdog interval
// when serving begins and probes every half interval.
type notifyLog struct {
	t        *testing.T
	interval time.Duration
	mu       sync.Mutex
	msgs     []notifyMsg
}

type notifyMsg struct {
	at  time.Time
	msg string
}

func listenNotify(t *testing.T, watchdog time.Duration) *notifyLog {
	t.Helper()
	dir, err := os.MkdirTemp("", "notify-") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", fmt.Sprint(watchdog.Microseconds()))
	t.Setenv("WATCHDOG_PID", "")
	n := &notifyLog{t: t, interval: watchdog}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			for _, line := range strings.Split(string(buf[:k]), "\n") {
				if line != "" {
					n.msgs = append(n.msgs, notifyMsg{time.Now(), line})
				}
			}
			n.mu.Unlock()
		}
	}()
	return n
}

// since returns the messages that arrived after t0.
func (n *notifyLog) since(t0 time.Time) []notifyMsg {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []notifyMsg
	for _, m := range n.msgs {
		if m.at.After(t0) {
			out = append(out, m)
		}
	}
	return out
}

// await waits for a message containing want that arrives after t0 and
// returns its arrival time.
func (n *notifyLog) await(want string, t0 time.Time, within time.Duration) time.Time {
	n.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, m := range n.since(t0) {
			if strings.Contains(m.msg, want) {
				return m.at
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.t.Fatalf("no %q from the appliance within %s (got %v)", want, within, n.since(t0))
	return time.Time{}
}

// starvedFor asserts that no WATCHDOG=1 arrives for d after t0 (waiting if
// d has not passed yet): longer than WatchdogSec, so systemd would have
// killed and restarted the service.
func (n *notifyLog) starvedFor(t0 time.Time, d time.Duration) {
	n.t.Helper()
	if wait := time.Until(t0.Add(d)); wait > 0 {
		time.Sleep(wait)
	}
	for _, m := range n.since(t0) {
		if m.msg == "WATCHDOG=1" && m.at.Before(t0.Add(d)) {
			n.t.Fatalf("watchdog petted %s after the fault was reported, within the %s it must starve", m.at.Sub(t0), d)
		}
	}
}

// requestRow is a request as the database holds it.
type requestRow struct {
	id, state, errorCode string
	signedTx             []byte
}

// requestRows reads every request by idempotency key, through a read-only
// connection (the appliance may be running).
func requestRows(t *testing.T, dbPath string) map[string]requestRow {
	t.Helper()
	u := url.URL{Scheme: "file", Path: dbPath, RawQuery: "mode=ro&_busy_timeout=5000"}
	db, err := sql.Open("sqlite3", u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT idempotency_key, id, state, COALESCE(error_code, ''), signed_tx FROM requests`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]requestRow{}
	for rows.Next() {
		var idem string
		var r requestRow
		if err := rows.Scan(&idem, &r.id, &r.state, &r.errorCode, &r.signedTx); err != nil {
			t.Fatal(err)
		}
		out[idem] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// signOutcome is what one client saw for one sign request.
type signOutcome struct {
	idem, payload string
	status        int
	code, message string
	requestID     string
	signedTx      string
}

// trySign posts one sign request for the eth-dev key with c and says what
// the client saw. Safe from any goroutine.
func (e *env) trySign(c *http.Client, idem, payload string) (signOutcome, error) {
	a, err := e.do(c, "POST", "/v1/sign", signBody(payload, idem))
	if err != nil {
		return signOutcome{}, fmt.Errorf("%s: %w", idem, err)
	}
	o := signOutcome{idem: idem, payload: payload, status: a.status}
	var m struct {
		RequestID string `json:"request_id"`
		State     string `json:"state"`
		SignedTx  string `json:"signed_tx"`
		Error     struct{ Code, Message string }
	}
	if err := json.Unmarshal(a.body, &m); err != nil {
		return o, fmt.Errorf("%s: %d %q: %w", idem, a.status, a.body, err)
	}
	if a.status == http.StatusOK {
		if m.State != "signed" || m.SignedTx == "" {
			return o, fmt.Errorf("%s: 200 without a signature: %s", idem, a.body)
		}
		o.requestID, o.signedTx = m.RequestID, m.SignedTx
		return o, nil
	}
	o.code, o.message = m.Error.Code, m.Error.Message
	return o, nil
}

// signOnce is trySign from the test's goroutine, failing the test on a
// transport error.
func (e *env) signOnce(c *http.Client, idem, payload string) signOutcome {
	e.t.Helper()
	o, err := e.trySign(c, idem, payload)
	if err != nil {
		e.t.Fatal(err)
	}
	return o
}

// signedBeforeTheFault checks that every request sent before a fault was
// signed, and returns them by idempotency key: the start of the map of
// answers that checkSignedAreRecorded compares with the database.
func signedBeforeTheFault(t *testing.T, outcomes ...signOutcome) map[string]signOutcome {
	t.Helper()
	answered := map[string]signOutcome{}
	for _, o := range outcomes {
		if o.status != http.StatusOK {
			t.Fatalf("%s before the fault: %d %s", o.idem, o.status, o.code)
		}
		answered[o.idem] = o
	}
	return answered
}

// checkSignedAreRecorded: every signature a client received is the one the
// database holds for that request, in state signed, and the database holds
// no signature that no client received.
func checkSignedAreRecorded(t *testing.T, dbPath string, answered map[string]signOutcome) {
	t.Helper()
	rows := requestRows(t, dbPath)
	for idem, o := range answered {
		r, ok := rows[idem]
		if o.status != 200 {
			if ok && len(r.signedTx) > 0 {
				t.Errorf("%s: the client got %d %s but the database holds a signature", idem, o.status, o.code)
			}
			continue
		}
		if !ok || r.state != "signed" || "0x"+fmt.Sprintf("%x", r.signedTx) != o.signedTx || r.id != o.requestID {
			t.Errorf("%s: signed %s for the client, database has %+v", idem, o.requestID, r)
		}
	}
	for idem, r := range rows {
		if len(r.signedTx) > 0 || r.state == "signed" {
			if o, ok := answered[idem]; !ok || o.status != 200 {
				t.Errorf("request %s (%s) is signed in the database, but no client received its signature", r.id, idem)
			}
		}
	}
}

// moveStore moves the (closed) database of an env that has not started
// into dir, durably: on a filesystem that later fails, a copy still in the
// page cache would be lost (ext4 allocates blocks at writeback), which
// SQLite, which syncs what it writes, never risks.
func (e *env) moveStore(dir string) {
	e.t.Helper()
	src := e.cfg.Store.Path
	dst := filepath.Join(dir, filepath.Base(src))
	for _, suffix := range []string{"", "-wal", "-shm"} {
		raw, err := os.ReadFile(src + suffix)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			e.t.Fatal(err)
		}
		f, err := os.OpenFile(dst+suffix, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			e.t.Fatal(err)
		}
		_, err = f.Write(raw)
		if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
			e.t.Fatal(err)
		}
		if err := os.Remove(src + suffix); err != nil {
			e.t.Fatal(err)
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := errors.Join(d.Sync(), d.Close()); err != nil {
		e.t.Fatal(err)
	}
	e.cfg.Store.Path = dst
}
