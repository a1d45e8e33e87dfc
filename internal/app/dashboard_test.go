package app

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/ethereum"
)

// A list name with markup: names, principals and intents are shown to
// people, so the page must escape them.
const evilListName = `ofac-eth<script>alert(1)</script>`

// TestDashboard: the read-only dashboard, seen by headless Chromium through
// real mutual TLS with the operator's certificate from an NSS database, shows
// the seal state, the key's EIP-55 address, a pending approval's decoded
// intent, the recent requests and denials, the list versions, the PKCS#11
// library and token and the audit head; clients get 403; nothing secret or
// actionable is on the page.
func TestDashboard(t *testing.T) {
	began := time.Now()
	br := newBrowser(t) // fails, not skips, without chromium
	dir := knownRiskDir(t)
	q := newQuorumEnv(t, fmt.Sprintf("screening:\n  lists:\n    - {name: %q, chain: ethereum, path: %s}\n    - {name: ofac-xbt, chain: bitcoin, path: %s}\n",
		evilListName, filepath.Join(dir, "sanctioned_addresses_ETH.txt"), filepath.Join(dir, "sanctioned_addresses_XBT.txt")))
	q.start()
	op := q.client("operator")

	// Sealed: the state and progress, and no HSM information.
	page := q.dashboardPage(op)
	for _, want := range []string{"<strong>SEALED</strong>", "unseal progress 0 of 2 shares", `id="hsm-library">sealed:`, "unchecked"} {
		if !strings.Contains(page, want) {
			t.Fatalf("sealed dashboard lacks %q:\n%s", want, page)
		}
	}
	q.unseal(1)
	if page := q.dashboardPage(op); !strings.Contains(page, "unseal progress 1 of 2 shares") {
		t.Fatalf("progress not shown:\n%s", page)
	}
	q.unseal(2)
	q.setPolicy(`{"approval_above":{"ETH":"10000000000000000000"},"approvals":2}`)

	// One signed, one pending with one approval of two, one denied.
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000d1")
	idem := func(s string) string { return "dash-idem-" + s + "-" + rand.Text()[:10] }
	idems := []string{idem("small"), idem("big"), idem("listed")}
	payloads := []string{unsignedEIP1559(t, 1337, 0, to, eth(5)), unsignedEIP1559(t, 1337, 1, to, eth(20)),
		unsignedEIP1559(t, 1337, 2, common.HexToAddress(listedETH), eth(1))}
	if a := q.must(c, "POST", "/v1/sign", signBody(payloads[0], idems[0])); a.status != 200 {
		t.Fatalf("5 ETH: %d %s", a.status, a.body)
	}
	pending := q.must(c, "POST", "/v1/sign", signBody(payloads[1], idems[1]))
	if pending.status != http.StatusAccepted {
		t.Fatalf("20 ETH: %d %s", pending.status, pending.body)
	}
	pendingID, digest := pending.json(t)["request_id"].(string), pending.json(t)["digest"].(string)
	if a := q.approveRequest(1, pendingID, q.approval[0], digest); a.status != 200 {
		t.Fatalf("approval: %d %s", a.status, a.body)
	}
	if a := q.must(c, "POST", "/v1/sign", signBody(payloads[2], idems[2])); a.status != http.StatusForbidden || a.code(t) != "address_denied" {
		t.Fatalf("listed: %d %s", a.status, a.body)
	}
	keyAns := q.must(q.client("officer3"), "GET", "/v1/keys/eth-dev", nil)
	address, _ := keyAns.json(t)["address"].(string)
	if !strings.HasPrefix(address, "0x") || address == strings.ToLower(address) {
		t.Fatalf("eth-dev address %q is not EIP-55", address)
	}

	// Roles: a client is refused (JSON 403, audited); officers and
	// auditors may read; the page takes no POST.
	if a := q.must(c, "GET", "/dashboard", nil); a.status != http.StatusForbidden || a.code(t) != "forbidden" {
		t.Fatalf("client on the dashboard: %d %s", a.status, a.body)
	}
	for _, who := range []string{"officer2", "auditor"} {
		if a := q.must(q.client(who), "GET", "/dashboard", nil); a.status != 200 {
			t.Fatalf("%s on the dashboard: %d", who, a.status)
		}
	}
	if a := q.must(op, "POST", "/dashboard", nil); a.status != http.StatusMethodNotAllowed {
		t.Fatalf("POST /dashboard: %d", a.status)
	}

	// Headers: a strict CSP whose only allowance is the inline stylesheet's
	// hash, no framing, no caching.
	a := q.must(op, "GET", "/dashboard", nil)
	h := a.header
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("Content-Type %q", ct)
	}
	if h.Get("X-Frame-Options") != "DENY" || h.Get("Cache-Control") != "no-store" || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("headers: %v", h)
	}
	style := regexp.MustCompile(`(?s)<style>(.*?)</style>`).FindStringSubmatch(string(a.body))
	if style == nil {
		t.Fatal("no inline stylesheet")
	}
	sum := sha256.Sum256([]byte(style[1]))
	wantCSP := "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	if got := h.Get("Content-Security-Policy"); got != wantCSP {
		t.Fatalf("CSP %q, want %q", got, wantCSP)
	}
	body := strings.ToLower(string(a.body))
	for _, banned := range []string{"<script", "<form", "<button", "<input", "<iframe", "<a ", "javascript:", "method=\"post\""} {
		if strings.Contains(body, banned) {
			t.Fatalf("the page contains %q", banned)
		}
	}

	// What Chromium shows, through its own TLS stack and the NSS database.
	uri, err := hsm.ParseURI(q.cfg.HSM.URI)
	if err != nil {
		t.Fatal(err)
	}
	url := q.url + "/dashboard"
	br.trustAndPresent(q.env, "operator", url, "client", "officer1")
	dom := br.dumpDOM(url)
	wants := []string{
		"<strong>UNSEALED</strong>",
		`id="viewer">` + testPrincipalPrefix + "operator<",
		address,                             // the key's EIP-55 address
		pendingID,                           // the pending request
		"1 of 2 approvals",                  // approvals so far / required
		"<dd>" + to.Hex() + "</dd>",         // decoded: to
		"20 ETH (20000000000000000000 wei)", // decoded: value
		"<dd>ETH</dd>",                      // decoded: asset
		"at most 0.00021 ETH (gas 21000 × max fee 10 gwei, priority 1 gwei)", // decoded: fee
		"address_denied", "denied", "signed", testPrincipalPrefix + "client", // recent requests and denials
		"ofac-eth&lt;script&gt;alert(1)&lt;/script&gt;", "ofac-xbt", // lists, escaped
		"SoftHSM", `<code>` + uri.Token, // PKCS#11 library and token label
		`id="schema">`, "Last checkpoint",
	}
	for _, v := range q.app.screener.Versions() {
		wants = append(wants, v.SHA256[:16])
	}
	for _, want := range wants {
		if !strings.Contains(dom, want) {
			t.Errorf("Chromium's DOM lacks %q", want)
		}
	}
	if strings.Contains(dom, "<script>alert(1)") {
		t.Error("a list name was rendered as markup")
	}
	// Nothing secret: shares, PINs, idempotency keys, payloads.
	secrets := append([]string{string(q.soPIN), "aps1-"}, idems...)
	secrets = append(secrets, q.shares...)
	for _, p := range payloads {
		secrets = append(secrets, strings.TrimPrefix(p, "0x"))
	}
	for _, k := range q.approval {
		secrets = append(secrets, hex.EncodeToString(k.Seed()), base64.StdEncoding.EncodeToString(k.Seed()))
	}
	for _, page := range []string{dom, string(a.body)} {
		for _, s := range secrets {
			if strings.Contains(page, s) {
				t.Errorf("the dashboard shows a secret (%.12s…)", s)
			}
		}
	}
	if t.Failed() {
		t.Fatalf("Chromium's DOM:\n%s", dom)
	}

	shot := br.screenshot(url, moduleRoot(t, "var", "test-artifacts", "dashboard.png"))
	if err := os.WriteFile(moduleRoot(t, "var", "test-artifacts", "dashboard.html"), []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("DASHBOARD_SCREENSHOT_TO_DOCS") != "" {
		docs := moduleRoot(t, "docs", "dashboard.png")
		copyFile(t, shot, docs)
		if err := os.Chmod(docs, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Frozen: the state, the reason (escaped) and who; the HSM is closed.
	if a := q.must(q.client("officer3"), "POST", "/v1/freeze", map[string]string{"reason": "drill <b>now</b>"}); a.status != 200 {
		t.Fatalf("freeze: %d %s", a.status, a.body)
	}
	frozen := q.dashboardPage(op)
	for _, want := range []string{"<strong>FROZEN</strong>", `id="freeze-reason">drill &lt;b&gt;now&lt;/b&gt;<`,
		"<code>" + testPrincipalPrefix + "officer3</code>", `id="hsm-library">frozen (sealed)`} {
		if !strings.Contains(frozen, want) {
			t.Fatalf("frozen dashboard lacks %q:\n%s", want, frozen)
		}
	}
	t.Logf("dashboard test took %s; screenshot %s", time.Since(began).Round(time.Millisecond), shot)
}

// dashboardPage fetches the dashboard with the Go client.
func (e *env) dashboardPage(c *http.Client) string {
	e.t.Helper()
	a := e.must(c, "GET", "/dashboard", nil)
	if a.status != 200 {
		e.t.Fatalf("GET /dashboard: %d %s", a.status, a.body)
	}
	return string(a.body)
}

// browser is headless Chromium with a private HOME: its NSS database
// ($HOME/.pki/nssdb) holds the dev CA, trusted for servers, and one
// client certificate with its key; a managed policy selects that
// certificate for the appliance's origin without a prompt.
type browser struct {
	t                                     *testing.T
	chromium, certutil, pk12util, openssl string
	home, profile, nssdb                  string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	b := &browser{t: t}
	for _, tool := range []struct {
		dst       *string
		name, pkg string
	}{{&b.chromium, "chromium", "chromium"}, {&b.certutil, "certutil", "libnss3-tools"}, {&b.pk12util, "pk12util", "libnss3-tools"}, {&b.openssl, "openssl", "openssl"}} {
		p, err := exec.LookPath(tool.name)
		if err != nil {
			t.Fatalf("%s is not installed (Debian package %s): run `make deps`, which installs chromium and libnss3-tools for the dashboard test", tool.name, tool.pkg)
		}
		*tool.dst = p
	}
	b.home = t.TempDir()
	b.profile = filepath.Join(b.home, "profile")
	b.nssdb = filepath.Join(b.home, ".pki", "nssdb")
	if err := os.MkdirAll(b.nssdb, 0o700); err != nil {
		t.Fatal(err)
	}
	b.run(b.certutil, "-N", "-d", "sql:"+b.nssdb, "--empty-password")
	return b
}

func (b *browser) run(name string, args ...string) []byte {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "HOME="+b.home)
	// Chromium forks helpers (zygote, renderers, crash handler): on a timeout
	// the whole process group goes, not only the launcher.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		b.t.Fatalf("%s did not finish within 20s (Chromium waiting at a certificate prompt? the AutoSelectCertificateForUrls policy was not applied): %v\n%s",
			filepath.Base(name), err, quiet(stderr.String()))
	}
	if err != nil {
		b.t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, quiet(stderr.String()))
	}
	return out
}

