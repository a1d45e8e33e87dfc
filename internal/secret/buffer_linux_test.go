//go:build linux

package secret

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// smapsFlags returns the VmFlags of the mapping of /proc/self/smaps that
// starts at mem's first byte, and whether there is one.
func smapsFlags(t testing.TB, mem []byte) ([]string, bool) {
	t.Helper()
	start := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
	return smapsFlagsAt(t, start)
}

func smapsFlagsAt(t testing.TB, start uint64) ([]string, bool) {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	inside := false
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			lo, _, _ := strings.Cut(fields[0], "-")
			addr, err := strconv.ParseUint(lo, 16, 64)
			inside = err == nil && addr == start
			continue
		}
		if rest, ok := strings.CutPrefix(line, "VmFlags:"); ok && inside {
			return strings.Fields(rest), true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return nil, false
}

func has(flags []string, f string) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}

// TestBufferMappingFlags: the buffer is its own mapping, outside the heap,
// marked "dd" (MADV_DONTDUMP) in /proc/self/smaps, and "lo" (locked) exactly
// when mlock succeeded; this process may lock (root, or a non-zero
// RLIMIT_MEMLOCK), so it must have.
func TestBufferMappingFlags(t *testing.T) {
	b := New(64)
	defer b.Destroy()
	if !b.Mapped() || !b.DontDump() {
		t.Fatalf("mapped %v, dontdump %v", b.Mapped(), b.DontDump())
	}
	flags, ok := smapsFlags(t, b.mem)
	if !ok {
		t.Fatal("the buffer is not a mapping of its own in /proc/self/smaps")
	}
	if !has(flags, "dd") {
		t.Errorf("VmFlags %v: no dd (MADV_DONTDUMP)", flags)
	}
	if has(flags, "lo") != b.Locked() {
		t.Errorf("VmFlags %v, Locked() = %v", flags, b.Locked())
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		t.Fatal(err)
	}
	if (os.Geteuid() == 0 || lim.Cur >= 64<<10) && !b.Locked() {
		t.Errorf("mlock failed although RLIMIT_MEMLOCK is %d and euid %d", lim.Cur, os.Geteuid())
	}
	// A second buffer is a second mapping: nothing shares pages with heap data.
	c := New(1)
	defer c.Destroy()
	if _, ok := smapsFlags(t, c.mem); !ok {
		t.Fatal("the second buffer is not a mapping of its own")
	}
}

// TestBufferZeroedThenUnmapped: Destroy zeroes the mapping before it unmaps
// it, and afterwards the pages are gone from the process.
func TestBufferZeroedThenUnmapped(t *testing.T) {
	b := New(100)
	pattern := bytes.Repeat([]byte{0xa5}, 100)
	copy(b.Bytes(), pattern)
	if !bytes.Equal(b.mem[:100], pattern) {
		t.Fatal("the buffer does not hold what was written")
	}
	start := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b.mem))))
	var seen []byte
	afterWipe = func(mem []byte) { seen = bytes.Clone(mem) }
	defer func() { afterWipe = nil }()
	b.Destroy()
	if seen == nil {
		t.Fatal("the mapping was never shown zeroed before unmap")
	}
	if len(seen) != os.Getpagesize() {
		t.Fatalf("the hook saw %d bytes, not the whole page", len(seen))
	}
	if !bytes.Equal(seen, make([]byte, len(seen))) {
		t.Fatal("the mapping held non-zero bytes when unmapped")
	}
	if _, ok := smapsFlagsAt(t, start); ok {
		t.Fatal("the mapping is still there after Destroy")
	}
}

// TestBufferWithoutMemlock: with RLIMIT_MEMLOCK 0 (and no CAP_IPC_LOCK) the
// buffer cannot be locked but is still mapped, excluded from dumps and
// zeroed. Runs in a child process that lowers its own limit (as nobody
// when the tests run as root, whom the limit does not bind).
func TestBufferWithoutMemlock(t *testing.T) {
	rep := runChild(t, "memlock0", childUID(t))
	for _, want := range []string{"mapped=true", "dontdump=true", "locked=false", "smaps-dd=true", "smaps-lo=false", "wiped=true", "unmapped=true"} {
		if !strings.Contains(rep, want) {
			t.Errorf("child reports %q, want %s", rep, want)
		}
	}
}

func memlock0Child() string {
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{}); err != nil {
		return "setrlimit: " + err.Error()
	}
	b := New(100)
	copy(b.Bytes(), bytes.Repeat([]byte{0x5a}, 100))
	start := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b.mem))))
	flags, _ := smapsFlagsAt(fatalTB{}, start)
	wiped := false
	afterWipe = func(mem []byte) { wiped = bytes.Equal(mem, make([]byte, len(mem))) }
	b.Destroy()
	_, still := smapsFlagsAt(fatalTB{}, start)
	return fmt.Sprintf("mapped=%v dontdump=%v locked=%v smaps-dd=%v smaps-lo=%v wiped=%v unmapped=%v",
		b.Mapped(), b.DontDump(), b.Locked(), has(flags, "dd"), has(flags, "lo"), wiped, !still)
}

// fatalTB lets child code use the smaps helpers; a failure exits the child.
type fatalTB struct{ testing.TB }

func (fatalTB) Helper() {}
func (fatalTB) Fatal(args ...any) {
	fmt.Println(args...)
	os.Exit(3)
}
