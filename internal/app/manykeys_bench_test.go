package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/devpki"
	"github.com/custodysigner/appliance/internal/store"
)

// BenchmarkStartUnseal10kKeys measures the two start-up figures of issue 8
// with 10,000 keys in the registry and on the token:
//
//   - sealed_ready_s: from the call to New until the appliance serves and
//     /v1/health answers "sealed" (store opened, migrated and checked, key
//     registry loaded, listener up: ready for unseal shares). Target: < 2 s.
//   - unseal_to_serving_s: from the first officer's share until a real
//     /v1/sign request succeeds (shares combined, PIN derived, HSM opened
//     and logged in, audit key and every registered key checked against the
//     token, one signature). Target: < 5 s.
//
// Each iteration is one whole appliance life: New, serve, unseal, sign,
// stop, close. The keys are built once per key count and kept in
// var/bench-keys/<count>/ (a SoftHSM token directory, the SQLite registry,
// the ceremony's shares and a dev PKI), because generating them takes
// minutes; delete that directory to rebuild it. Each benchmark process works
// on a fresh copy of it, var/bench-keys/<count>.run/, so that a run that
// dies half-way cannot leave the kept token and database disagreeing.
// -short uses 1,000 keys and APPLIANCE_BENCH_KEYS=<n> any other count.
func BenchmarkStartUnseal10kKeys(b *testing.B) {
	n := benchKeyCount()
	fx := manyKeysFixture(b, n)
	var sum cycleTimes
	iters := 0
	for b.Loop() {
		t := fx.cycle(b)
		sum.ready, sum.readyCPU = sum.ready+t.ready, sum.readyCPU+t.readyCPU
		sum.serving, sum.servingCPU = sum.serving+t.serving, sum.servingCPU+t.servingCPU
		iters++
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(iters) }
	b.ReportMetric(float64(n), "keys")
	b.ReportMetric(per(sum.ready), "sealed_ready_s")
	b.ReportMetric(per(sum.serving), "unseal_to_serving_s")
	// The process's CPU time over the same intervals: on a shared machine it
	// says how much of the wall time was this work and how much was waiting.
	b.ReportMetric(per(sum.readyCPU), "sealed_ready_cpu_s")
	b.ReportMetric(per(sum.servingCPU), "unseal_to_serving_cpu_s")
}

