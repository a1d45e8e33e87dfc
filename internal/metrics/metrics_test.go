package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
)

// scrape serves m over a real listener and parses the text exposition.
func scrape(t *testing.T, m *Metrics) (families map[string]*family, raw string) {
	t.Helper()
	ln, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(m.Handler(nil))
	go func() { _ = srv.Serve(ln) }()
	defer srv.Shutdown(context.Background())
	return get(t, &http.Client{Timeout: 10 * time.Second}, "http://"+ln.Addr().String()+"/metrics")
}

// family is a parsed metric family, reduced to what the tests compare.
type family struct {
	help, typ string
	samples   map[string]float64 // canonical label string → value (histograms: _count)
	sums      map[string]float64 // histograms: _sum
}

func get(t *testing.T, c *http.Client, url string) (map[string]*family, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("content type %q is not the text exposition", ct)
	}
	var p expfmt.TextParser
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, body)
	}
	out := map[string]*family{}
	for name, mf := range mfs {
		f := &family{help: mf.GetHelp(), typ: mf.GetType().String(), samples: map[string]float64{}, sums: map[string]float64{}}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			key := strings.Join(ls, ",")
			switch {
			case m.Histogram != nil:
				f.samples[key] = float64(m.GetHistogram().GetSampleCount())
				f.sums[key] = m.GetHistogram().GetSampleSum()
			case m.Counter != nil:
				f.samples[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				f.samples[key] = m.GetGauge().GetValue()
			}
		}
		out[name] = f
	}
	return out, string(body)
}

func value(t *testing.T, fams map[string]*family, name, labels string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no metric family %s", name)
	}
	v, ok := f.samples[labels]
	if !ok {
		t.Fatalf("%s has no series {%s}: %v", name, labels, f.samples)
	}
	return v
}

func TestRequestsAndSignLatency(t *testing.T) {
	m := New("1.2.3", "dev")
	for i := 0; i < 3; i++ {
		m.ObserveRequest(Request{Route: "POST /v1/sign", Code: "ok", Chain: "ethereum", Took: 20 * time.Millisecond, Signed: true})
	}
	m.ObserveRequest(Request{Route: "POST /v1/sign", Code: "ok", Chain: "bitcoin", Took: 3 * time.Second, Signed: true})
	m.ObserveRequest(Request{Route: "POST /v1/sign", Code: "ok", Chain: "ethereum"}) // 202 pending: not a signature
	m.ObserveRequest(Request{Route: "POST /v1/sign", Code: CodeRateLimited})
	m.ObserveRequest(Request{Route: "POST /v1/sign", Code: CodeLimitExceeded})
	m.ObserveRequest(Request{Route: "POST /v1/sign", Code: CodeLimitExceeded})
	m.ObserveRequest(Request{Route: "POST /v1/sign", Code: CodeHSMUnavailable})
	m.ObserveRequest(Request{Route: "GET /v1/health", Code: "ok"})
	m.SetAlert("sign_latency", true)
	m.SetAlert("disk_space", false)

	fams, _ := scrape(t, m)
	if v := value(t, fams, "appliance_sign_duration_seconds", "chain=ethereum"); v != 3 {
		t.Fatalf("ethereum signatures observed %v, want 3", v)
	}
	if v := value(t, fams, "appliance_sign_duration_seconds", "chain=bitcoin"); v != 1 {
		t.Fatalf("bitcoin signatures observed %v, want 1", v)
	}
	if s := fams["appliance_sign_duration_seconds"].sums["chain=bitcoin"]; s != 3 {
		t.Fatalf("bitcoin latency sum %v, want 3 s", s)
	}
	if f := fams["appliance_sign_duration_seconds"]; f.typ != "HISTOGRAM" || f.help == "" {
		t.Fatalf("histogram family: %+v", f)
	}
	for labels, want := range map[string]float64{
		"code=ok,route=POST /v1/sign": 5, "code=rate_limited,route=POST /v1/sign": 1,
		"code=limit_exceeded,route=POST /v1/sign": 2, "code=hsm_unavailable,route=POST /v1/sign": 1,
		"code=ok,route=GET /v1/health": 1,
	} {
		if v := value(t, fams, "appliance_requests_total", labels); v != want {
			t.Errorf("requests_total{%s} = %v, want %v", labels, v, want)
		}
	}
	if v := value(t, fams, "appliance_rate_limit_hits_total", "code=rate_limited"); v != 1 {
		t.Errorf("rate_limited hits %v", v)
	}
	if v := value(t, fams, "appliance_rate_limit_hits_total", "code=limit_exceeded"); v != 2 {
		t.Errorf("limit_exceeded hits %v", v)
	}
	if m.HSMUnavailable() != 1 {
		t.Errorf("hsm_unavailable answers %d", m.HSMUnavailable())
	}
	if value(t, fams, "appliance_alert", "name=sign_latency") != 1 || value(t, fams, "appliance_alert", "name=disk_space") != 0 {
		t.Errorf("alerts: %v", fams["appliance_alert"].samples)
	}
	if value(t, fams, "appliance_build_info", "mode=dev,version=1.2.3") != 1 {
		t.Error("build info")
	}
	for _, name := range []string{"process_resident_memory_bytes", "process_open_fds", "go_goroutines", "go_memstats_heap_alloc_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s: process and Go collectors missing", name)
		}
	}
}

