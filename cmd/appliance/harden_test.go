//go:build linux

package main

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/secret"
	"github.com/custodysigner/appliance/internal/secret/secrettest"
)

// mainArgsEnv makes the test binary run the real main with these
// (space-separated) arguments.
const mainArgsEnv = "APPLIANCE_TEST_MAIN_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(mainArgsEnv); args != "" {
		os.Args = append([]string{"appliance"}, strings.Fields(args)...)
		main() // exits
	}
	os.Exit(m.Run())
}

// TestMainHardensTheProcess runs the real main in a child process (as
// nobody when the tests run as root) with a command that blocks reading
// its configuration from stdin, and looks at it from outside: RLIMIT_CORE
// is 0/0 in /proc/<pid>/limits and /proc/<pid> belongs to root (the process
// is not dumpable). Closing stdin lets main finish with the configuration
// error's exit code, so it is main, running normally, that was observed.
func TestMainHardensTheProcess(t *testing.T) {
	bin, uid := os.Args[0], os.Geteuid()
	dir := t.TempDir()
	if uid == 0 {
		// Root owns /proc/<pid> whatever the flag: run the child as nobody.
		bin = secrettest.CopyForOthers(t, bin, "appliance-test-", "appliance.test")
		dir = filepath.Dir(bin)
		t.Cleanup(func() { os.RemoveAll(dir) })
		uid = 65534
	}
	// The configuration comes through a FIFO: the child blocks in open
	// until the test has looked at it.
	fifo := filepath.Join(dir, "appliance.yaml")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(fifo, uid, -1); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	if uid != os.Geteuid() {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
		cmd.Dir = "/"
	}
	cmd.Env = append(os.Environ(), mainArgsEnv+"=config check "+fifo)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	var soft, hard string
	var owner uint32
	deadline := time.Now().Add(20 * time.Second)
	for {
		soft, hard = secrettest.CoreLimits(t, pid)
		owner = secrettest.ProcOwner(t, pid)
		if soft == "0" && hard == "0" && owner == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: /proc/%s/limits core %s/%s, /proc/%s owned by %d (child uid %d): not hardened", pid, soft, hard, pid, owner, uid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(w, "not: [a configuration\n")
	w.Close()
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitConfig {
		t.Fatalf("main exited with %v, want the configuration error's %d (stderr %q)", err, exitConfig, stderr.String())
	}
}

// TestLogHardening: one line when hardened; a production appliance refuses
// to start when core dumps could not be turned off, a dev one warns.
func TestLogHardening(t *testing.T) {
	good := secret.Hardening{Supported: true, CoreLimitZero: true, NotDumpable: true, LockWorks: true, MemlockLimit: 8 << 20}
	bad := secret.Hardening{Supported: true, CoreLimitZero: true}
	for _, tt := range []struct {
		name    string
		mode    config.Mode
		h       secret.Hardening
		err     error
		refuse  bool
		level   string
		message string
	}{
		{"hardened", config.ModeProduction, good, nil, false, "info", "process hardened: core dumps off"},
		{"production, prctl refused", config.ModeProduction, bad, errors.New("prctl: operation not permitted"), true, "error", "refusing to start"},
		{"dev, prctl refused", config.ModeDev, bad, errors.New("prctl: operation not permitted"), false, "warn", "dev mode: going on"},
	} {
		core, logs := observer.New(zap.DebugLevel)
		err := logHardening(zap.New(core), tt.mode, tt.h, tt.err)
		if (err != nil) != tt.refuse {
			t.Errorf("%s: error %v, refuse %v", tt.name, err, tt.refuse)
		}
		all := logs.All()
		if len(all) != 1 || all[0].Level.String() != tt.level || !strings.Contains(all[0].Message, tt.message) {
			t.Errorf("%s: logged %+v", tt.name, all)
		}
	}
}