// BenchmarkUnsealSteps10kKeys times the HSM steps of the unseal on the same
// fixture, as Unseal takes them, each with its CPU time: opening the module
// (C_Initialize, login, sessions), the audit key's check, reading the audit
// head, and checking and pinning every registered key with the audit key.
func BenchmarkUnsealSteps10kKeys(b *testing.B) {
	n := benchKeyCount()
	fx := manyKeysFixture(b, n)
	ctx := context.Background()
	st, err := store.Open(ctx, fx.cfg.Store.Path, fx.log.Named("store"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	pin, err := PINFromShares(ctx, st, []string{filepath.Join(fx.dir, "shares", "officer1.share"), filepath.Join(fx.dir, "shares", "officer2.share")})
	if err != nil {
		b.Fatal(err)
	}
	defer clear(pin)
	ak, err := st.ActiveAuditKey(ctx)
	if err != nil {
		b.Fatal(err)
	}
	keys, err := st.ListKeys(ctx)
	if err != nil {
		b.Fatal(err)
	}
	pins := []hsm.PinnedKey{{Ref: auditRef(ak), PublicKey: ak.PublicKey}}
	for _, k := range keys {
		pins = append(pins, hsm.PinnedKey{Ref: hsm.KeyRef{ID: k.CKAID, Algorithm: hsm.Algorithm(k.Algorithm), WrappedBackup: k.WrappedBackup}, PublicKey: k.PublicKey})
	}
	steps := []string{"open", "audit_key", "audit_head", "keys"}
	wall, cpu := make([]time.Duration, len(steps)), make([]time.Duration, len(steps))
	iters := 0
	for b.Loop() {
		step := 0
		t, c := time.Now(), processCPU()
		lap := func() {
			wall[step] += time.Since(t)
			cpu[step] += processCPU() - c
			step++
			t, c = time.Now(), processCPU()
		}
		m, err := OpenHSM(ctx, fx.cfg, fx.log, pin)
		if err != nil {
			b.Fatal(err)
		}
		fail := func(err error) {
			_ = m.Close() // the next Open in this process must not find it initialised
			b.Fatal(err)
		}
		lap()
		if err := m.CheckKey(ctx, auditRef(ak), ak.PublicKey); err != nil {
			fail(err)
		}
		lap()
		if _, err := m.ReadData(ctx, auditHeadLabel); err != nil && !errors.Is(err, hsm.ErrDataNotFound) {
			fail(err)
		}
		lap()
		for i, err := range m.PinKeys(ctx, pins) {
			if err != nil {
				fail(fmt.Errorf("key %d: %w", i, err))
			}
		}
		lap()
		b.StopTimer()
		if err := m.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		iters++
	}
	for i, name := range steps {
		b.ReportMetric(wall[i].Seconds()/float64(iters), name+"_s")
		b.ReportMetric(cpu[i].Seconds()/float64(iters), name+"_cpu_s")
	}
}

// cycleTimes are one appliance life's measured intervals, wall and CPU.
type cycleTimes struct{ ready, readyCPU, serving, servingCPU time.Duration }

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchProcessStart approximates when go test's -timeout started counting.
var benchProcessStart = time.Now()

// testTimeLeft is what is left of -test.timeout; ok is false without one.
func testTimeLeft() (time.Duration, bool) {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return 0, false
	}
	g, isGetter := f.Value.(flag.Getter)
	if !isGetter {
		return 0, false
	}
	d, isDuration := g.Get().(time.Duration)
	if !isDuration || d <= 0 {
		return 0, false
	}
	return d - time.Since(benchProcessStart), true
}

func benchKeyCount() int {
	if v := os.Getenv("APPLIANCE_BENCH_KEYS"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n
		}
	}
	if testing.Short() {
		return 1_000
	}
	return 10_000
}

// benchFixtureVersion changes whenever the fixture's layout changes, so a
// stale var/bench-keys directory is rebuilt rather than misread.
const benchFixtureVersion = "1"

// manyKeys is an initialised appliance (ceremony, token, registry) with n
// keys, kept on disk across benchmark processes.
type manyKeys struct {
	n      int
	dir    string // where the appliance runs: the kept fixture, or a copy of it
	cfg    *config.Config
	log    *zap.Logger
	shares []string // officer1 and officer2
	setup  time.Duration
}

var (
	manyKeysMu   sync.Mutex
	manyKeysByN  = map[int]*manyKeys{}
	manyKeysLock *os.File // flock on var/bench-keys, held for the process's life
)

func manyKeysFixture(b *testing.B, n int) *manyKeys {
	b.Helper()
	manyKeysMu.Lock()
	defer manyKeysMu.Unlock()
	if fx := manyKeysByN[n]; fx != nil {
		return fx
	}
	fx, err := loadOrBuildManyKeys(b, n)
	if err != nil {
		b.Fatal(err)
	}
	manyKeysByN[n] = fx
	return fx
}

func benchModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

