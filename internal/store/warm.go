package store

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Warmed says what WarmCache did.
type Warmed struct {
	Bytes   int64         // read from the database file and its write-ahead log
	Took    time.Duration // reading them
	Skipped string        // why nothing was read, when nothing was
}

// warmChunk is the size of each read: large enough that the kernel's
// readahead streams the file.
const warmChunk = 1 << 20

// WarmCache reads the database file at path and its write-ahead log front
// to back, in large sequential reads, so that a full scan that follows
// (quick_check at start) finds their pages in the page cache. quick_check
// visits pages in b-tree order, which on a file the cache has not seen is
// random I/O: on the development machines about 16 s per GB from disk,
// against about 2 s per GB for a sequential read and the check together
// (docs/BENCHMARKS.md, "The start's integrity check from a cold cache").
//
// It reads nothing when the files together exceed budget bytes (see
// CacheBudget): their pages would evict each other before the scan reached
// them. It stops when ctx ends. The pages it reads are those the scan
// reads anyway; nothing is kept in the process's own memory.
func WarmCache(ctx context.Context, path string, budget int64) (Warmed, error) {
	files := []string{path, path + "-wal"}
	var total int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Warmed{}, fmt.Errorf("store: warm cache: %w", err)
		}
		total += fi.Size()
	}
	if total > budget {
		return Warmed{Skipped: fmt.Sprintf("the database (%d bytes) is larger than the page-cache budget (%d bytes)", total, max(budget, 0))}, nil
	}
	start := time.Now()
	buf := make([]byte, warmChunk)
	var read int64
	for _, f := range files {
		n, err := warmFile(ctx, f, buf)
		read += n
		if err != nil {
			return Warmed{Bytes: read, Took: time.Since(start)}, err
		}
	}
	return Warmed{Bytes: read, Took: time.Since(start)}, nil
}

// warmFile reads one file to its end into buf, over and over.
func warmFile(ctx context.Context, path string, buf []byte) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: warm cache: %w", err)
	}
	defer f.Close()
	// Advice only: a kernel that ignores it still reads the file in order.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	var read int64
	for {
		if err := ctx.Err(); err != nil {
			return read, fmt.Errorf("store: warm cache: %w", err)
		}
		n, err := f.Read(buf)
		read += int64(n)
		if errors.Is(err, io.EOF) {
			return read, nil
		}
		if err != nil {
			return read, fmt.Errorf("store: warm cache: %w", err)
		}
	}
}

// CacheBudget is how much of the database WarmCache may read: half the
// memory the kernel reports available, less if the process's cgroup (v2)
// has a memory limit nearer, since the page cache counts against it.
// Zero when neither can be read: then nothing is warmed.
func CacheBudget() int64 {
	avail := memAvailable("/proc/meminfo")
	if room := cgroupRoom("/proc/self/cgroup", "/sys/fs/cgroup"); room >= 0 && room < avail {
		avail = room
	}
	return avail / 2
}

// memAvailable reads MemAvailable from a meminfo file, in bytes; 0 if it
// cannot.
func memAvailable(meminfo string) int64 {
	raw, err := os.ReadFile(meminfo)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "MemAvailable:" && f[2] == "kB" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil && kb >= 0 {
				return kb << 10
			}
		}
	}
	return 0
}

// cgroupRoom is memory.max − memory.current of the process's cgroup v2, in
// bytes; −1 when there is no limit or it cannot be read.
func cgroupRoom(selfCgroup, root string) int64 {
	raw, err := os.ReadFile(selfCgroup)
	if err != nil {
		return -1
	}
	var rel string
	for line := range strings.Lines(string(raw)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			rel = p
		}
	}
	if rel == "" {
		return -1
	}
	dir := filepath.Join(root, filepath.Clean("/"+rel))
	read := func(name string) (int64, bool) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return 0, false
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return v, err == nil // "max" is no limit
	}
	limit, ok := read("memory.max")
	if !ok {
		return -1
	}
	used, ok := read("memory.current")
	if !ok {
		return -1
	}
	return max(limit-used, 0)
}
