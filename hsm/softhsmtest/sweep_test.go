package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSweepRemovesOnlyTheDeadProcessesDirectories: a directory named after
// a process that has exited goes; this process's, and one whose name is not
// a test root, stay.
func TestSweepRemovesOnlyTheDeadProcessesDirectories(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(dir, fmt.Sprintf("softhsmtest-%d-123", cmd.Process.Pid))
	alive := filepath.Join(dir, fmt.Sprintf("softhsmtest-%d-456", os.Getpid()))
	other := filepath.Join(dir, "softhsmtest-notapid-789")
	for _, d := range []string{dead, alive, other} {
		if err := os.MkdirAll(filepath.Join(d, "tokens"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sweep(dir)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the exited process's directory is still there (%v)", err)
	}
	for _, d := range []string{alive, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
}
