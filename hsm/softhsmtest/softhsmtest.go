// Package softhsmtest gives tests a fresh SoftHSM token. It is a normal package
// so that any package's tests can import it.
//
// All tokens of a test process live in one per-process temporary SoftHSM
// directory with its own softhsm2.conf; SOFTHSM2_CONF is pointed at it with
// os.Setenv, because SoftHSM reads it in C_Initialize. Tests that use the HSM
// must not run in parallel (see the hsm package doc) and must Close their
// hsm.Module before the test ends; each token directory is removed when its
// test ends.
package softhsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/custodysigner/appliance/hsm"
)

var candidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
}

// ModulePath returns $SOFTHSM2_MODULE if set, else the first of the usual
// SoftHSM library locations that exists (the first candidate if none does).
func ModulePath() string {
	if p := os.Getenv("SOFTHSM2_MODULE"); p != "" {
		return p
	}
	for _, p := range candidates {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return candidates[0]
}

var (
	setupOnce sync.Once
	setupErr  error
	root      string

	mu      sync.Mutex
	counter int
	dirs    = map[string]string{} // token label → its directory under TokenDir()
)

func setup() {
	sweep(os.TempDir())
	root, setupErr = os.MkdirTemp("", fmt.Sprintf("softhsmtest-%d-", os.Getpid()))
	if setupErr != nil {
		return
	}
	tokens := filepath.Join(root, "tokens")
	if setupErr = os.Mkdir(tokens, 0o700); setupErr != nil {
		return
	}
	conf := filepath.Join(root, "softhsm2.conf")
	body := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if setupErr = os.WriteFile(conf, []byte(body), 0o600); setupErr != nil {
		return
	}
	setupErr = os.Setenv("SOFTHSM2_CONF", conf)
}

// TokenDir is the SoftHSM token directory of this process (set up on first use).
func TokenDir() string { return filepath.Join(root, "tokens") }

// TokenPath returns the directory holding the token with this label, as created
// by NewToken. Tests rename it to simulate token loss.
func TokenPath(t testing.TB, label string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	d, ok := dirs[label]
	if !ok {
		t.Fatalf("softhsmtest: no token labelled %q was made by NewToken", label)
	}
	return d
}

func listDirs(dir string) (map[string]bool, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, e := range ents {
		if e.IsDir() {
			out[e.Name()] = true
		}
	}
	return out, nil
}

func randomPIN() []byte {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return []byte(hex.EncodeToString(b))
}

// NewToken makes a fresh SoftHSM token with a unique label and returns a URI
// (module-path, token label, pin-value) and the user PIN. It fails the test if
// SoftHSM is not installed. It must not be called while an hsm.Module is open
// in this process, because the new token would only be visible after the
// Module's next C_Initialize.
func NewToken(t testing.TB) (*hsm.URI, []byte) {
	t.Helper()
	mod := ModulePath()
	if _, err := os.Stat(mod); err != nil {
		t.Fatalf("softhsmtest: SoftHSM library %s not found (%v); run `make test`, which installs softhsm2, or set SOFTHSM2_MODULE", mod, err)
	}
	setupOnce.Do(setup)
	if setupErr != nil {
		t.Fatalf("softhsmtest: setting up SoftHSM directory: %v", setupErr)
	}
	mu.Lock()
	counter++
	label := fmt.Sprintf("test-%d-%d", os.Getpid(), counter)
	mu.Unlock()

	before, err := listDirs(TokenDir())
	if err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	pin := randomPIN()
	if err := hsm.InitToken(mod, label, randomPIN(), pin); err != nil {
		t.Fatalf("softhsmtest: init token: %v", err)
	}
	after, err := listDirs(TokenDir())
	if err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	var dir string
	for d := range after {
		if !before[d] {
			dir = filepath.Join(TokenDir(), d)
		}
	}
	if dir == "" {
		t.Fatalf("softhsmtest: token %q created no directory in %s", label, TokenDir())
	}
	mu.Lock()
	dirs[label] = dir
	mu.Unlock()
	t.Cleanup(func() {
		mu.Lock()
		delete(dirs, label)
		mu.Unlock()
		_ = os.RemoveAll(dir)
	})
	return &hsm.URI{ModulePath: mod, Token: label, PinValue: string(pin)}, pin
}

// sweep removes the directories that test processes now gone left in dir:
// a test binary has no hook that runs after its last test, so each process
// leaves its root behind, and the next one to set up clears them. A
// directory whose process still runs (or whose number a new process took)
// is kept.
func sweep(dir string) {
	matches, _ := filepath.Glob(filepath.Join(dir, "softhsmtest-*-*"))
	for _, m := range matches {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(m), "softhsmtest-%d-", &pid); err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(m)
		}
	}
}
