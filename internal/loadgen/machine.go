package loadgen

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/custodysigner/appliance/hsm"
)

// fillMachine describes the machine and the PKCS#11 library.
func (m *Meta) fillMachine(ctx context.Context, mod *hsm.Module) {
	m.Cores = runtime.NumCPU()
	m.GoVersion = runtime.Version()
	m.CPUModel = cpuModel()
	if raw, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(raw))
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(cctx, "softhsm2-util", "--version").Output(); err == nil {
		m.SoftHSM = "SoftHSM " + strings.TrimSpace(string(out))
	} else if mod != nil {
		if info, err := mod.Info(ctx); err == nil {
			m.SoftHSM = info.LibraryDescription + " " + info.LibraryVersion
		}
	}
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, val, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(name) == "model name" {
			return strings.TrimSpace(val)
		}
	}
	return "unknown CPU"
}