func loadOrBuildManyKeys(b *testing.B, n int) (*manyKeys, error) {
	root, err := benchModuleRoot()
	if err != nil {
		return nil, err
	}
	base := filepath.Join(root, "var", "bench-keys")
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, err
	}
	if manyKeysLock == nil {
		// Two benchmark processes must not share a token directory.
		f, err := os.OpenFile(filepath.Join(base, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, err
		}
		manyKeysLock = f
	}
	kept := filepath.Join(base, strconv.Itoa(n))
	fx := &manyKeys{n: n, dir: kept}
	// Logs go nowhere (or to $APPLIANCE_BENCH_LOG), but through a real
	// encoder at info level as in production.
	var sink io.Writer = io.Discard
	if p := os.Getenv("APPLIANCE_BENCH_LOG"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		sink = f
	}
	fx.log = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(sink), zap.InfoLevel))
	stamp := filepath.Join(kept, "complete")
	raw, err := os.ReadFile(stamp)
	if f := strings.Fields(string(raw)); err == nil && len(f) == 2 && f[0] == benchFixtureVersion {
		fx.setup, _ = time.ParseDuration(f[1])
		b.Logf("%d keys: reusing %s (built in %s; delete it to rebuild)", n, kept, fx.setup.Round(time.Millisecond))
	} else {
		// 10,000 keys take about 8 minutes on a 2-core machine (SoftHSM
		// re-reads its token directory after each new key): refuse up front
		// rather than be killed half-way by go test's default 10-minute
		// timeout.
		if left, ok := testTimeLeft(); ok && n >= 5_000 && left < 30*time.Minute {
			b.Fatalf("the %d-key fixture %s is not built yet and takes minutes to build; build it once with a longer timeout:\n"+
				"  go test -run '^$' -bench StartUnseal10kKeys -benchtime 1x -timeout 60m ./internal/app/", n, kept)
		}
		b.Logf("%d keys: building %s (once; kept for later runs)", n, kept)
		start := time.Now()
		if err := os.RemoveAll(kept); err != nil {
			return nil, err
		}
		if err := fx.build(b); err != nil {
			return nil, fmt.Errorf("building the %d-key fixture: %w", n, err)
		}
		fx.setup = time.Since(start)
		// One whole life before the stamp: the first unseal generates the
		// audit key, and the fixture is only kept once it has unsealed and
		// signed.
		fx.cycle(b)
		if err := os.WriteFile(stamp, []byte(benchFixtureVersion+" "+fx.setup.String()+"\n"), 0o600); err != nil {
			return nil, err
		}
		b.Logf("%d keys: built in %s", n, fx.setup.Round(time.Millisecond))
	}
	start := time.Now()
	fx.dir = kept + ".run"
	if err := os.RemoveAll(fx.dir); err != nil {
		return nil, err
	}
	if err := copyTree(fx.dir, kept); err != nil {
		return nil, fmt.Errorf("copying the fixture: %w", err)
	}
	syscall.Sync() // the copy's writeback must not run during the measurements
	if fx.cfg, err = fx.config(); err != nil {
		return nil, err
	}
	if err := fx.readShares(); err != nil {
		return nil, err
	}
	b.Logf("%d keys: copied to %s in %s", n, fx.dir, time.Since(start).Round(time.Millisecond))
	return fx, nil
}

// copyTree copies the directory src to dst, keeping file modes (the
// database and the PKI keys are 0600).
func copyTree(dst, src string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, fi.Mode().Perm())
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		return errors.Join(err, out.Close())
	})
}

func (fx *manyKeys) tokenLabel() string { return fmt.Sprintf("bench-%d", fx.n) }

// config is the appliance's configuration for the fixture, written for
// where the fixture is now (paths are absolute).
func (fx *manyKeys) config() (*config.Config, error) {
	conf := filepath.Join(fx.dir, "softhsm2.conf")
	body := "directories.tokendir = " + filepath.Join(fx.dir, "tokens") + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	pki := filepath.Join(fx.dir, "pki")
	if err := devpki.Generate(pki, devpki.DefaultClients()); err != nil {
		return nil, err
	}
	uri := (&hsm.URI{ModulePath: softhsmtest.ModulePath(), Token: fx.tokenLabel()}).String()
	var ps strings.Builder
	for _, p := range []string{"client", "officer1", "officer2", "officer3", "operator"} {
		role, keys := strings.TrimRight(p, "0123456789"), ""
		if role == "client" {
			keys = ", keys: [eth-dev]"
		}
		fmt.Fprintf(&ps, "  - {name: %s%s, roles: [%s]%s}\n", testPrincipalPrefix, p, role, keys)
	}
	return config.Parse(fmt.Appendf(nil, `
mode: dev
listen: 127.0.0.1:0
tls: {cert: %[1]s/server.crt, key: %[1]s/server.key, client_ca: %[1]s/ca.crt}
hsm: {uri: %[2]q, softhsm2_conf: %[3]q, pool_size: 4, acquire_timeout: 5s}
store: {path: %[4]s/appliance.db}
log: {level: info}
principals:
%[5]s`, pki, uri, conf, fx.dir, ps.String()))
}

