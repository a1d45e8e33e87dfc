package app

import (
	"context"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/metrics"
	"github.com/custodysigner/appliance/internal/store"
)

// startWithMetrics is start with a metrics listener on a loopback port;
// it returns the scrape URL.
func (e *env) startWithMetrics() string {
	e.t.Helper()
	mln, err := metrics.Listen("127.0.0.1:0", false)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, e.cfg, e.log, "test")
	if err != nil {
		cancel()
		mln.Close()
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		mln.Close()
		a.Close()
		e.t.Fatal(err)
	}
	e.app, e.cancel, e.done = a, cancel, make(chan error, 1)
	e.url = "https://" + ln.Addr().String()
	go func() { e.done <- a.ServeListeners(ctx, ln, mln) }()
	e.t.Cleanup(e.stop)
	deadline := time.Now().Add(30 * time.Second)
	for !a.Ready() {
		if time.Now().After(deadline) {
			e.t.Fatal("appliance not ready within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return "http://" + mln.Addr().String() + "/metrics"
}

// promFamily is one parsed metric family: its HELP, TYPE and series
// (histograms by their sample count), keyed by "name=value,…" in label order.
type promFamily struct {
	help, typ string
	series    map[string]float64
}

type exposition map[string]*promFamily

// scrapeMetrics GETs url with c (nil: a plain client) and parses the
// Prometheus text format.
func scrapeMetrics(t *testing.T, c *http.Client, url string) exposition {
	t.Helper()
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v %s", resp.StatusCode, err, body)
	}
	var p expfmt.TextParser
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v", err)
	}
	out := exposition{}
	for name, mf := range mfs {
		f := &promFamily{help: mf.GetHelp(), typ: mf.GetType().String(), series: map[string]float64{}}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			key := strings.Join(ls, ",")
			switch {
			case m.Histogram != nil:
				f.series[key] = float64(m.GetHistogram().GetSampleCount())
			case m.Counter != nil:
				f.series[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				f.series[key] = m.GetGauge().GetValue()
			}
		}
		out[name] = f
	}
	return out
}