// quiet drops Chromium's noise about the missing D-Bus and its launcher's.
func quiet(stderr string) string {
	var keep []string
	for _, l := range strings.Split(stderr, "\n") {
		if !strings.Contains(l, "dbus") && !strings.Contains(l, "unexpected operator") && strings.TrimSpace(l) != "" {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// trustAndPresent trusts e's dev CA for servers, imports principal's
// certificate and key and those of the decoys (PKCS#12 bundles made by
// openssl), and installs an AutoSelectCertificateForUrls policy for url's
// origin that picks principal's certificate by subject; removed at cleanup.
// With the decoys present, only the policy makes Chromium present the right
// certificate without a prompt.
func (b *browser) trustAndPresent(e *env, principal, url string, decoys ...string) {
	b.t.Helper()
	pki := filepath.Join(e.dir, "pki")
	b.run(b.certutil, "-A", "-d", "sql:"+b.nssdb, "-n", "appliance dev CA", "-t", "C,,", "-i", filepath.Join(pki, "ca.crt"))
	for _, name := range append(decoys, principal) {
		p12, pass := filepath.Join(b.home, name+".p12"), rand.Text()
		b.run(b.openssl, "pkcs12", "-export", "-in", filepath.Join(pki, name+".crt"), "-inkey", filepath.Join(pki, name+".key"),
			"-name", name, "-out", p12, "-passout", "pass:"+pass)
		b.run(b.pk12util, "-i", p12, "-d", "sql:"+b.nssdb, "-W", pass)
		if err := os.Remove(p12); err != nil {
			b.t.Fatal(err)
		}
	}
	rule, err := json.Marshal(map[string]any{"pattern": strings.TrimSuffix(url, "/dashboard"),
		"filter": map[string]any{"ISSUER": map[string]string{"CN": "Appliance Development CA"}, "SUBJECT": map[string]string{"CN": principal}}})
	if err != nil {
		b.t.Fatal(err)
	}
	policy, err := json.Marshal(map[string]any{"AutoSelectCertificateForUrls": []string{string(rule)}})
	if err != nil {
		b.t.Fatal(err)
	}
	const dir = "/etc/chromium/policies/managed"
	// Directories this test creates are removed with the policy (when empty).
	for _, d := range []string{"/etc/chromium/policies", dir} {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			b.t.Cleanup(func() { _ = os.Remove(d) })
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatalf("the dashboard test installs a Chromium managed policy in %s and must run as root (as CI does): %v", dir, err)
	}
	file := filepath.Join(dir, fmt.Sprintf("appliance-dashboard-test-%d-%s.json", os.Getpid(), strings.ToLower(rand.Text()[:8])))
	if err := os.WriteFile(file, policy, 0o644); err != nil {
		b.t.Fatalf("the dashboard test installs a Chromium managed policy in %s and must run as root (as CI does): %v", dir, err)
	}
	b.t.Cleanup(func() { _ = os.Remove(file) })
}

func (b *browser) args(extra ...string) []string {
	return append([]string{"--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
		"--disable-extensions", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--user-data-dir=" + b.profile}, extra...)
}

// dumpDOM loads url and returns the serialised DOM after load.
func (b *browser) dumpDOM(url string) string {
	b.t.Helper()
	return string(b.run(b.chromium, b.args("--dump-dom", url)...))
}

// screenshot saves a 1280×1600 PNG of url at path (atomically: other test
// runs may write the same artifact).
func (b *browser) screenshot(url, path string) string {
	b.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+strings.ToLower(rand.Text()[:10])+".png")
	defer os.Remove(tmp)
	b.run(b.chromium, b.args("--screenshot="+tmp, "--window-size=1280,1600", url)...)
	f, err := os.Open(tmp)
	if err != nil {
		b.t.Fatalf("no screenshot: %v", err)
	}
	cfg, err := png.DecodeConfig(f)
	f.Close()
	if err != nil || cfg.Width != 1280 || cfg.Height != 1600 {
		b.t.Fatalf("screenshot: %v %dx%d", err, cfg.Width, cfg.Height)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		b.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		b.t.Fatal(err)
	}
	return path
}

// moduleRoot joins parts onto the module's root directory.
func moduleRoot(t *testing.T, parts ...string) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root %s: %v", root, err)
	}
	return filepath.Join(append([]string{root}, parts...)...)
}

// TestDashboardIntentFields: intents are rendered in words and exact units.
func TestDashboardIntentFields(t *testing.T) {
	for _, c := range []struct {
		dec  string
		n    int
		want string
	}{{"0", 18, "0"}, {"10000000000000000", 18, "0.01"}, {"20000000000000000000", 18, "20"}, {"1", 18, "0.000000000000000001"},
		{"1500000000", 9, "1.5"}, {"x", 9, "x"}} {
		if got := units(c.dec, c.n); got != c.want {
			t.Errorf("units(%s, %d) = %s, want %s", c.dec, c.n, got, c.want)
		}
	}
	if got := sats(123456789); got != "1.23456789" {
		t.Errorf("sats: %s", got)
	}
	fields := func(chain string, v any) map[string]string {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, f := range intentFields(chain, raw) {
			m[f.Name] = f.Value
		}
		return m
	}
	erc20 := fields("ethereum", ethereum.Intent{Kind: "erc20_transfer", ChainID: "1", To: "0x00000000000000000000000000000000000000Aa",
		Value: "0", Gas: 60000, GasPrice: "2000000000", Type: 0,
		Token: &ethereum.TokenIntent{Method: "transfer", Contract: "0x00000000000000000000000000000000000000Aa", To: "0x00000000000000000000000000000000000000Bb", Amount: "5000000"}})
	if erc20["asset"] != "ERC-20 token 0x00000000000000000000000000000000000000Aa" || erc20["token recipient"] != "0x00000000000000000000000000000000000000Bb" ||
		erc20["token amount"] != "5000000 base units (transfer)" || erc20["fee"] != "at most 0.00012 ETH (gas 60000 × gas price 2 gwei)" {
		t.Errorf("ERC-20 intent: %v", erc20)
	}
	btc := fields("bitcoin", bitcoin.Intent{Kind: "transfer", Network: "regtest", TotalIn: 100000, Fee: 1000, FeeRateSatVB: 7.1,
		Inputs:  []bitcoin.Input{{Index: 0, Amount: 100000}},
		Outputs: []bitcoin.Output{{Index: 0, Address: "bcrt1qdest", Amount: 60000}, {Index: 1, Address: "bcrt1qchange", Amount: 39000, Change: true}}})
	if btc["output 0"] != "0.0006 BTC to bcrt1qdest" || btc["output 1"] != "0.00039 BTC to bcrt1qchange — change, back to the appliance" ||
		btc["fee"] != "0.00001 BTC (1000 sat, about 7.1 sat/vB)" || btc["inputs"] != "1, 0.001 BTC in total" {
		t.Errorf("Bitcoin intent: %v", btc)
	}
	if got := intentFields("ethereum", []byte("not json")); len(got) != 1 || !strings.Contains(got[0].Value, "could not be decoded") {
		t.Errorf("bad intent: %v", got)
	}
}
