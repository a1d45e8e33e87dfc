package screening

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

func nopLogger() *zap.Logger { return zap.NewNop() }

const (
	addrA = "0x01e2919679362dFBC9ee1644Ba9C6da6D6245BB1"
	addrB = "0x03893a7c7463AE47D46bc7f091665f1893656003"
)

// tempList writes a one-source Ethereum list and returns its Screener.
func tempList(t *testing.T, content string) (*Screener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "eth.txt")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New([]ListSource{{Name: "test-eth", Chain: Ethereum, Path: path}}, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return s, path
}

func appendLine(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds or the bound passes.
func eventually(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isHit(s *Screener, addr string) bool {
	h, err := s.Check(Ethereum, addr)
	return err == nil && h != nil
}

func TestWatchReloadsOnChange(t *testing.T) {
	s, path := tempList(t, addrA+"\n")
	before := s.Versions()[0]
	if isHit(s, addrB) {
		t.Fatal("B listed before it was added")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Watch(ctx, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()

	appendLine(t, path, addrB)
	eventually(t, 2*time.Second, "appended address becomes a hit", func() bool { return isHit(s, addrB) })
	after := s.Versions()[0]
	if after.SHA256 == before.SHA256 || after.Count != 2 || before.Count != 1 || !isHit(s, addrA) {
		t.Fatalf("before %+v after %+v", before, after)
	}
	h, _ := s.Check(Ethereum, addrB)
	if h.Version != after.SHA256 {
		t.Fatalf("hit version %s, list version %s", h.Version, after.SHA256)
	}

	// A file that disappears keeps the list in force and reports why.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "missing file reported", func() bool { return s.Versions()[0].Error != "" })
	if !isHit(s, addrB) || s.Versions()[0].SHA256 != after.SHA256 {
		t.Fatal("list lost when its file went missing")
	}
	// Back again: the error clears.
	if err := os.WriteFile(path, []byte(addrA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "restored file reloaded", func() bool {
		v := s.Versions()[0]
		return v.Error == "" && v.SHA256 == before.SHA256 && !isHit(s, addrB)
	})
}

func TestReloadFailureKeepsPrevious(t *testing.T) {
	s, path := tempList(t, addrA+"\n")
	prev := s.Versions()[0]
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	err := s.Reload()
	if !errors.Is(err, ErrList) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Reload = %v, want ErrList wrapping ErrNotExist", err)
	}
	v := s.Versions()[0]
	if v.Error == "" || v.SHA256 != prev.SHA256 || v.Count != 1 || !isHit(s, addrA) {
		t.Fatalf("after failed reload: %+v", v)
	}
}

func TestReloadUnchangedKeepsVersion(t *testing.T) {
	s, path := tempList(t, addrA+"\n")
	prev := s.Versions()[0]
	// Touch: new mtime, same content.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if !s.changed() {
		t.Fatal("mtime change not noticed")
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := s.Versions()[0]; got != prev {
		t.Fatalf("unchanged content gave a new version: %+v, was %+v", got, prev)
	}
	if s.changed() {
		t.Fatal("stat not recorded after reload; Watch would reload every tick")
	}
}

// TestExplicitReload: Reload (what the appliance's SIGHUP handler calls)
// re-reads a file even when its size and mtime are unchanged.
func TestExplicitReload(t *testing.T) {
	s, path := tempList(t, addrA+"\n")
	// Keep size and mtime so only the explicit reload, not a stat, can explain it.
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(addrB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if s.changed() {
		t.Fatal("test setup: stat differs")
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if !isHit(s, addrB) || isHit(s, addrA) {
		t.Fatal("Reload did not re-read the file")
	}
}

// TestConcurrentCheckDuringReload runs Checks while the list flips between
// two contents: under -race this proves the snapshot swap, and every Check
// must see one whole list (A alone, or A and B), never a partial one.
func TestConcurrentCheckDuringReload(t *testing.T) {
	s, path := tempList(t, addrA+"\n")
	contents := []string{addrA + "\n", addrA + "\n" + addrB + "\n"}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !isHit(s, addrA) {
					t.Error("A missing during reload")
					return
				}
				_ = s.Versions()
				_, _ = s.Check(Ethereum, addrB)
			}
		})
	}
	for i := range 200 {
		// Rename over the file, as an operator's tooling should, so a
		// reload never reads a half-written file.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(contents[i%2]), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}
