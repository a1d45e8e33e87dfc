package secret

import (
	"fmt"
	"io"
	"runtime"
)

// Buffer holds one secret of a fixed size outside the Go heap (where the
// platform allows). It is not safe for concurrent use: its owner
// synchronises, and must not use a slice from Bytes after Destroy (on Linux
// the pages are unmapped: such a use faults instead of reading a later
// secret). It never prints: every fmt verb gives "[redacted]".
type Buffer struct {
	mem      []byte // the whole allocation, nil once destroyed
	size     int
	mapped   bool // mem is an mmap'd region, outside the Go heap
	locked   bool // mlock succeeded
	dontDump bool // MADV_DONTDUMP succeeded
	cleanup  runtime.Cleanup
}

// New returns a zeroed Buffer of size bytes. It does not fail: when no
// mapping can be made it falls back to the Go heap (Mapped reports which),
// and locking and dump exclusion are best effort (Locked, DontDump). If the
// owner forgets Destroy, the buffer is zeroed and freed once unreachable.
func New(size int) *Buffer {
	if size < 0 {
		panic("secret: negative buffer size")
	}
	a := alloc(size)
	b := &Buffer{mem: a.mem, size: size, mapped: a.mapped, locked: a.locked, dontDump: a.dontDump}
	if len(a.mem) > 0 {
		b.cleanup = runtime.AddCleanup(b, func(a allocation) { a.free() }, a)
	}
	return b
}

// Copy returns a new Buffer holding a copy of src, and zeroes src: the
// secret moves out of the heap slice it arrived in.
func Copy(src []byte) *Buffer {
	b := New(len(src))
	copy(b.Bytes(), src)
	Wipe(src)
	return b
}

// Bytes returns the secret, len and cap equal to the size; nil after Destroy.
func (b *Buffer) Bytes() []byte {
	if b == nil || b.mem == nil {
		return nil
	}
	return b.mem[:b.size:b.size]
}

// Len is the size given to New; 0 after Destroy.
func (b *Buffer) Len() int {
	if b == nil || b.mem == nil {
		return 0
	}
	return b.size
}

// Mapped reports whether the buffer lives outside the Go heap.
func (b *Buffer) Mapped() bool { return b != nil && b.mapped }

// Locked reports whether the buffer is locked into RAM (mlock), so it is
// never written to swap. RLIMIT_MEMLOCK may forbid it.
func (b *Buffer) Locked() bool { return b != nil && b.locked }

// DontDump reports whether the buffer is excluded from core dumps.
func (b *Buffer) DontDump() bool { return b != nil && b.dontDump }

// Destroy zeroes the buffer, unlocks and unmaps it. It is idempotent and
// safe on a nil Buffer.
func (b *Buffer) Destroy() {
	if b == nil || b.mem == nil {
		return
	}
	b.cleanup.Stop()
	allocation{mem: b.mem, mapped: b.mapped, locked: b.locked}.free()
	b.mem = nil
}

// Wipe zeroes b. It is clear with a name that says why.
func Wipe(b []byte) {
	clear(b)
	runtime.KeepAlive(b)
}

// String never reveals the secret. String, GoString and Format have value
// receivers so that Buffer and *Buffer both redact under every verb.
func (Buffer) String() string { return "[redacted]" }

// GoString never reveals the secret.
func (Buffer) GoString() string { return "[redacted]" }

// Format makes every fmt verb print "[redacted]".
func (Buffer) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, "[redacted]") }

// allocation is what alloc made, and how to free it.
type allocation struct {
	mem      []byte
	mapped   bool
	locked   bool
	dontDump bool
}

func heapAllocation(size int) allocation {
	return allocation{mem: make([]byte, size)}
}
