package crashtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/client"
	"github.com/custodysigner/appliance/internal/loadgen"
)

// The instance's principals (scripts/dev.sh's dev PKI and configuration).
const (
	clientName = "spiffe://appliance.dev/client"
	ethKey     = "eth-dev"
	btcKey     = "btc-dev"
	chainID    = 1337
)

// Policy of both keys: every request does the policy engine's real work and
// writes (a rolling window per asset, rate buckets per client and per key),
// and nothing is ever refused or sent to officers. The buckets refill so
// slowly (one token in about three hours) that the tokens they hold say
// exactly how many requests were recorded: burst − tokens.
const (
	rateBurst     = 1_000_000
	ratePerSecond = 0.0001
)

func rulesJSON(asset, perTxMax, windowMax, approvalAbove string) string {
	rate := fmt.Sprintf(`{"per_second":%g,"burst":%d}`, ratePerSecond, rateBurst)
	return fmt.Sprintf(`{"per_tx_max":{%q:%q},"windows":[{"asset":%q,"duration":"24h","max":%q}],`+
		`"rate_per_client":%s,"rate_per_key":%s,"approval_above":{%q:%q},"approvals":2}`,
		asset, perTxMax, asset, windowMax, rate, rate, asset, approvalAbove)
}

var (
	ethRules = rulesJSON("ETH", "1000000000000000000", "1000000000000000000000000", "10000000000000000000")
	btcRules = rulesJSON("BTC", "100000000", "2100000000000000", "1000000000")
)

// repoRoot is the module's root directory (scripts/dev.sh lives there).
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

func softHSMInstalled() bool {
	for _, p := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// build compiles the real appliance into the work directory.
func (h *harness) build() {
	h.t.Helper()
	h.bin = filepath.Join(h.dir, "appliance")
	args := []string{"build", "-o", h.bin}
	if h.opt.race {
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool(), append(args, "./cmd/appliance")...)
	cmd.Dir = h.root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		h.t.Fatalf("go build ./cmd/appliance: %v\n%s", err, out)
	}
}

