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
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Shared by the storage and HSM fault tests: root-only mounts, a systemd
// notify socket that records what the watchdog hears, and the request rows
// as the database holds them.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test mounts a filesystem")
	}
}

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

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory, unmounted
// when the test ends (after the appliance, started later, has stopped).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// fillUp writes a file in dir until the filesystem answers ENOSPC, then
// gives leave bytes back, and returns its path: removing it gives the space
// back.
func fillUp(t *testing.T, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, chunk := range []int{1 << 16, 1 << 12, 1} {
		buf := make([]byte, chunk)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling %s: %v", dir, err)
				}
				break
			}
		}
	}
	if leave > 0 {
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(fi.Size() - leave); err != nil {
			t.Fatal(err)
		}
	}
	return path
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

// ext4FS is an ext4 filesystem in a file, loop-mounted with
// errors=remount-ro: after an error it turns read-only under open files,
// as a production data disk does.
type ext4FS struct {
	t          *testing.T
	image, dir string
}

func newExt4FS(t *testing.T, size int64) *ext4FS {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "e2fsck", "mount", "umount", "findmnt"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	base := t.TempDir()
	fs := &ext4FS{t: t, image: filepath.Join(base, "ext4.img"), dir: filepath.Join(base, "data")}
	if err := os.Mkdir(fs.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fs.image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(fs.image, size); err != nil {
		t.Fatal(err)
	}
	fs.run("mkfs.ext4", "-q", "-F", fs.image)
	fs.mount()
	t.Cleanup(func() {
		if exec.Command("findmnt", "-n", fs.dir).Run() == nil {
			_ = exec.Command("umount", "-l", fs.dir).Run()
		}
	})
	return fs
}

func (fs *ext4FS) run(name string, args ...string) string {
	fs.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		fs.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (fs *ext4FS) mount() {
	fs.t.Helper()
	fs.run("mount", "-t", "ext4", "-o", "loop,errors=remount-ro", fs.image, fs.dir)
	if err := os.Chmod(fs.dir, 0o700); err != nil {
		fs.t.Fatal(err)
	}
}

// fail makes ext4 record an error (its sysfs trigger_fs_error, what an I/O
// error in its metadata does): the journal aborts and the filesystem is
// read-only from then on, for open files too, until unmounted and checked.
func (fs *ext4FS) fail() {
	fs.t.Helper()
	dev := filepath.Base(strings.TrimSpace(fs.run("findmnt", "-no", "SOURCE", fs.dir)))
	trigger := filepath.Join("/sys/fs/ext4", dev, "trigger_fs_error")
	if _, err := os.Stat(trigger); err != nil {
		fs.t.Skipf("no %s: %v", trigger, err)
	}
	if err := os.WriteFile(trigger, []byte("appliance storage fault test\n"), 0o200); err != nil {
		fs.t.Fatal(err)
	}
	if opts := fs.run("findmnt", "-no", "OPTIONS", fs.dir); !strings.HasPrefix(opts, "ro") && !strings.Contains(opts, "emergency_ro") {
		fs.t.Fatalf("filesystem still writable after the error: %s", opts)
	}
}

// repair is the runbook once the appliance has stopped: unmount, e2fsck,
// mount. e2fsck exits 1 when it corrected something (the free counts an
// aborted journal leaves behind).
func (fs *ext4FS) repair() string {
	fs.t.Helper()
	fs.run("umount", fs.dir)
	out, err := exec.Command("e2fsck", "-fy", fs.image).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		fs.t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	fs.mount()
	return string(out)
}
