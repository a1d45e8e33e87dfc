package secret

import (
	"bytes"
	"fmt"
	"testing"
)

func TestBufferBasics(t *testing.T) {
	b := New(33)
	if b.Len() != 33 || len(b.Bytes()) != 33 || cap(b.Bytes()) != 33 {
		t.Fatalf("len %d, bytes %d, cap %d", b.Len(), len(b.Bytes()), cap(b.Bytes()))
	}
	if !bytes.Equal(b.Bytes(), make([]byte, 33)) {
		t.Fatal("a new buffer is not zeroed")
	}
	copy(b.Bytes(), "a secret that must never print!!!")
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q", "%d"} {
		if got := fmt.Sprintf(verb, b); got != "[redacted]" {
			t.Errorf("%s prints %q", verb, got)
		}
		if got := fmt.Sprintf(verb, *b); got != "[redacted]" {
			t.Errorf("%s of the value prints %q", verb, got)
		}
	}
	b.Destroy()
	b.Destroy() // idempotent
	if b.Bytes() != nil || b.Len() != 0 {
		t.Fatal("a destroyed buffer still has bytes")
	}
	var nilBuf *Buffer
	nilBuf.Destroy()
	if nilBuf.Bytes() != nil || nilBuf.Locked() || nilBuf.Mapped() || nilBuf.DontDump() {
		t.Fatal("a nil buffer claims memory")
	}
	empty := New(0)
	if empty.Bytes() != nil || empty.Len() != 0 {
		t.Fatal("an empty buffer has bytes")
	}
	empty.Destroy()
}

func TestCopyWipesSource(t *testing.T) {
	src := []byte("0123456789abcdef")
	b := Copy(src)
	defer b.Destroy()
	if string(b.Bytes()) != "0123456789abcdef" {
		t.Fatalf("copy holds %q", b.Bytes())
	}
	if !bytes.Equal(src, make([]byte, 16)) {
		t.Fatal("Copy left the source behind")
	}
}

func TestHeapAllocationZeroedOnFree(t *testing.T) {
	a := heapAllocation(32)
	copy(a.mem, bytes.Repeat([]byte{0xa5}, 32))
	a.free()
	if !bytes.Equal(a.mem, make([]byte, 32)) {
		t.Fatal("the heap fallback is not zeroed on free")
	}
}

func TestDoRuns(t *testing.T) {
	ran := false
	Do(func() { ran = true })
	if !ran {
		t.Fatal("Do did not call f")
	}
}
