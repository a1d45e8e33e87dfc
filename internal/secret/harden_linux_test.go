//go:build linux

package secret

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/custodysigner/appliance/internal/secret/secrettest"
)

// Child processes: the test binary runs itself with SECRET_TEST_CHILD set,
// as nobody when the tests run as root (root is exempt from what is being
// checked: RLIMIT_MEMLOCK, /proc ownership, ptrace refusals).
const (
	childModeEnv   = "SECRET_TEST_CHILD"
	childTargetEnv = "SECRET_TEST_TARGET"
	nobody         = 65534
)

// sharedBinary is a copy of the test binary that nobody can execute.
var sharedBinary string

func TestMain(m *testing.M) {
	if mode := os.Getenv(childModeEnv); mode != "" {
		os.Exit(childMain(mode))
	}
	code := m.Run()
	if sharedBinary != "" {
		_ = os.RemoveAll(filepath.Dir(sharedBinary))
	}
	os.Exit(code)
}

func childMain(mode string) int {
	switch mode {
	case "memlock0":
		fmt.Println(memlock0Child())
		return 0
	case "harden":
		h, err := Harden()
		fmt.Println(hardenedChildReport(h, err))
	case "idle":
		// The control: as dumpable as any process, with core files allowed
		// up to the hard limit.
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err == nil {
			lim.Cur = lim.Max
			_ = unix.Setrlimit(unix.RLIMIT_CORE, &lim)
		}
		fmt.Println("ready")
	case "probe":
		fmt.Println(probe(os.Getenv(childTargetEnv)))
		return 0
	default:
		fmt.Println("unknown mode", mode)
		return 2
	}
	// Stay alive, for the parent to look at, until stdin closes.
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// hardenedChildReport checks, from inside, that hardening took and that
// the process still reads its own /proc files.
func hardenedChildReport(h Hardening, err error) string {
	var out []string
	out = append(out, fmt.Sprintf("complete=%v err=%v", h.Complete(), err))
	if d, err := Dumpable(); err != nil || d {
		out = append(out, fmt.Sprintf("dumpable=%v(%v)", d, err))
	} else {
		out = append(out, "dumpable=false")
	}
	// What the appliance and its libraries read of their own /proc: the
	// metrics' process collector (stat, fd, limits), the runtime's
	// cgroup-aware GOMAXPROCS (cgroup, mountinfo), os.Executable (exe).
	var selfErrs []string
	if _, err := os.ReadDir("/proc/self/fd"); err != nil {
		selfErrs = append(selfErrs, err.Error())
	}
	for _, f := range []string{"stat", "status", "limits", "cgroup", "mountinfo", "maps", "smaps", "cmdline"} {
		if _, err := os.ReadFile("/proc/self/" + f); err != nil {
			selfErrs = append(selfErrs, err.Error())
		}
	}
	if _, err := os.Executable(); err != nil {
		selfErrs = append(selfErrs, err.Error())
	}
	// Reopening its own descriptors (what /dev/stdin is): an officer's
	// --share-file /dev/stdin. The pipe is the process's own, as a shell's
	// pipe is the officer's.
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		selfErrs = append(selfErrs, err.Error())
	} else if f, err := os.Open("/proc/self/fd/" + strconv.Itoa(p[0])); err != nil {
		selfErrs = append(selfErrs, err.Error())
	} else {
		f.Close()
		unix.Close(p[0])
		unix.Close(p[1])
	}
	if len(selfErrs) == 0 {
		out = append(out, "selfread=ok")
	} else {
		out = append(out, "selfread="+strings.Join(selfErrs, ";"))
	}
	// Mode 0400 files now belong to root, so an unprivileged process is
	// refused its own environ, io and auxv: nothing in the appliance reads
	// them after start (os.Getenv and auxv come from the process's startup
	// stack, not /proc).
	var private []string
	for _, f := range []string{"environ", "io", "auxv"} {
		_, err := os.ReadFile("/proc/self/" + f)
		private = append(private, f+"="+map[bool]string{true: "ok", false: "denied"}[err == nil])
	}
	out = append(out, "private="+strings.Join(private, ","))
	// The hard limit is 0 too: the process cannot undo it.
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}); err != nil {
		out = append(out, "raise=refused")
	} else {
		out = append(out, "raise=allowed")
	}
	return strings.Join(out, " ")
}

// probe is another process of the same user looking at the target.
func probe(pid string) string {
	res := func(err error) string {
		switch {
		case err == nil:
			return "ok"
		case errors.Is(err, fs.ErrPermission):
			return "denied"
		default:
			return "error:" + err.Error()
		}
	}
	_, errEnv := os.ReadFile("/proc/" + pid + "/environ")
	_, errFD := os.ReadDir("/proc/" + pid + "/fd")
	_, errStat := os.ReadFile("/proc/" + pid + "/stat")
	_, errStatus := os.ReadFile("/proc/" + pid + "/status")
	_, errCmd := os.ReadFile("/proc/" + pid + "/cmdline")
	return fmt.Sprintf("environ=%s fd=%s stat=%s status=%s cmdline=%s", res(errEnv), res(errFD), res(errStat), res(errStatus), res(errCmd))
}

// childUID is the user children run as: nobody under root, else ourselves (-1).
func childUID(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		return -1
	}
	return nobody
}

// childCommand runs the test binary in mode as uid (-1: as we are).
func childCommand(t *testing.T, mode string, uid int, env ...string) *exec.Cmd {
	t.Helper()
	bin := os.Args[0]
	if uid >= 0 {
		bin = binaryForOthers(t)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childModeEnv+"="+mode), env...)
	cmd.Stderr = os.Stderr
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
		cmd.Dir = "/"
	}
	return cmd
}

