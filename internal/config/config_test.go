package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimal = `
tls: {cert: s.crt, key: s.key, client_ca: ca.crt}
hsm: {uri: "pkcs11:token=t?module-path=/m.so&pin-source=file:/p"}
store: {path: a.db}
`

func TestDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeProduction || c.Log.Format != "json" || c.HSM.PoolSize != 4 ||
		c.HTTP.MaxBodyBytes != 1<<20 || c.HTTP.ReadTimeout.D() != 10*time.Second || c.Listen != "127.0.0.1:8443" {
		t.Fatalf("defaults: %+v", c)
	}
	d, err := Parse([]byte(minimal + "mode: dev\n"))
	if err != nil || d.Log.Format != "console" {
		t.Fatalf("dev mode logs to the console: %v %+v", err, d)
	}
}

func TestStrictParsing(t *testing.T) {
	cases := []struct {
		name, doc, wantErr string
	}{
		{"unknown top-level key", minimal + "colour: red\n", "colour"},
		{"misspelt nested key", strings.Replace(minimal, "client_ca", "clientca", 1), "clientca"},
		{"bad duration", minimal + "http: {read_timeout: 10}\n", "duration"},
		{"unknown role", minimal + "principals: [{name: a, roles: [admin]}]\n", "unknown role"},
		{"duplicate principal", minimal + "principals: [{name: a, roles: [client]}, {name: a, roles: [officer]}]\n", "twice"},
		{"principal without role", minimal + "principals: [{name: a}]\n", "role"},
		{"bad mode", minimal + "mode: staging\n", "mode"},
		{"missing tls", "hsm: {uri: x}\nstore: {path: a}\n", "tls"},
		{"missing hsm uri", "tls: {cert: a, key: b, client_ca: c}\nstore: {path: a}\n", "hsm.uri"},
		{"pool too big", minimal + "hsm: {uri: x, pool_size: 5000}\n", ""},
		{"two documents", minimal + "---\nmode: dev\n", "more than one"},
		{"empty", "", "empty"},
		{"duplicate key", minimal + "hsm: {uri: x}\n", "already defined"},
		{"bad log level", minimal + "log: {level: loud}\n", "log.level"},
		{"request retention under a day", minimal + "retention: {requests: 23h}\n", "retention"},
		{"audit retention under a day", minimal + "retention: {audit: 1h}\n", "retention"},
		{"negative retention", minimal + "retention: {requests: -48h}\n", "retention"},
		// A leading newline does not survive yaml.v3's round trip, so the
		// effective configuration would not read back (found by FuzzParse).
		{"newline-only hsm uri", strings.Replace(minimal, `hsm: {uri: "pkcs11:token=t?module-path=/m.so&pin-source=file:/p"}`, `hsm: {uri: "\n"}`, 1), "hsm.uri: has a control character"},
		{"newline in store path", strings.Replace(minimal, "{path: a.db}", `{path: "\na.db"}`, 1), "store.path: has a control character"},
		{"tab in a principal's role", minimal + "principals: [{name: a, roles: [\"client\\t\"]}]\n", "principals[0].roles[0]: has a control character"},
		{"escape in metrics listen", minimal + "metrics: {listen: \"127.0.0.1:9\\e\"}\n", "metrics.listen: has a control character"},
		{"hsm uri without token", strings.Replace(minimal, "token=t?", "", 1), "hsm.uri: hsm: URI has no token attribute"},
		{"hsm uri relative module", strings.Replace(minimal, "/m.so", "m.so", 1), "hsm.uri: hsm: URI module-path must be absolute"},
		{"hsm uri with a malformed pin", strings.Replace(minimal, "pin-source=file:/p", "pin-value:s3cr3t", 1), "without '='"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Fatalf("error %q shows the PIN", err)
			}
		})
	}
}

func TestLoadResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "appliance.yaml")
	if err := os.WriteFile(p, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.Cert != filepath.Join(dir, "s.crt") || c.Store.Path != filepath.Join(dir, "a.db") {
		t.Fatalf("paths not resolved against the file's directory: %+v %+v", c.TLS, c.Store)
	}
}

// The shipped reference configuration must always parse.
func TestShippedExampleParses(t *testing.T) {
	if _, err := Load("../../firmware-config/appliance.yaml"); err != nil {
		t.Fatal(err)
	}
}

func TestRedactedMasksPinValue(t *testing.T) {
	c, err := Parse([]byte(strings.Replace(minimal, "pin-source=file:/p", "pin-value=123456", 1)))
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "123456") || !strings.Contains(string(out), "REDACTED") {
		t.Fatalf("redacted config:\n%s", out)
	}
}

func TestRetentionDefaults(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if c.Retention.Requests != 0 || c.Retention.Audit != 0 {
		t.Fatalf("retention on by default: %+v", c.Retention)
	}
	if want := filepath.Join(filepath.Dir(c.Store.Path), "audit-archive"); c.AuditArchiveDir() != want {
		t.Fatalf("archive dir %q, want %q", c.AuditArchiveDir(), want)
	}
	c, err = Parse([]byte(minimal + "retention: {requests: 24h, audit: 2160h, archive_dir: /srv/archive}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Retention.Requests.D() != 24*time.Hour || c.Retention.Audit.D() != 90*24*time.Hour || c.AuditArchiveDir() != "/srv/archive" {
		t.Fatalf("retention %+v, archive dir %q", c.Retention, c.AuditArchiveDir())
	}
}