func TestScrapeTimeCollector(t *testing.T) {
	m := New("v", "production")
	calls := 0
	m.Collect(func(ctx context.Context) Snapshot {
		calls++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the source got no deadline")
		}
		return Snapshot{Sealed: false, Frozen: true, HSMHealthy: true, HSMPoolSize: 4, HSMInUse: 1, HSMWaiters: 2,
			HSMTurnWaiters: 6, HSMTurnPrincipals: 2, HSMRebuilds: 3, HSMRebuildFailures: 1,
			PendingApprovals: Some(5), AuditLength: Some(int64(42)), CheckpointSeq: Some(int64(40)),
			DBBytes: Some(int64(1 << 20)), SignP99: Some(0.25),
			Failed: []string{"disk"}} // disk left out; checkpoint age absent
	}, time.Second)
	m.ObserveRequest(Request{Route: "POST /v1/sign", Code: CodeHSMUnavailable})
	fams, raw := scrape(t, m)
	if calls != 1 {
		t.Fatalf("source called %d times for one scrape", calls)
	}
	for name, want := range map[string]float64{
		"appliance_sealed": 0, "appliance_frozen": 1, "appliance_hsm_healthy": 1, "appliance_hsm_pool_size": 4,
		"appliance_hsm_sessions_in_use": 1, "appliance_hsm_session_waiters": 2, "appliance_hsm_rebuilds_total": 3,
		"appliance_hsm_turn_waiters": 6, "appliance_hsm_turn_principals": 2,
		"appliance_hsm_rebuild_failures_total": 1, "appliance_hsm_errors_total": 5, // 1 answer + 3 rebuilds + 1 failure
		"appliance_pending_approvals": 5, "appliance_audit_chain_length": 42, "appliance_audit_checkpoint_seq": 40,
		"appliance_db_size_bytes": 1 << 20, "appliance_sign_latency_p99_seconds": 0.25,
	} {
		if v := value(t, fams, name, ""); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}
	for _, absent := range []string{"appliance_disk_free_bytes", "appliance_audit_checkpoint_age_seconds", "appliance_hsm_error_ratio"} {
		if _, ok := fams[absent]; ok {
			t.Errorf("%s is exposed though missing", absent)
		}
	}
	if value(t, fams, "appliance_scrape_errors_total", "part=disk") != 1 {
		t.Error("the failed reading was not counted")
	}
	if f := fams["appliance_hsm_errors_total"]; f.typ != "COUNTER" {
		t.Errorf("hsm_errors_total is %s", f.typ)
	}
	// Every appliance family says what it is.
	for name, f := range fams {
		if strings.HasPrefix(name, "appliance_") && (f.help == "" || !strings.Contains(raw, "# TYPE "+name+" ")) {
			t.Errorf("%s lacks HELP or TYPE", name)
		}
	}
}

func TestListenRefusesRemote(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:9464", "example.com:9464"} {
		if ln, err := Listen(addr, false); err == nil {
			ln.Close()
			t.Errorf("%s accepted without allow_remote", addr)
		} else if !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%s: error %q does not say why", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0"} {
		ln, err := Listen(addr, false)
		if err != nil {
			t.Fatalf("%s refused: %v", addr, err)
		}
		ln.Close()
	}
	ln, err := Listen("0.0.0.0:0", true)
	if err != nil {
		t.Fatalf("allow_remote: %v", err)
	}
	ln.Close()
}

func TestListenUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.sock")
	// A stale socket left by a crash is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err := Listen("unix:"+path, false)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	// A live one is not stolen.
	if l2, err := Listen("unix:"+path, false); err == nil {
		l2.Close()
		t.Fatal("a socket in use was taken over")
	}
	m := New("v", "dev")
	srv := NewServer(m.Handler(nil))
	go func() { _ = srv.Serve(ln) }()
	defer srv.Shutdown(context.Background())
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}}
	fams, _ := get(t, c, "http://metrics/metrics")
	if value(t, fams, "appliance_build_info", "mode=dev,version=v") != 1 {
		t.Fatal("no build info over the unix socket")
	}
	// A regular file in the way is an error, not deleted.
	file := filepath.Join(t.TempDir(), "not-a-socket")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix:"+file, false); err == nil {
		t.Fatal("a regular file was replaced")
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatal("the regular file is gone")
	}
}

func TestRetentionMetrics(t *testing.T) {
	m := New("1.2.3", "prod")
	fams, _ := scrape(t, m)
	for _, w := range RetentionSteps {
		if v := value(t, fams, "appliance_retention_deleted_total", "what="+w); v != 0 {
			t.Errorf("deleted{%s} = %v before any pass", w, v)
		}
	}
	if _, ok := fams["appliance_retention_last_success_timestamp_seconds"]; ok {
		t.Error("a last-success time before any pass")
	}
	at := time.Unix(1_800_000_000, 500_000_000)
	m.ObserveRetention("requests", 5000, nil, at)
	m.ObserveRetention("requests", 12, nil, at.Add(time.Hour))
	m.ObserveRetention("audit_entries", 300, errors.New("archive dir not writable"), at)
	fams, _ = scrape(t, m)
	if v := value(t, fams, "appliance_retention_deleted_total", "what=requests"); v != 5012 {
		t.Errorf("requests deleted %v, want 5012", v)
	}
	if v := value(t, fams, "appliance_retention_deleted_total", "what=audit_entries"); v != 300 {
		t.Errorf("audit entries deleted %v, want 300 (deleted before the pass failed)", v)
	}
	if v := value(t, fams, "appliance_retention_errors_total", "what=audit_entries"); v != 1 {
		t.Errorf("audit errors %v", v)
	}
	if v := value(t, fams, "appliance_retention_last_success_timestamp_seconds", "what=requests"); v != 1_800_003_600.5 {
		t.Errorf("requests last success %v", v)
	}
	if _, ok := fams["appliance_retention_last_success_timestamp_seconds"].samples["what=audit_entries"]; ok {
		t.Error("a failed pass set the last success time")
	}
}