// binaryForOthers copies the test binary where nobody may execute it.
func binaryForOthers(t *testing.T) string {
	t.Helper()
	if sharedBinary == "" {
		sharedBinary = secrettest.CopyForOthers(t, os.Args[0], "secret-test-", "secret.test")
	}
	return sharedBinary
}

// runChild runs a child to completion and returns its output.
func runChild(t *testing.T, mode string, uid int, env ...string) string {
	t.Helper()
	out, err := childCommand(t, mode, uid, env...).Output()
	if err != nil {
		t.Fatalf("child %s: %v (%s)", mode, err, out)
	}
	return strings.TrimSpace(string(out))
}

// liveChild is a child that waits for its stdin to close.
type liveChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	report string
}

func startChild(t *testing.T, mode string, uid int) *liveChild {
	t.Helper()
	cmd := childCommand(t, mode, uid)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &liveChild{cmd: cmd, stdin: stdin}
	t.Cleanup(func() { c.stdin.Close(); _ = c.cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child %s: %v", mode, err)
	}
	c.report = strings.TrimSpace(line)
	return c
}

func (c *liveChild) pid() string { return strconv.Itoa(c.cmd.Process.Pid) }

// TestHardenInChildProcess: a process that called Harden has RLIMIT_CORE
// 0/0 as /proc/<pid>/limits shows from outside, is not dumpable
// (PR_GET_DUMPABLE 0 inside; /proc/<pid> owned by root outside; another
// process of the same user can no longer read its environ or fd but still
// its stat, status and cmdline), still reads its own /proc/self files, and
// cannot raise its core limit again. An unhardened child is the control:
// the same checks see it dumpable, so they can fail.
func TestHardenInChildProcess(t *testing.T) {
	uid := childUID(t)
	wantOwner := uint32(os.Geteuid())
	if uid >= 0 {
		wantOwner = uint32(uid)
	}

	// The control first.
	idle := startChild(t, "idle", uid)
	// The control raised its soft core limit to the hard one: the parser
	// is seen reading a non-zero limit unless the session's hard limit is 0.
	if soft, hard := secrettest.CoreLimits(t, idle.pid()); hard == "0" {
		t.Log("control: the hard core limit is 0 for this session: /proc/<pid>/limits alone cannot tell the children apart; the PR_SET_DUMPABLE checks still can")
	} else if soft == "0" {
		t.Fatalf("control: core limit %s/%s", soft, hard)
	}
	if owner := secrettest.ProcOwner(t, idle.pid()); owner != wantOwner {
		t.Fatalf("control: /proc/%s owned by %d, want %d", idle.pid(), owner, wantOwner)
	}
	ctl := runChild(t, "probe", uid, childTargetEnv+"="+idle.pid())
	if ctl != "environ=ok fd=ok stat=ok status=ok cmdline=ok" {
		t.Fatalf("control: a process of the same user sees the unhardened child as %q", ctl)
	}

	h := startChild(t, "harden", uid)
	wantPrivate := "private=environ=denied,io=denied,auxv=denied"
	if uid < 0 && os.Geteuid() == 0 {
		wantPrivate = "private=environ=ok,io=ok,auxv=ok" // root reads root's files
	}
	for _, want := range []string{"complete=true err=<nil>", "dumpable=false", "selfread=ok", wantPrivate} {
		if !strings.Contains(h.report, want) {
			t.Errorf("hardened child reports %q, want %s", h.report, want)
		}
	}
	if uid >= 0 || !hasCap(unix.CAP_SYS_RESOURCE) {
		if !strings.Contains(h.report, "raise=refused") {
			t.Errorf("hardened child could raise its core limit again: %q", h.report)
		}
	}
	if soft, hard := secrettest.CoreLimits(t, h.pid()); soft != "0" || hard != "0" {
		t.Errorf("/proc/%s/limits: Max core file size %s/%s, want 0/0", h.pid(), soft, hard)
	}
	if wantOwner != 0 {
		if owner := secrettest.ProcOwner(t, h.pid()); owner != 0 {
			t.Errorf("/proc/%s owned by %d: the process is still dumpable", h.pid(), owner)
		}
		got := runChild(t, "probe", uid, childTargetEnv+"="+h.pid())
		if got != "environ=denied fd=denied stat=ok status=ok cmdline=ok" {
			t.Errorf("a process of the same user sees the hardened child as %q", got)
		}
	} else {
		t.Log("running as root without a second user: ownership and same-user probes skipped")
	}
}

// hasCap reports whether this process has capability c in its effective set.
func hasCap(c int) bool {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "CapEff:"); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(rest), 16, 64)
			return err == nil && v&(1<<uint(c)) != 0
		}
	}
	return false
}

// TestHardeningString: the log line says what holds and never lies.
func TestHardeningString(t *testing.T) {
	full := Hardening{Supported: true, CoreLimitZero: true, NotDumpable: true, LockWorks: true, MemlockLimit: 8 << 20}
	if s := full.String(); !strings.Contains(s, "core dumps off") || !strings.Contains(s, "not dumpable") || !strings.Contains(s, "8192 KiB") || !full.Complete() {
		t.Fatalf("%q", s)
	}
	weak := Hardening{Supported: true, MemlockLimit: ^uint64(0)}
	if s := weak.String(); !strings.Contains(s, "NOT zero") || !strings.Contains(s, "STILL dumpable") || !strings.Contains(s, "NOT locked") || weak.Complete() {
		t.Fatalf("%q", s)
	}
}
