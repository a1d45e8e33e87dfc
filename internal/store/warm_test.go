package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// warmDB makes a database of a few MB with a write-ahead log beside it.
func warmDB(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a.db")
	s, err := Open(ctx, path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	pad := strings.Repeat("x", 2000)
	for i := range 20 {
		err := s.WriteTx(ctx, func(tx *Tx) error {
			if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS warm_pad (b TEXT)`); err != nil {
				return err
			}
			for j := range 100 {
				if _, err := tx.ExecContext(ctx, `INSERT INTO warm_pad (b) VALUES (?)`, pad+string(rune('a'+(i+j)%26))); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Fatalf("no write-ahead log: %v", err)
	}
	return path
}

// resident counts the pages of path in the page cache (mincore).
func resident(t *testing.T, path string) (in, all int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		t.Fatalf("%s: %v (size %d)", path, err, fi.Size())
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	for _, v := range vec {
		if v&1 != 0 {
			in++
		}
	}
	return in, len(vec)
}

// evict drops path's clean pages from the page cache, as a cold start finds
// them; it skips the test where the kernel keeps them anyway.
func evict(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if in, all := resident(t, path); in > all/4 {
		t.Skipf("the kernel kept %d of %d pages of %s after FADV_DONTNEED (tmpfs?)", in, all, path)
	}
}

// TestWarmCacheLoadsTheFiles: WarmCache reads the database and its log to
// the end, and their pages are then in the page cache.
func TestWarmCacheLoadsTheFiles(t *testing.T) {
	path := warmDB(t)
	var size int64
	for _, f := range []string{path, path + "-wal"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		size += fi.Size()
		evict(t, f)
	}
	w, err := WarmCache(context.Background(), path, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	if w.Skipped != "" || w.Bytes != size {
		t.Fatalf("warmed %+v; want all %d bytes", w, size)
	}
	for _, f := range []string{path, path + "-wal"} {
		if in, all := resident(t, f); in < all*9/10 {
			t.Fatalf("%s: %d of %d pages in the page cache after warming", filepath.Base(f), in, all)
		}
	}
}

// TestWarmCacheBudgetAndCancel: over the budget nothing is read and the
// answer says why; an ended context stops the read with its error.
func TestWarmCacheBudgetAndCancel(t *testing.T) {
	path := warmDB(t)
	w, err := WarmCache(context.Background(), path, 4096)
	if err != nil || w.Bytes != 0 || !strings.Contains(w.Skipped, "larger than the page-cache budget") {
		t.Fatalf("over budget: %+v, %v", w, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if w, err := WarmCache(ctx, path, 1<<40); !errors.Is(err, context.Canceled) || w.Bytes != 0 {
		t.Fatalf("cancelled: %+v, %v", w, err)
	}
	// A database without its log (checkpointed and closed) is read alone.
	if w, err := WarmCache(context.Background(), filepath.Join(t.TempDir(), "none.db"), 1<<40); err != nil || w.Bytes != 0 {
		t.Fatalf("no files: %+v, %v", w, err)
	}
}

func TestCacheBudgetSources(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mi := write("meminfo", "MemTotal:       24684544 kB\nMemFree:        21825536 kB\nMemAvailable:   24219648 kB\nBuffers: 1 kB\n")
	if got := memAvailable(mi); got != 24219648<<10 {
		t.Fatalf("memAvailable = %d", got)
	}
	if got := memAvailable(write("meminfo-old", "MemTotal: 1 kB\n")); got != 0 {
		t.Fatalf("memAvailable without the line = %d", got)
	}
	if got := memAvailable(filepath.Join(dir, "missing")); got != 0 {
		t.Fatalf("memAvailable of nothing = %d", got)
	}

	self := write("self-cgroup", "0::/system.slice/appliance.service\n")
	root := filepath.Join(dir, "cg")
	write("cg/system.slice/appliance.service/memory.max", "1073741824\n")
	write("cg/system.slice/appliance.service/memory.current", "73741824\n")
	if got := cgroupRoom(self, root); got != 1_000_000_000 {
		t.Fatalf("cgroupRoom = %d", got)
	}
	write("cg/system.slice/appliance.service/memory.max", "max\n")
	if got := cgroupRoom(self, root); got != -1 {
		t.Fatalf("cgroupRoom without a limit = %d", got)
	}
	if got := cgroupRoom(write("v1-cgroup", "4:memory:/x\n"), root); got != -1 {
		t.Fatalf("cgroupRoom on cgroup v1 = %d", got)
	}
	if CacheBudget() <= 0 {
		t.Fatalf("CacheBudget on this machine = %d", CacheBudget())
	}
}