func (fx *manyKeys) readShares() error {
	fx.shares = nil
	for i := 1; i <= 2; i++ {
		raw, err := os.ReadFile(filepath.Join(fx.dir, "shares", fmt.Sprintf("officer%d.share", i)))
		if err != nil {
			return err
		}
		fx.shares = append(fx.shares, strings.TrimSpace(string(raw)))
	}
	return nil
}

// build runs the 2-of-3 key ceremony, then generates n keys in the token
// (in parallel, through generateKey: the HSM generates them sensitive and
// non-extractable and their attributes are checked) and registers them
// through the registry's own insert, in batches of 500 per transaction.
// Every 4th key is a Bitcoin key, every 10th is backup-able; one Ethereum
// key is "eth-dev", the one the benchmark signs with.
func (fx *manyKeys) build(b *testing.B) error {
	if err := os.MkdirAll(filepath.Join(fx.dir, "tokens"), 0o700); err != nil {
		return err
	}
	var err error
	if fx.cfg, err = fx.config(); err != nil {
		return err
	}
	ctx := context.Background()
	if err := InitCeremony(ctx, fx.cfg, fx.log, []byte("bench-so-pin"), CeremonySpec{Threshold: 2, Officers: officerNames, OutDir: fx.dir, GenerateApprovalKeys: true}); err != nil {
		return err
	}
	if err := fx.readShares(); err != nil {
		return err
	}
	st, err := store.Open(ctx, fx.cfg.Store.Path, fx.log.Named("store"))
	if err != nil {
		return err
	}
	defer st.Close()
	pin, err := PINFromShares(ctx, st, []string{filepath.Join(fx.dir, "shares", "officer1.share"), filepath.Join(fx.dir, "shares", "officer2.share")})
	if err != nil {
		return err
	}
	// Many generators: C_GenerateKeyPair is serialised, but each new object
	// makes SoftHSM re-read the token directory at the next access, and
	// generators checking their keys together share those re-reads.
	workers := 16
	if v, err := strconv.Atoi(os.Getenv("APPLIANCE_BENCH_GENERATORS")); err == nil && v > 0 {
		workers = v
	}
	genCfg := *fx.cfg
	genCfg.HSM.PoolSize = workers
	m, err := OpenHSM(ctx, &genCfg, fx.log, pin)
	clear(pin)
	if err != nil {
		return err
	}
	defer m.Close()

	specs := make(chan KeySpec)
	keys := make(chan store.Key, 64)
	errc := make(chan error, 1)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for s := range specs {
				k, err := generateKey(ctx, m, s)
				if err != nil {
					fail(err)
					continue
				}
				keys <- k
			}
		})
	}
	go func() {
		defer close(specs)
		for i := range fx.n {
			s := KeySpec{ID: fmt.Sprintf("k%05d", i), Chain: "ethereum", Network: "1337", WrappedBackup: i%10 == 9}
			switch {
			case i == 0:
				s.ID = "eth-dev"
			case i%4 == 3:
				s.Chain, s.Network = "bitcoin", "regtest"
			}
			specs <- s // the workers drain specs even after an error
		}
	}()
	go func() { wg.Wait(); close(keys) }()
	var batch []store.Key
	flush := func() error {
		err := st.WriteTx(ctx, func(tx *store.Tx) error {
			for _, k := range batch {
				if err := store.InsertKeyTx(ctx, tx, k); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	done, last := 0, time.Now()
	for k := range keys {
		batch = append(batch, k)
		if done++; len(batch) == 500 {
			if err := flush(); err != nil {
				return err
			}
		}
		if time.Since(last) > 10*time.Second {
			b.Logf("%d of %d keys generated", done, fx.n)
			last = time.Now()
		}
	}
	if err := flush(); err != nil {
		return err
	}
	select {
	case err := <-errc:
		return err
	default:
	}
	if done != fx.n {
		return fmt.Errorf("%d keys generated, want %d", done, fx.n)
	}
	return nil
}

// cycle is one appliance life; it returns the two measured intervals.
func (fx *manyKeys) cycle(b *testing.B) (t cycleTimes) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	operator, officer1, officer2, client := fx.client(b, "operator"), fx.client(b, "officer1"), fx.client(b, "officer2"), fx.client(b, "client")

	start, startCPU := time.Now(), processCPU()
	a, err := New(ctx, fx.cfg, fx.log, "bench")
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.Close()
		b.Fatal(err)
	}
	url := "https://" + ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- a.ServeListener(ctx, ln) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("serve: %v", err)
			}
		case <-time.After(time.Minute):
			b.Error("serve did not return within a minute of cancellation")
		}
		a.Close()
	}()
	for {
		if a.Ready() {
			var h struct {
				Sealed bool `json:"sealed"`
			}
			if status, body := benchDo(b, operator, "GET", url+"/v1/health", nil); status != 0 && json.Unmarshal(body, &h) == nil && h.Sealed {
				break
			}
		}
		if time.Since(start) > 5*time.Minute {
			b.Fatal("not sealed and ready within 5 minutes")
		}
		time.Sleep(time.Millisecond)
	}
	t.ready, t.readyCPU = time.Since(start), processCPU()-startCPU

	start, startCPU = time.Now(), processCPU()
	for i, c := range []*http.Client{officer1, officer2} {
		status, body := benchDo(b, c, "POST", url+"/v1/unseal", map[string]string{"share": fx.shares[i]})
		if status == 0 && i == 1 {
			// The unseal outlasted the server's write timeout, so the answer
			// never came (the code before issue 8 took minutes): wait for it.
			b.Logf("the last share got no answer after %s; waiting for the unseal", time.Since(start).Round(time.Millisecond))
			fx.waitUnsealed(b, operator, url)
			break
		}
		if status != http.StatusOK {
			b.Fatalf("officer%d's share: %d %s", i+1, status, body)
		}
	}
	to := common.HexToAddress("0x00000000000000000000000000000000000000ee")
	idem := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	if status, body := benchDo(b, client, "POST", url+"/v1/sign", signBody(unsignedEIP1559(b, 1337, 0, to, big.NewInt(1)), idem)); status != http.StatusOK {
		b.Fatalf("sign after unseal: %d %s", status, body)
	}
	t.serving, t.servingCPU = time.Since(start), processCPU()-startCPU
	return t
}

func (fx *manyKeys) waitUnsealed(b *testing.B, c *http.Client, url string) {
	b.Helper()
	for deadline := time.Now().Add(3 * time.Hour); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var h struct {
			Sealed bool `json:"sealed"`
		}
		if status, body := benchDo(b, c, "GET", url+"/v1/health", nil); status != 0 && json.Unmarshal(body, &h) == nil && !h.Sealed {
			return
		}
	}
	b.Fatal("still sealed after 3 hours")
}

func (fx *manyKeys) client(b *testing.B, name string) *http.Client {
	b.Helper()
	pki := filepath.Join(fx.dir, "pki")
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, name+".crt"), filepath.Join(pki, name+".key"))
	if err != nil {
		b.Fatal(err)
	}
	return &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}}}
}

// benchDo sends one request; status 0 means it could not be sent.
func benchDo(b *testing.B, c *http.Client, method, url string, body any) (int, []byte) {
	b.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			b.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}
