package loadgen

import (
	"os"
	"testing"
	"time"
)

func TestProcReadersOnThisProcess(t *testing.T) {
	pid := os.Getpid()
	before, err := ProcessCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	self0 := SelfCPU()
	// Burn 100 ms of CPU (however long that takes on a busy machine) so
	// that both clocks move.
	x, deadline := 0, time.Now().Add(20*time.Second)
	for SelfCPU()-self0 < 100*time.Millisecond && time.Now().Before(deadline) {
		for range 10000 {
			x++
		}
	}
	burnt := SelfCPU() - self0
	after, err := ProcessCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	if burnt < 100*time.Millisecond {
		t.Fatalf("SelfCPU moved by %v in 20 s of spinning (x=%d)", burnt, x)
	}
	// /proc counts in 10 ms ticks; allow for them and for other threads.
	if d := after - before; d < burnt-30*time.Millisecond || d > burnt+time.Second {
		t.Errorf("ProcessCPU moved by %v while SelfCPU moved by %v", d, burnt)
	}
	m, err := ProcessMemory(pid)
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS == 0 || m.HWM < m.RSS {
		t.Errorf("memory %+v: want 0 < VmRSS ≤ VmHWM", m)
	}
	busy, total, err := MachineCPU()
	if err != nil {
		t.Fatal(err)
	}
	if busy == 0 || busy > total {
		t.Errorf("/proc/stat: busy %d of %d", busy, total)
	}
	if _, err := ProcessCPU(1 << 30); err == nil {
		t.Error("ProcessCPU of a process that does not exist: no error")
	}
}