func (x exposition) value(t *testing.T, name, labels string) float64 {
	t.Helper()
	f, ok := x[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	v, ok := f.series[labels]
	if !ok {
		t.Fatalf("%s has no series {%s}: %v", name, labels, f.series)
	}
	return v
}

func (x exposition) series(name, labels string) (float64, bool) {
	if f, ok := x[name]; ok {
		v, ok := f.series[labels]
		return v, ok
	}
	return 0, false
}

// TestMetricsEndToEnd: a sealed start, a refusal while sealed, an unseal,
// signatures, a refusal for the wrong network, a forbidden caller, a rate
// limit and a freeze, all seen through a real scrape of the metrics listener.
func TestMetricsEndToEnd(t *testing.T) {
	q := newQuorumEnv(t, "")
	url := q.startWithMetrics()
	c, op := q.client("client"), q.client("operator")
	to := common.HexToAddress("0x00000000000000000000000000000000000000e1")
	sign := func(nonce uint64, chainID int64, who *http.Client) answer {
		return q.must(who, "POST", "/v1/sign", signBody(unsignedEIP1559(t, chainID, nonce, to, big.NewInt(1)), fmt.Sprintf("m-%d-%d", chainID, nonce)))
	}

	m := scrapeMetrics(t, nil, url)
	if m.value(t, "appliance_sealed", "") != 1 || m.value(t, "appliance_frozen", "") != 0 {
		t.Fatalf("sealed start: sealed %v frozen %v", m.value(t, "appliance_sealed", ""), m.value(t, "appliance_frozen", ""))
	}
	if m.value(t, "appliance_hsm_pool_size", "") != 0 || m.value(t, "appliance_hsm_healthy", "") != 0 {
		t.Fatal("HSM pool gauges while sealed must read 0")
	}
	if a := sign(0, 1337, c); a.status != http.StatusServiceUnavailable || a.code(t) != "sealed" {
		t.Fatalf("sign while sealed: %d %s", a.status, a.body)
	}

	q.unseal(1, 2)
	q.setPolicy(`{"rate_per_client":{"per_second":0.001,"burst":3}}`)
	const signatures = 3
	for i := 0; i < signatures; i++ {
		if a := sign(uint64(i), 1337, c); a.status != http.StatusOK || a.json(t)["state"] != "signed" {
			t.Fatalf("sign %d: %d %s", i, a.status, a.body)
		}
	}
	if a := sign(0, 1337, c); a.status != http.StatusOK { // an idempotent replay is answered, not signed again…
		t.Fatalf("replay: %d %s", a.status, a.body)
	}
	if a := sign(100, 1, c); a.status != http.StatusUnprocessableEntity || a.code(t) != "wrong_network" {
		t.Fatalf("wrong network: %d %s", a.status, a.body)
	}
	if a := sign(101, 1337, op); a.status != http.StatusForbidden || a.code(t) != "forbidden" {
		t.Fatalf("operator signing: %d %s", a.status, a.body)
	}
	if a := sign(102, 1337, c); a.status != http.StatusTooManyRequests || a.code(t) != "rate_limited" {
		t.Fatalf("past the burst: %d %s", a.status, a.body)
	}

	m = scrapeMetrics(t, nil, url)
	// …but it is an answer carrying a signature: the histogram counts answers.
	if n := m.value(t, "appliance_sign_duration_seconds", "chain=ethereum"); n != signatures+1 {
		t.Fatalf("sign histogram count %v, want %d signed answers", n, signatures+1)
	}
	if f := m["appliance_sign_duration_seconds"]; f.typ != "HISTOGRAM" || f.help == "" {
		t.Fatalf("sign histogram: %s %q", f.typ, f.help)
	}
	for code, want := range map[string]float64{"ok": signatures + 1, "sealed": 1, "wrong_network": 1, "forbidden": 1, "rate_limited": 1} {
		if v := m.value(t, "appliance_requests_total", "code="+code+",route=POST /v1/sign"); v != want {
			t.Errorf("requests_total{POST /v1/sign, %s} = %v, want %v", code, v, want)
		}
	}
	if v := m.value(t, "appliance_requests_total", "code=ok,route=POST /v1/unseal"); v != 2 {
		t.Errorf("unseal answers %v, want 2", v)
	}
	if v := m.value(t, "appliance_rate_limit_hits_total", "code=rate_limited"); v != 1 {
		t.Errorf("rate-limit hits %v, want 1", v)
	}
	if m.value(t, "appliance_sealed", "") != 0 || m.value(t, "appliance_frozen", "") != 0 {
		t.Error("seal gauges after unseal")
	}
	if m.value(t, "appliance_hsm_pool_size", "") != 4 || m.value(t, "appliance_hsm_healthy", "") != 1 {
		t.Errorf("HSM pool: size %v healthy %v", m.value(t, "appliance_hsm_pool_size", ""), m.value(t, "appliance_hsm_healthy", ""))
	}
	for _, name := range []string{"appliance_hsm_sessions_in_use", "appliance_hsm_session_waiters", "appliance_hsm_rebuilds_total",
		"appliance_hsm_turn_waiters", "appliance_hsm_turn_principals",
		"appliance_hsm_errors_total", "appliance_db_size_bytes", "appliance_disk_free_bytes", "appliance_audit_uncheckpointed_age_seconds",
		"appliance_build_info", "process_resident_memory_bytes", "go_goroutines"} {
		if _, ok := m[name]; !ok {
			t.Errorf("no %s", name)
		}
	}
	if v := m.value(t, "appliance_hsm_errors_total", ""); v != 0 {
		t.Errorf("hsm errors %v on a healthy token", v)
	}
	if m.value(t, "appliance_db_size_bytes", "") <= 0 {
		t.Error("database size")
	}
	pending, err := q.app.store.CountRequests(context.Background(), store.StatePendingApproval)
	if err != nil {
		t.Fatal(err)
	}
	if v := m.value(t, "appliance_pending_approvals", ""); v != float64(pending) {
		t.Errorf("pending approvals %v, store says %d", v, pending)
	}
	// The audit chain length is the store's head; auth-failure auditing may
	// still be appending, so compare on a scrape between two equal heads.
	for try := 0; ; try++ {
		before, _, err := q.app.store.AuditHead(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		v := scrapeMetrics(t, nil, url).value(t, "appliance_audit_chain_length", "")
		after, _, _ := q.app.store.AuditHead(context.Background())
		if before == after {
			if v != float64(before) {
				t.Fatalf("audit chain length %v, store head %d", v, before)
			}
			break
		}
		if try == 20 {
			t.Fatal("the audit head never settled")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for name, f := range m {
		if strings.HasPrefix(name, "appliance_") && (f.help == "" || f.typ == "") {
			t.Errorf("%s lacks HELP or TYPE", name)
		}
	}

	if a := q.must(q.client("officer3"), "POST", "/v1/freeze", map[string]string{"reason": "metrics drill"}); a.status != http.StatusOK {
		t.Fatalf("freeze: %d %s", a.status, a.body)
	}
	if a := sign(103, 1337, c); a.status != http.StatusServiceUnavailable || a.code(t) != "frozen" {
		t.Fatalf("sign while frozen: %d %s", a.status, a.body)
	}
	m = scrapeMetrics(t, nil, url)
	if m.value(t, "appliance_frozen", "") != 1 {
		t.Error("frozen gauge")
	}
	if v := m.value(t, "appliance_requests_total", "code=frozen,route=POST /v1/sign"); v != 1 {
		t.Errorf("frozen answers %v", v)
	}
	if n := m.value(t, "appliance_sign_duration_seconds", "chain=ethereum"); n != signatures+1 {
		t.Errorf("refusals reached the sign histogram: %v", n)
	}
}

// TestHealthThresholdRaisesAlert: a p99 threshold of 1ns is exceeded by the
// first signature: /v1/health turns degraded (not down) with the reason,
// appliance_alert{name="sign_latency"} reads 1, the alert is logged once
// however often health is probed, and it clears once the window empties.
func TestHealthThresholdRaisesAlert(t *testing.T) {
	e := newEnvWith(t, "health: {sign_p99_max: 1ns, min_samples: 1, window: 2s}\n")
	url := e.startWithMetrics()
	c, op := e.client("client"), e.client("operator")
	to := common.HexToAddress("0x00000000000000000000000000000000000000e2")

	if h := e.must(op, "GET", "/v1/health", nil).json(t); h["status"] != "ok" {
		t.Fatalf("health before any signature: %v", h)
	}
	if v := scrapeMetrics(t, nil, url).value(t, "appliance_alert", "name=sign_latency"); v != 0 {
		t.Fatalf("alert before any signature: %v", v)
	}
	if a := e.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "t-0")); a.status != http.StatusOK {
		t.Fatalf("sign: %d %s", a.status, a.body)
	}
	r := e.app.checker.Fresh(context.Background())
	if r.Status != health.StatusDegraded || !r.Healthy() {
		t.Fatalf("report %+v: want degraded, which still pets the watchdog", r)
	}
	a := e.must(op, "GET", "/v1/health", nil)
	h := a.json(t)
	checks, _ := h["checks"].(map[string]any)
	lat, _ := checks["sign_latency"].(map[string]any)
	if a.status != http.StatusOK || h["status"] != "degraded" || lat["ok"] != false ||
		!strings.Contains(fmt.Sprint(lat["detail"]), "p99 sign latency") || !strings.Contains(fmt.Sprint(lat["detail"]), "exceeds 1ns") {
		t.Fatalf("/v1/health: %d %s", a.status, a.body)
	}
	for name, want := range map[string]float64{"sign_latency": 1, "hsm_error_rate": 0, "disk_space": 0, "audit_checkpoint": 0} {
		if v := scrapeMetrics(t, nil, url).value(t, "appliance_alert", "name="+name); v != want {
			t.Errorf("appliance_alert{%s} = %v, want %v", name, v, want)
		}
	}
	for i := 0; i < 3; i++ {
		e.app.checker.Fresh(context.Background())
	}
	e.must(op, "GET", "/v1/health", nil)
	raised := e.logs.FilterMessage("alert raised").FilterField(zap.String("alert", "sign_latency"))
	if raised.Len() != 1 {
		t.Fatalf("%d 'alert raised' lines for sign_latency, want exactly 1", raised.Len())
	}
	if reason := fmt.Sprint(raised.All()[0].ContextMap()["reason"]); !strings.Contains(reason, "p99 sign latency") {
		t.Fatalf("logged reason %q", reason)
	}

	// The 2 s window empties: the alert clears, once.
	waitFor(t, 10*time.Second, "health ok again", func() bool {
		return e.must(op, "GET", "/v1/health", nil).json(t)["status"] == "ok"
	})
	if n := e.logs.FilterMessage("alert cleared").FilterField(zap.String("alert", "sign_latency")).Len(); n != 1 {
		t.Fatalf("%d 'alert cleared' lines, want 1", n)
	}
	if v := scrapeMetrics(t, nil, url).value(t, "appliance_alert", "name=sign_latency"); v != 0 {
		t.Fatalf("alert after clearing: %v", v)
	}
}

// TestMetricsListenAddresses: a non-loopback TCP address is refused unless
// metrics.allow_remote, by the configuration and again when binding; a
// unix socket serves the exposition through Serve itself.
func TestMetricsListenAddresses(t *testing.T) {
	base := `
tls: {cert: s.crt, key: s.key, client_ca: ca.crt}
hsm: {uri: "pkcs11:token=t?module-path=/m.so&pin-source=file:/p"}
store: {path: a.db}
`
	for _, addr := range []string{"0.0.0.0:9464", ":9464", "10.1.2.3:9464", "[::]:9464", "metrics.example:9464"} {
		_, err := config.Parse([]byte(base + fmt.Sprintf("metrics: {listen: %q}\n", addr)))
		if err == nil || !strings.Contains(err.Error(), "allow_remote") {
			t.Errorf("metrics.listen %s: %v, want a refusal naming allow_remote", addr, err)
		}
		if _, err := config.Parse([]byte(base + fmt.Sprintf("metrics: {listen: %q, allow_remote: true}\n", addr))); err != nil {
			t.Errorf("metrics.listen %s with allow_remote: %v", addr, err)
		}
	}
	for addr, want := range map[string]string{"127.0.0.1:9464": "127.0.0.1:9464", "[::1]:9464": "[::1]:9464", "localhost:1": "localhost:1",
		"unix:/run/appliance/metrics.sock": "unix:/run/appliance/metrics.sock", "off": "", "": ""} {
		cfg, err := config.Parse([]byte(base + fmt.Sprintf("metrics: {listen: %q}\n", addr)))
		if err != nil {
			t.Errorf("metrics.listen %q: %v", addr, err)
			continue
		}
		if got := cfg.Metrics.Address(); got != want {
			t.Errorf("metrics.listen %q: address %q, want %q", addr, got, want)
		}
	}
	if cfg, err := config.Parse([]byte(base)); err != nil || cfg.Metrics.Address() != config.DefaultMetricsListen {
		t.Fatalf("default metrics address: %v", err)
	}

	for doc, want := range map[string]string{
		"health: {checkpoint_age_max: 5s}\n": "checkpoint_interval", // below the 10 s default interval
		"health: {hsm_error_rate_max: 2}\n":  "fraction",
		"health: {min_samples: 2000}\n":      "min_samples",
	} {
		if _, err := config.Parse([]byte(base + doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error naming %s", doc, err, want)
		}
	}

	// Binding checks again (a configuration built in code skips Parse).
	e := newEnv(t)
	remote := "0.0.0.0:0"
	e.cfg.Metrics.Listen = &remote
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := New(ctx, e.cfg, e.log, "test")
	if err != nil {
		t.Fatal(err)
	}
	err = a.Serve(ctx)
	a.Close()
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("Serve with a public metrics address: %v", err)
	}

	// A unix socket, through Serve: the production path.
	sock := filepath.Join(e.dir, "metrics.sock")
	unix := "unix:" + sock
	e.cfg.Metrics.Listen = &unix
	if a, err = New(ctx, e.cfg, e.log, "test"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	for deadline := time.Now().Add(30 * time.Second); !a.Ready(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not ready")
		}
	}
	uc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	m := scrapeMetrics(t, uc, "http://appliance/metrics")
	if m.value(t, "appliance_sealed", "") != 0 || m.value(t, "appliance_hsm_pool_size", "") != 4 {
		t.Fatal("auto-unsealed appliance over the unix socket")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	a.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("the socket outlived the appliance: %v", err)
	}
}
