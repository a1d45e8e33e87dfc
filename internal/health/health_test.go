package health

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestCheckerStatuses(t *testing.T) {
	fail := errors.New("broken")
	ok := func(context.Context) error { return nil }
	bad := func(context.Context) error { return fail }
	cases := []struct {
		name   string
		checks []Check
		want   string
	}{
		{"all pass", []Check{{Name: "a", Critical: true, Probe: ok}, {Name: "b", Probe: ok}}, StatusOK},
		{"non-critical fails", []Check{{Name: "a", Critical: true, Probe: ok}, {Name: "b", Probe: bad}}, StatusDegraded},
		{"critical check degraded on purpose", []Check{{Name: "hsm", Critical: true, Probe: func(context.Context) error { return Degraded(fail) }}}, StatusDegraded},
		{"critical fails", []Check{{Name: "a", Critical: true, Probe: bad}, {Name: "b", Probe: bad}}, StatusDown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := NewChecker(time.Second, 0, tc.checks...).Run(context.Background())
			if r.Status != tc.want {
				t.Fatalf("status %s, want %s (%v)", r.Status, tc.want, r.Checks)
			}
			if r.Healthy() != (tc.want != StatusDown) {
				t.Fatal("Healthy disagrees with Status")
			}
		})
	}
}

func TestCheckerCachesAndTimesOut(t *testing.T) {
	var calls atomic.Int32
	slow := func(ctx context.Context) error {
		calls.Add(1)
		<-ctx.Done()
		return ctx.Err()
	}
	c := NewChecker(50*time.Millisecond, time.Hour, Check{Name: "slow", Critical: true, Probe: slow})
	start := time.Now()
	if r := c.Run(context.Background()); r.Status != StatusDown {
		t.Fatalf("a probe past its timeout must fail: %v", r)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("probe timeout not applied")
	}
	c.Run(context.Background())
	if calls.Load() != 1 {
		t.Fatalf("cached report not reused: %d probe calls", calls.Load())
	}
	c.Fresh(context.Background())
	if calls.Load() != 2 {
		t.Fatal("Fresh must probe again")
	}
}

// notifySocket stands in for systemd: a unix datagram socket named by
// NOTIFY_SOCKET, collecting what the service sends.
func notifySocket(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	out := make(chan string, 256)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(out)
				return
			}
			out <- string(buf[:n])
		}
	}()
	return out
}

func expect(t *testing.T, msgs <-chan string, want string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-msgs:
			if strings.Contains(m, want) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q within %s", want, within)
		}
	}
}

// TestWatchdogPetsOnlyWhileHealthy speaks the real sd_notify protocol: the
// watchdog is petted while the probe passes, not while it fails, and again
// once it recovers.
func TestWatchdogPetsOnlyWhileHealthy(t *testing.T) {
	msgs := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "100000") // 100 ms: pet every 50 ms
	t.Setenv("WATCHDOG_PID", "")
	var broken atomic.Bool
	probe := func(context.Context) error {
		if broken.Load() {
			return errors.New("hsm gone")
		}
		return nil
	}
	n := NewNotifier(zap.NewNop())
	c := NewChecker(time.Second, 0, Check{Name: "hsm", Critical: true, Probe: probe})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Monitor(ctx, c, time.Hour); close(done) }()
	defer func() { cancel(); <-done }()

	n.Ready()
	expect(t, msgs, "READY=1", time.Second)
	expect(t, msgs, "WATCHDOG=1", time.Second)

	broken.Store(true)
	expect(t, msgs, "STATUS=health down", time.Second)
	// Drain, then no WATCHDOG=1 may arrive while broken.
	quiet := time.After(400 * time.Millisecond)
	for waiting := true; waiting; {
		select {
		case m := <-msgs:
			if strings.Contains(m, "WATCHDOG=1") {
				t.Fatal("watchdog petted while the HSM probe fails")
			}
		case <-quiet:
			waiting = false
		}
	}
	broken.Store(false)
	expect(t, msgs, "WATCHDOG=1", time.Second)
	n.Stopping()
	expect(t, msgs, "STOPPING=1", time.Second)
}

func TestNotifierOutsideSystemdIsSilent(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n := NewNotifier(zap.NewNop())
	n.Ready()
	n.Status("x")
	n.Stopping()
}

// A long start-up step keeps systemd's start timeout extended while it runs
// (real sd_notify datagrams), and returns the step's own error.
func TestDuringExtendsTheStartTimeout(t *testing.T) {
	msgs := notifySocket(t)
	n := NewNotifier(zap.NewNop())
	boom := errors.New("boom")
	took, err := n.During("checking database integrity", 40*time.Millisecond, func() error {
		time.Sleep(300 * time.Millisecond)
		return boom
	})
	if !errors.Is(err, boom) || took < 300*time.Millisecond {
		t.Fatalf("During = %v, %v", took, err)
	}
	extends := 0
	for len(msgs) > 0 {
		m := <-msgs
		if !strings.Contains(m, "STATUS=checking database integrity (") || !strings.Contains(m, "\nEXTEND_TIMEOUT_USEC=120000") {
			t.Fatalf("unexpected notification %q", m)
		}
		extends++
	}
	if extends < 3 {
		t.Fatalf("%d extensions in 300 ms at one per 40 ms", extends)
	}
	// A quick step sends nothing.
	if _, err := n.During("quick", time.Hour, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		t.Fatalf("a quick step notified %q", m)
	case <-time.After(50 * time.Millisecond):
	}
}