// freePort returns a loopback port nobody listens on now, below the
// kernel's ephemeral range when it can: the appliance gives its port up at
// every kill, and a port from that range could meanwhile become another
// test's listener or connection.
func (h *harness) freePort() int {
	low := 32768
	if raw, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(raw)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	for try := 0; low > 20000 && try < 50; try++ {
		port := 15000 + h.rng.IntN(low-15000)
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			ln.Close()
			return port
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// provision creates the instance exactly as scripts/dev.sh does (its own
// SoftHSM token, dev PKI, 2-of-3 ceremony, keys eth-dev and btc-dev), then
// gives both keys the test's policy, makes audit checkpoints frequent (so
// kills land inside them too), and writes the configuration variants: the
// dev one (unsealed at start with two share files) and one that starts
// sealed and waits for officers (POST /v1/unseal).
func (h *harness) provision() {
	t := h.t
	t.Helper()
	port := h.freePort()
	h.addr = fmt.Sprintf("127.0.0.1:%d", port)
	h.inst = filepath.Join(h.dir, "instance")
	cmd := exec.Command(filepath.Join(h.root, "scripts", "dev.sh"), "provision")
	cmd.Env = append(os.Environ(), "APPLIANCE_BIN="+h.bin, "DEV_DIR="+h.inst, "DEV_PORT="+strconv.Itoa(port))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/dev.sh provision: %v\n%s", err, out)
	}
	h.cfgDev = filepath.Join(h.inst, "appliance.yaml")
	raw, err := os.ReadFile(h.cfgDev)
	if err != nil {
		t.Fatal(err)
	}
	raw = append(raw, "audit:\n  checkpoint_every: 50\n  checkpoint_interval: 1s\n"...)
	if err := os.WriteFile(h.cfgDev, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	var sealed bytes.Buffer
	dropped := false
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		if strings.HasPrefix(strings.TrimSpace(sc.Text()), "dev_unseal_shares:") {
			dropped = true
			continue
		}
		sealed.WriteString(sc.Text() + "\n")
	}
	if !dropped {
		t.Fatal("the dev configuration has no seal.dev_unseal_shares line")
	}
	h.cfgSealed = filepath.Join(h.inst, "appliance-sealed.yaml")
	if err := os.WriteFile(h.cfgSealed, sealed.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	h.db = filepath.Join(h.inst, "appliance.db")
	// The configuration `appliance check` reads a snapshot through.
	h.snapDir = filepath.Join(h.dir, "snapshot")
	if err := os.MkdirAll(h.snapDir, 0o700); err != nil {
		t.Fatal(err)
	}
	h.snapDB = filepath.Join(h.snapDir, "appliance.db")
	h.cfgSnap = filepath.Join(h.snapDir, "appliance.yaml")
	snapCfg := strings.Replace(string(raw), "path: "+h.db, "path: "+h.snapDB, 1)
	if snapCfg == string(raw) {
		t.Fatalf("no store path %s in the configuration", h.db)
	}
	if err := os.WriteFile(h.cfgSnap, []byte(snapCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct{ id, rules string }{{ethKey, ethRules}, {btcKey, btcRules}} {
		h.cli(nil, "policy", "set", "--config", h.cfgDev, "--key", k.id, "--rules", k.rules,
			"--share-file", h.share(1), "--share-file", h.share(2))
	}
	pki := filepath.Join(h.inst, "pki")
	h.files = func(who string) loadgen.TLSFiles {
		return loadgen.TLSFiles{Cert: filepath.Join(pki, who+".crt"), Key: filepath.Join(pki, who+".key"), CA: filepath.Join(pki, "ca.crt")}
	}
	mk := func(who string) *client.Client {
		f := h.files(who)
		c, err := client.New(client.Options{URL: "https://" + h.addr, Cert: f.Cert, Key: f.Key, CA: f.CA})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	h.asClient, h.asAuditor = mk("client"), mk("auditor")
	h.logPath = filepath.Join(h.dir, "appliance.log")
	if h.logFile, err = os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.logFile.Close() })
}

func (h *harness) share(n int) string {
	return filepath.Join(h.inst, "shares", fmt.Sprintf("officer%d.share", n))
}

// cli runs the appliance's command line and returns its standard output;
// a failure ends the test.
func (h *harness) cli(env []string, args ...string) string {
	h.t.Helper()
	out, err := h.cliErr(env, args...)
	if err != nil {
		h.t.Fatalf("appliance %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (h *harness) cliErr(env []string, args ...string) (string, error) {
	cmd := exec.Command(h.bin, args...)
	cmd.Env = append(append(os.Environ(), "SOFTHSM2_CONF="+filepath.Join(h.inst, "hsm", "softhsm2.conf")), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w\nstdout: %s\nstderr: %s", err, stdout.String(), lastLines(stderr.String(), 20))
	}
	return stdout.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// start runs `appliance serve` with the dev configuration (unsealed at
// start with two share files) or the sealed one.
func (h *harness) start(sealed bool) {
	h.t.Helper()
	if h.proc != nil {
		h.t.Fatal("start: the appliance is already running")
	}
	cfg := h.cfgDev
	if sealed {
		cfg = h.cfgSealed
	}
	fmt.Fprintf(h.logFile, "\n=== crashtest: start #%d (%s) at %s\n", h.stats.starts+1, filepath.Base(cfg), time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(h.bin, "serve", "--config", cfg)
	cmd.Stdout, cmd.Stderr = h.logFile, h.logFile
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.proc = cmd
	h.exited = make(chan error, 1)
	go func() { h.exited <- cmd.Wait() }()
	h.stats.starts++
}

// kill sends SIGKILL and waits for the process to be gone.
func (h *harness) kill() {
	h.t.Helper()
	if h.proc == nil {
		return
	}
	_ = syscall.Kill(h.proc.Process.Pid, syscall.SIGKILL)
	h.reap()
}

func (h *harness) reap() {
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		h.t.Fatalf("the appliance (pid %d) did not exit within 30 s of SIGKILL", h.proc.Process.Pid)
	}
	h.proc = nil
}

// stop sends SIGTERM and requires a clean exit.
func (h *harness) stop() {
	h.t.Helper()
	_ = h.proc.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-h.exited:
		if err != nil {
			h.t.Errorf("the appliance exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		_ = h.proc.Process.Kill()
		<-h.exited
		h.t.Errorf("the appliance did not stop within 30 s of SIGTERM")
	}
	h.proc = nil
}

type healthBody struct {
	Status string `json:"status"`
	Sealed bool   `json:"sealed"`
	Frozen bool   `json:"frozen"`
	Checks map[string]struct {
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	} `json:"checks"`
}

// waitServing polls GET /v1/health until the appliance answers (sealed or
// not); it fails the test if the process exits or does not answer in 30 s.
func (h *harness) waitServing() healthBody {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-h.exited:
			h.exited <- err
			h.t.Fatalf("the appliance exited at start (%v); its log:\n%s", err, h.logTail(40))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var hb healthBody
		err := h.asClient.Do(ctx, "GET", "/v1/health", nil, &hb)
		cancel()
		if err == nil {
			return hb
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("the appliance does not answer /v1/health after 30 s (%v); its log:\n%s", last, h.logTail(40))
	return healthBody{}
}

// waitUnsealed waits for an unsealed, healthy appliance. It allows 60 s:
// a race-built appliance restarting on a loaded 2-core machine, beside the
// rest of `go test ./...`, can take more than the 30 s that suffice alone;
// the failure names the checks that were not ok.
func (h *harness) waitUnsealed() {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var hb healthBody
	for time.Now().Before(deadline) {
		hb = h.waitServing()
		if hb.Frozen {
			h.t.Fatalf("the appliance is frozen; its log:\n%s", h.logTail(40))
		}
		if !hb.Sealed && hb.Status == "ok" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("not unsealed and healthy after 60 s (last health %+v); its log:\n%s", hb, h.logTail(40))
}

// officerShare submits officer n's share through the API with the officer
// command (`appliance unseal --share-file`) and returns the seal state it
// answers.
func (h *harness) officerShare(n int) (sealed bool, progress int) {
	h.t.Helper()
	f := h.files(fmt.Sprintf("officer%d", n))
	out := h.cli([]string{"APPLIANCE_URL=https://" + h.addr, "APPLIANCE_CERT=" + f.Cert, "APPLIANCE_KEY=" + f.Key, "APPLIANCE_CA=" + f.CA},
		"unseal", "--share-file", h.share(n))
	var st struct {
		Sealed   bool `json:"sealed"`
		Progress int  `json:"progress"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		h.t.Fatalf("appliance unseal: %v: %s", err, out)
	}
	return st.Sealed, st.Progress
}

// officerUnseal unseals as two officers would: officer 1, then officer 3
// (another pair than the dev configuration's 1 and 2).
func (h *harness) officerUnseal() {
	h.t.Helper()
	if sealed, progress := h.officerShare(1); !sealed || progress != 1 {
		h.t.Fatalf("after officer1's share: sealed %v, progress %d; want sealed, 1 of 2", sealed, progress)
	}
	if sealed, _ := h.officerShare(3); sealed {
		h.t.Fatal("still sealed after officer1's and officer3's shares")
	}
	h.stats.apiUnseals++
}

// keyInfo is GET /v1/keys/{id}.
type keyInfo struct {
	Chain     string `json:"chain"`
	Network   string `json:"network"`
	PublicKey string `json:"public_key"`
	Address   string `json:"address"`
}

// loadKeys reads both keys through the API and prepares the body sources.
func (h *harness) loadKeys() {
	t := h.t
	t.Helper()
	ctx := context.Background()
	var eth, btc keyInfo
	if err := h.asClient.Do(ctx, "GET", "/v1/keys/"+ethKey, nil, &eth); err != nil {
		t.Fatal(err)
	}
	if err := h.asClient.Do(ctx, "GET", "/v1/keys/"+btcKey, nil, &btc); err != nil {
		t.Fatal(err)
	}
	if !common.IsHexAddress(eth.Address) || eth.Network != strconv.Itoa(chainID) {
		t.Fatalf("key %s: %+v", ethKey, eth)
	}
	h.ethAddr = common.HexToAddress(eth.Address)
	pub, err := hex.DecodeString(btc.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if h.btcScript, err = bitcoin.P2WPKHScript(pub); err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("crash%d", h.opt.seed)
	if h.ethBodies, err = loadgen.EthBodies(ethKey, chainID, tag); err != nil {
		t.Fatal(err)
	}
	if h.btcBodies, err = loadgen.BTCBodies(btcKey, btc.Network, pub, tag); err != nil {
		t.Fatal(err)
	}
	// The auditor's own copy of the audit public key, taken once, while
	// the chain is young: every later verification uses this file.
	h.auditPub = filepath.Join(h.dir, "audit.pub")
	if err := os.WriteFile(h.auditPub, []byte(h.cli(nil, "audit", "pubkey", "--config", h.cfgDev)), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) logTail(n int) string {
	raw, err := os.ReadFile(h.logPath)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(raw), n)
}

// scanLog reports what the appliance's log holds that it never should:
// panics and data races (CRASH_RACE), and counts its ERROR lines.
func (h *harness) scanLog() (errorLines []string) {
	raw, err := os.ReadFile(h.logPath)
	if err != nil {
		h.t.Error(err)
		return nil
	}
	for _, l := range strings.Split(string(raw), "\n") {
		switch {
		case strings.Contains(l, "WARNING: DATA RACE"):
			h.t.Errorf("the appliance reported a data race; see %s", h.logPath)
		case strings.HasPrefix(l, "panic:") || strings.HasPrefix(l, "fatal error:"):
			h.t.Errorf("the appliance crashed by itself: %s", l)
		case strings.Contains(l, "\tERROR\t"):
			errorLines = append(errorLines, l)
		}
	}
	return errorLines
}
