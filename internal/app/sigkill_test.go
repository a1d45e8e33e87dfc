package app

import (
	"bytes"
	"context"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/store"
)

// TestPolicyStateSurvivesSIGKILL runs the real binary, spends part of a
// window limit and a whole rate-limit burst, kills it with SIGKILL, restarts
// it, and finds both still spent: counters are committed with the request,
// durably (synchronous=FULL), not kept in memory.
func TestPolicyStateSurvivesSIGKILL(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := CreateKey(ctx, e.cfg, e.log, KeySpec{ID: "eth-other", Chain: "ethereum", Network: "1337"}, nil); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, e.cfg.Store.Path, e.log)
	if err != nil {
		t.Fatal(err)
	}
	err = st.WriteTx(ctx, func(tx *store.Tx) error {
		if _, err := policy.SetRules(ctx, tx, "eth-dev", policy.Rules{Windows: []policy.Window{{Asset: "ETH", Duration: "1h", Max: "3"}}}, "test"); err != nil {
			return err
		}
		_, err := policy.SetRules(ctx, tx, "eth-other", policy.Rules{RatePerClient: &policy.Rate{PerSecond: 0.0001, Burst: 2}}, "test")
		return err
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}

	bin := filepath.Join(t.TempDir(), "appliance")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/appliance").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.Listen = ln.Addr().String()
	ln.Close()
	e.url = "https://" + e.cfg.Listen
	y, err := e.cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(e.dir, "appliance.yaml")
	if err := os.WriteFile(cfgFile, y, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	run := func() *exec.Cmd {
		cmd := exec.Command(bin, "serve", "--config", cfgFile)
		cmd.Stdout, cmd.Stderr = &logs, &logs // SOFTHSM2_CONF is inherited
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		op := e.client("operator")
		waitFor(t, 20*time.Second, "appliance serving", func() bool {
			a, err := e.do(op, "GET", "/v1/status", nil)
			return err == nil && a.status == 200 && a.json(t)["sealed"] == false
		})
		return cmd
	}
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000f7")
	sign := func(key string, nonce uint64) answer {
		b := signBody(unsignedEIP1559(t, 1337, nonce, to, big.NewInt(1)), key+string(rune('a'+nonce)))
		b["key_id"] = key
		return e.must(c, "POST", "/v1/sign", b)
	}

	cmd := run()
	for n := uint64(0); n < 2; n++ {
		if a := sign("eth-dev", n); a.status != 200 {
			t.Fatalf("window use %d: %d %s", n, a.status, a.body)
		}
		if a := sign("eth-other", n); a.status != 200 {
			t.Fatalf("burst use %d: %d %s", n, a.status, a.body)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	cmd = run()
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	if a := sign("eth-dev", 2); a.status != 200 {
		t.Fatalf("third unit of the window after SIGKILL: %d %s\n%s", a.status, a.body, logs.String())
	}
	if a := sign("eth-dev", 3); a.status != 403 || a.code(t) != "limit_exceeded" {
		t.Fatalf("fourth unit of a window of 3 after SIGKILL: %d %s", a.status, a.body)
	}
	if a := sign("eth-other", 2); a.status != 429 || a.code(t) != "rate_limited" {
		t.Fatalf("burst of 2 spent before SIGKILL: %d %s", a.status, a.body)
	}
}
