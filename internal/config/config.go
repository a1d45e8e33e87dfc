// Package config loads the appliance's configuration file: YAML, strictly
// parsed (an unknown key is an error, not a silent default), validated as a
// whole before anything starts. Secrets never live in this file: the HSM PIN
// is referenced by path through the PKCS#11 URI's pin-source.
package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/custodysigner/appliance/hsm"
)

// Mode says whether the appliance runs as a production service or a
// developer's instance. Dev mode only changes logging format and loudness.
type Mode string

// Modes.
const (
	ModeProduction Mode = "production"
	ModeDev        Mode = "dev"
)

// Config is the whole configuration file.
type Config struct {
	Mode       Mode        `yaml:"mode"`
	Listen     string      `yaml:"listen"`
	TLS        TLS         `yaml:"tls"`
	HSM        HSM         `yaml:"hsm"`
	Store      Store       `yaml:"store"`
	Log        Log         `yaml:"log"`
	HTTP       HTTP        `yaml:"http"`
	Seal       Seal        `yaml:"seal"`
	Freeze     Freeze      `yaml:"freeze"`
	Screening  Screening   `yaml:"screening"`
	Audit      Audit       `yaml:"audit"`
	Backup     Backup      `yaml:"backup"`
	Retention  Retention   `yaml:"retention"`
	Metrics    Metrics     `yaml:"metrics"`
	Health     Health      `yaml:"health"`
	Principals []Principal `yaml:"principals"`

	// raw is the document as read, for Digest and for backups.
	raw []byte
	// path is the file Load read (empty for Parse), for reloads.
	path string
}

// Path is the file the configuration was loaded from ("" when parsed from
// memory).
func (c *Config) Path() string { return c.path }

// Digest is the SHA-256 of the configuration document as read, in hex: it
// is audited at every start so a changed configuration is visible.
func (c *Config) Digest() string {
	sum := sha256.Sum256(c.raw)
	return hex.EncodeToString(sum[:])
}

// BackupDir is backup.dir, or "backups" beside the database.
func (c *Config) BackupDir() string {
	if c.Backup.Dir != "" {
		return c.Backup.Dir
	}
	return filepath.Join(filepath.Dir(c.Store.Path), "backups")
}

// Raw returns a copy of the configuration document as read.
func (c *Config) Raw() []byte { return bytes.Clone(c.raw) }

// DefaultMetricsListen is where the Prometheus exposition listens unless
// metrics.listen says otherwise.
const DefaultMetricsListen = "127.0.0.1:9464"

// Metrics configures the Prometheus text exposition, served in plain HTTP
// on a listener of its own, apart from the mTLS API. It is meant for the
// host's scraper (or a local agent forwarding it), never for a public
// interface: a TCP address that is not loopback is refused unless
// AllowRemote is set.
type Metrics struct {
	// Listen is host:port, or unix:/path/to/socket, or "" / "off" to
	// disable the listener. Absent: DefaultMetricsListen.
	Listen *string `yaml:"listen"`
	// AllowRemote accepts a TCP address that is not loopback. Off by default.
	AllowRemote bool `yaml:"allow_remote"`
}

// Address returns the listen address ("unix:/path" or host:port), or ""
// when the listener is disabled.
func (m Metrics) Address() string {
	if m.Listen == nil {
		return DefaultMetricsListen
	}
	if a := strings.TrimSpace(*m.Listen); a != "off" {
		return a
	}
	return ""
}

// Health configures the thresholds that turn /v1/health "degraded" and
// raise an alert (logged once per transition, and the metric
// appliance_alert{name}). They never make the appliance "down": only an
// unusable HSM or store does, which is what stops the systemd watchdog.
//
// A threshold left at 0 takes its default; a negative value turns it off.
// Thresholds without a default (min_free_disk_percent, db_size_max_bytes,
// pending_approvals_max) are off at 0.
type Health struct {
	// Window and WindowRequests bound the sign outcomes that latency and
	// the HSM error rate are judged over: the last WindowRequests answers
	// of POST /v1/sign within the last Window. Defaults 5m and 1000.
	Window         Duration `yaml:"window"`
	WindowRequests int      `yaml:"window_requests"`
	// MinSamples is how many outcomes the window must hold before latency
	// and the error rate are judged at all. Default 20.
	MinSamples int `yaml:"min_samples"`
	// SignP99Max: the 99th percentile of the time from a sign request's
	// start to its signed answer. Default 2s.
	SignP99Max Duration `yaml:"sign_p99_max"`
	// HSMErrorRateMax: the fraction of sign requests that needed the HSM
	// and were answered hsm_unavailable. Default 0.05.
	HSMErrorRateMax float64 `yaml:"hsm_error_rate_max"`
	// MinFreeDiskBytes and MinFreeDiskPercent: free space on the
	// database's filesystem. Defaults 512 MiB and off.
	MinFreeDiskBytes   int64   `yaml:"min_free_disk_bytes"`
	MinFreeDiskPercent float64 `yaml:"min_free_disk_percent"`
	// CheckpointAgeMax: how long audit entries may wait for a signed
	// checkpoint while unsealed (sealed, none can be signed). Default 5m.
	CheckpointAgeMax Duration `yaml:"checkpoint_age_max"`
	// DBSizeMaxBytes: the database file plus its WAL. Off by default.
	DBSizeMaxBytes int64 `yaml:"db_size_max_bytes"`
	// PendingApprovalsMax: sign requests waiting for officers. Off by default.
	PendingApprovalsMax int `yaml:"pending_approvals_max"`
}

// Backup configures where POST /v1/backups writes its archives (default:
// a "backups" directory beside the database). Archives are encrypted to the
// quorum's backup key, so the directory may be synced to untrusted storage.
type Backup struct {
	Dir string `yaml:"dir"`
}

// Retention bounds how long finished requests and audit entries stay in
// the database. Both are off (zero: kept forever) unless set; the serving
// appliance applies them hourly, in short batches, each audited.
type Retention struct {
	// Requests: a request that reached a final state (signed, failed,
	// denied, rejected, expired) longer ago than this is deleted, with its
	// approvals and rejections. Its audit entries stay. It is also how long
	// an idempotency key is remembered: after it, the same key is a new
	// request. At least 24h when set.
	Requests Duration `yaml:"requests"`
	// Audit: entries older than this are first written to an archive file
	// in ArchiveDir (up to a signed checkpoint), recorded by an
	// audit_archived entry, then deleted. At least 24h when set.
	Audit Duration `yaml:"audit"`
	// ArchiveDir receives the audit archives; default "audit-archive"
	// beside the database.
	ArchiveDir string `yaml:"archive_dir"`
}

// MinRetention is the shortest retention.requests or retention.audit
// accepted.
const MinRetention = 24 * time.Hour

// AuditArchiveDir is retention.archive_dir, or "audit-archive" beside the
// database.
func (c *Config) AuditArchiveDir() string {
	if c.Retention.ArchiveDir != "" {
		return c.Retention.ArchiveDir
	}
	return filepath.Join(filepath.Dir(c.Store.Path), "audit-archive")
}

// Audit configures the audit chain's checkpoints: the audit key in the HSM
// signs the chain head every CheckpointEvery entries or CheckpointInterval,
// whichever comes first, and at shutdown.
type Audit struct {
	CheckpointEvery    int      `yaml:"checkpoint_every"`    // default 1000
	CheckpointInterval Duration `yaml:"checkpoint_interval"` // default 10s
	// AuthFailuresPerMinute bounds how many authentication and authorisation
	// failures are audited one by one; beyond it they are counted and
	// summarised, so a flood cannot fill the disk. Default 60.
	AuthFailuresPerMinute int `yaml:"auth_failures_per_minute"`
}

// Screening names the known-risk address lists: one address per line, per
// chain. They are reloaded when a file changes and on SIGHUP.
type Screening struct {
	Lists []ListFile `yaml:"lists"`
	// WatchInterval is how often the files are checked for changes.
	WatchInterval Duration `yaml:"watch_interval"`
}

// ListFile is one known-risk list.
type ListFile struct {
	Name  string `yaml:"name"`
	Chain string `yaml:"chain"` // ethereum | bitcoin
	Path  string `yaml:"path"`
}

// Freeze configures the automatic freeze. Zero disables a trigger.
type Freeze struct {
	// AfterRecordFailures freezes after this many consecutive failures to
	// record a request or its outcome. Default 3.
	AfterRecordFailures int `yaml:"after_record_failures"`
	// AfterDenials freezes after this many refusals (403) of one principal
	// within DenialWindow. Default 20 per minute.
	AfterDenials int      `yaml:"after_denials"`
	DenialWindow Duration `yaml:"denial_window"`
}

// Seal configures unsealing, freezing and governance.
type Seal struct {
	// AutoUnseal takes the HSM PIN without a quorum: from
	// $CREDENTIALS_DIRECTORY/<Credential> under systemd, else from hsm.uri's
	// pin-source. Off by default; shown in /v1/status and logged at start.
	AutoUnseal bool   `yaml:"auto_unseal"`
	Credential string `yaml:"credential"`
	// ProgressTTL bounds one unseal attempt: collected shares are dropped after it.
	ProgressTTL Duration `yaml:"progress_ttl"`
	// ProposalTTL is how long a governance proposal can collect approvals.
	ProposalTTL Duration `yaml:"proposal_ttl"`
	// RejectionsToEnd is how many officers' rejections end a signing request
	// waiting for approvals. Default 1.
	RejectionsToEnd int `yaml:"rejections_to_end"`
	// AllowKeyMismatch unseals even when registered keys are missing from
	// the token or differ from their pinned public keys; those keys are
	// refused service. Off by default: a mismatch refuses unsealing with a
	// report, because it means another token, or a tampered registry.
	AllowKeyMismatch bool `yaml:"allow_key_mismatch"`
	// DevUnsealShares (mode dev only): share files submitted at start, so a
	// developer's instance comes up unsealed. Refused in production.
	DevUnsealShares []string `yaml:"dev_unseal_shares"`
}

// TLS names the server certificate and the CA that client certificates must
// chain to. CRL, when set, is a PEM or DER certificate revocation list
// issued by that CA.
type TLS struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client_ca"`
	CRL      string `yaml:"crl"`
}

// HSM configures the PKCS#11 token.
type HSM struct {
	// URI is an RFC 7512 PKCS#11 URI carrying module-path, token and pin-source.
	URI string `yaml:"uri"`
	// SoftHSM2Conf, when set, is exported as SOFTHSM2_CONF before the module
	// loads, so the service needs no environment of its own.
	SoftHSM2Conf   string   `yaml:"softhsm2_conf"`
	PoolSize       int      `yaml:"pool_size"`
	AcquireTimeout Duration `yaml:"acquire_timeout"`
	// UnavailableGrace is how long the HSM may stay unusable (token lost,
	// the module rebuilding) with /v1/health "degraded" before it turns
	// "down" and the systemd watchdog stops being petted, which restarts
	// the service sealed. Default 30s; negative: "down" at once.
	UnavailableGrace Duration `yaml:"unavailable_grace"`
}

// Store configures the SQLite database.
type Store struct {
	Path string `yaml:"path"`
}

// Log configures zap.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json or console; default json in production, console in dev
}

// HTTP bounds every connection and request (see docs/SECURITY.md,
// "Hostile clients").
type HTTP struct {
	// ReadHeaderTimeout bounds reading a request's headers (slow headers:
	// the connection is closed); default 5s, at most ReadTimeout.
	// ReadTimeout bounds reading the whole request, body included (a slow
	// body is answered 408 request_timeout); default 10s.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	ReadTimeout       Duration `yaml:"read_timeout"`
	WriteTimeout      Duration `yaml:"write_timeout"`
	IdleTimeout       Duration `yaml:"idle_timeout"`
	ShutdownTimeout   Duration `yaml:"shutdown_timeout"`
	MaxBodyBytes      int64    `yaml:"max_body_bytes"`
	MaxHeaderBytes    int      `yaml:"max_header_bytes"`
	// MaxInFlight bounds the requests being handled at once, all
	// principals together (1..65536, default 512); beyond it a request is
	// answered 503 overloaded at once, never queued. Officers have a small
	// reserve above it, so a freeze still gets through.
	MaxInFlight int `yaml:"max_in_flight"`
	// MaxInFlightPerPrincipal bounds the requests one principal
	// (certificate, registered or not) has being handled at once, so that a
	// single client, slow or hostile, cannot hold all of MaxInFlight — and
	// with it the HSM sessions and the store's writer — and starve the
	// others; beyond it a request is answered 429 too_many_in_flight at
	// once, never queued. Officers have the same reserve above it as above
	// MaxInFlight. 0 takes the default, half of MaxInFlight (256 of the
	// default 512; at least 1): whatever one principal does, the others
	// keep at least half of the slots, while one upstream service may still
	// run as many requests at once from a single certificate as the
	// appliance's own load tests do (200 in TestFreezeDuringLoad), far
	// beyond the default HSM pool of 4 sessions (requests beyond the pool
	// only wait for a session). With several upstream principals, lower it
	// to protect each from more than one misbehaving client. A negative
	// value turns the bound off; it is at most MaxInFlight.
	MaxInFlightPerPrincipal int `yaml:"max_in_flight_per_principal"`
	// RatePerPrincipal is each principal's sustained request rate per
	// second at the API, before any work (a token bucket of RateBurst
	// requests); beyond it 429 throttled. 0 takes the default (5000/s,
	// burst 10000); a negative rate turns the limit off.
	RatePerPrincipal float64 `yaml:"rate_per_principal"`
	RateBurst        int     `yaml:"rate_burst"`
	// SignBatchMax is how many sign requests one POST /v1/sign/batch may
	// carry (1..1024, default 64); its body may be up to 64 KiB per
	// request, and never less than MaxBodyBytes.
	SignBatchMax int `yaml:"sign_batch_max"`
}

// Principal registers a client identity (a certificate's first URI SAN, else
// its subject CN) with roles and, for clients, the keys it may sign with.
type Principal struct {
	Name  string   `yaml:"name"`
	Roles []string `yaml:"roles"`
	Keys  []string `yaml:"keys"`
}

// Duration is a time.Duration written as "5s", "1m30s".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: duration must be a string like \"5s\": %w", n.Line, err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration back in its string form.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Roles a principal may hold.
var knownRoles = map[string]bool{"client": true, "officer": true, "auditor": true, "operator": true}

// Load reads, strictly parses, defaults and validates the file at path.
// Relative file paths inside it are taken relative to the file's directory.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.resolvePaths(filepath.Dir(path))
	if c.path, err = filepath.Abs(path); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// Parse strictly parses and validates a configuration document.
func Parse(raw []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty configuration")
		}
		return nil, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	c.applyDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	c.raw = bytes.Clone(raw)
	return &c, nil
}

func (c *Config) applyDefaults() {
	if c.Mode == "" {
		c.Mode = ModeProduction
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	if c.HSM.PoolSize == 0 {
		c.HSM.PoolSize = 4
	}
	if c.HSM.AcquireTimeout == 0 {
		c.HSM.AcquireTimeout = Duration(5 * time.Second)
	}
	if c.HSM.UnavailableGrace == 0 {
		c.HSM.UnavailableGrace = Duration(30 * time.Second)
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
		if c.Mode == ModeDev {
			c.Log.Format = "console"
		}
	}
	if c.Freeze.AfterRecordFailures == 0 {
		c.Freeze.AfterRecordFailures = 3
	}
	if c.Freeze.AfterDenials == 0 {
		c.Freeze.AfterDenials = 20
	}
	if c.Freeze.DenialWindow == 0 {
		c.Freeze.DenialWindow = Duration(time.Minute)
	}
	if c.Screening.WatchInterval == 0 {
		c.Screening.WatchInterval = Duration(10 * time.Second)
	}
	if c.Audit.CheckpointEvery == 0 {
		c.Audit.CheckpointEvery = 1000
	}
	if c.Audit.CheckpointInterval == 0 {
		c.Audit.CheckpointInterval = Duration(10 * time.Second)
	}
	if c.Audit.AuthFailuresPerMinute == 0 {
		c.Audit.AuthFailuresPerMinute = 60
	}
	hl := &c.Health
	if hl.Window == 0 {
		hl.Window = Duration(5 * time.Minute)
	}
	if hl.WindowRequests == 0 {
		hl.WindowRequests = 1000
	}
	if hl.MinSamples == 0 {
		hl.MinSamples = 20
	}
	if hl.SignP99Max == 0 {
		hl.SignP99Max = Duration(2 * time.Second)
	}
	if hl.HSMErrorRateMax == 0 {
		hl.HSMErrorRateMax = 0.05
	}
	if hl.MinFreeDiskBytes == 0 {
		hl.MinFreeDiskBytes = 512 << 20
	}
	if hl.CheckpointAgeMax == 0 {
		hl.CheckpointAgeMax = Duration(5 * time.Minute)
	}
	if c.Seal.RejectionsToEnd == 0 {
		c.Seal.RejectionsToEnd = 1
	}
	if c.Seal.Credential == "" {
		c.Seal.Credential = "hsm-pin"
	}
	if c.Seal.ProgressTTL == 0 {
		c.Seal.ProgressTTL = Duration(10 * time.Minute)
	}
	if c.Seal.ProposalTTL == 0 {
		c.Seal.ProposalTTL = Duration(24 * time.Hour)
	}
	h := &c.HTTP
	if h.ReadTimeout == 0 {
		h.ReadTimeout = Duration(10 * time.Second)
	}
	if h.ReadHeaderTimeout == 0 {
		h.ReadHeaderTimeout = min(Duration(5*time.Second), h.ReadTimeout)
	}
	if h.MaxInFlight == 0 {
		h.MaxInFlight = 512
	}
	if h.MaxInFlightPerPrincipal == 0 {
		h.MaxInFlightPerPrincipal = max(1, h.MaxInFlight/2)
	}
	if h.RatePerPrincipal == 0 {
		h.RatePerPrincipal = 5000
	}
	if h.RateBurst == 0 {
		h.RateBurst = max(1, int(min(2*h.RatePerPrincipal, 1e6)))
	}
	if h.WriteTimeout == 0 {
		h.WriteTimeout = Duration(30 * time.Second)
	}
	if h.IdleTimeout == 0 {
		h.IdleTimeout = Duration(120 * time.Second)
	}
	if h.ShutdownTimeout == 0 {
		h.ShutdownTimeout = Duration(15 * time.Second)
	}
	if h.MaxBodyBytes == 0 {
		h.MaxBodyBytes = 1 << 20
	}
	if h.MaxHeaderBytes == 0 {
		h.MaxHeaderBytes = 16 << 10
	}
	if h.SignBatchMax == 0 {
		h.SignBatchMax = 64
	}
}

func (c *Config) validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, name := range controlChars(reflect.ValueOf(c).Elem(), "") {
		bad("%s: has a control character (a newline, tab or similar); no setting takes one", name)
	}
	if c.Mode != ModeProduction && c.Mode != ModeDev {
		bad("mode: %q is neither %q nor %q", c.Mode, ModeProduction, ModeDev)
	}
	if c.TLS.Cert == "" || c.TLS.Key == "" || c.TLS.ClientCA == "" {
		bad("tls: cert, key and client_ca are required")
	}
	if c.HSM.URI == "" {
		bad("hsm.uri is required")
	} else if _, err := hsm.ParseURI(c.HSM.URI); err != nil {
		// Checked here so that `appliance config`, a reload and the .deb's
		// postinst refuse a URI the start would refuse. The error names no
		// attribute value, so a mistyped pin-value stays out of it.
		bad("hsm.uri: %v", err)
	}
	if c.HSM.PoolSize < 1 || c.HSM.PoolSize > 1024 {
		bad("hsm.pool_size: %d is outside 1..1024", c.HSM.PoolSize)
	}
	if c.Store.Path == "" {
		bad("store.path is required")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
	if c.Log.Format != "json" && c.Log.Format != "console" {
		bad("log.format: %q is neither json nor console", c.Log.Format)
	}
	if c.HTTP.MaxBodyBytes < 1024 || c.HTTP.MaxBodyBytes > 64<<20 {
		bad("http.max_body_bytes: %d is outside 1 KiB..64 MiB", c.HTTP.MaxBodyBytes)
	}
	if c.HTTP.SignBatchMax < 1 || c.HTTP.SignBatchMax > 1024 {
		bad("http.sign_batch_max: %d is outside 1..1024", c.HTTP.SignBatchMax)
	}
	if h := c.HTTP; h.ReadTimeout <= 0 || h.ReadHeaderTimeout <= 0 || h.WriteTimeout <= 0 || h.IdleTimeout <= 0 || h.ShutdownTimeout <= 0 {
		bad("http: read_header_timeout, read_timeout, write_timeout, idle_timeout and shutdown_timeout must be positive")
	}
	if c.HTTP.ReadHeaderTimeout > c.HTTP.ReadTimeout {
		bad("http.read_header_timeout (%s) is longer than http.read_timeout (%s)", c.HTTP.ReadHeaderTimeout.D(), c.HTTP.ReadTimeout.D())
	}
	if c.HTTP.MaxHeaderBytes < 1024 || c.HTTP.MaxHeaderBytes > 1<<20 {
		bad("http.max_header_bytes: %d is outside 1 KiB..1 MiB", c.HTTP.MaxHeaderBytes)
	}
	if c.HTTP.MaxInFlight < 1 || c.HTTP.MaxInFlight > 65536 {
		bad("http.max_in_flight: %d is outside 1..65536", c.HTTP.MaxInFlight)
	}
	if p := c.HTTP.MaxInFlightPerPrincipal; p > c.HTTP.MaxInFlight {
		bad("http.max_in_flight_per_principal: %d is more than http.max_in_flight (%d); negative turns it off", p, c.HTTP.MaxInFlight)
	}
	// NaN (r != r) is refused: it compares false with everything and would
	// silently disable the limit. +Inf is over the bound; -Inf is off.
	if r := c.HTTP.RatePerPrincipal; r != r || r > 1e6 || (r > 0 && (c.HTTP.RateBurst < 1 || c.HTTP.RateBurst > 10_000_000)) {
		bad("http: rate_per_principal must be at most 1000000 per second (negative: off) and rate_burst within 1..10000000")
	}
	if c.Freeze.AfterRecordFailures < 0 || c.Freeze.AfterDenials < 0 {
		bad("freeze: thresholds must be positive (use a large number to make a trigger unreachable)")
	}
	if c.Audit.CheckpointEvery < 0 || c.Audit.CheckpointInterval < 0 || c.Audit.AuthFailuresPerMinute < 0 {
		bad("audit: checkpoint_every, checkpoint_interval and auth_failures_per_minute must not be negative")
	}
	if r := c.Retention; r.Requests < 0 || r.Audit < 0 || (r.Requests > 0 && r.Requests.D() < MinRetention) || (r.Audit > 0 && r.Audit.D() < MinRetention) {
		bad("retention: requests and audit are 0 (kept forever) or at least %s", MinRetention)
	}
	if len(c.Seal.DevUnsealShares) > 0 && c.Mode != ModeDev {
		bad("seal.dev_unseal_shares is only allowed in mode dev")
	}
	if err := checkMetricsAddress(c.Metrics.Address(), c.Metrics.AllowRemote); err != nil {
		bad("metrics.listen: %v", err)
	}
	if hl := c.Health; hl.Window <= 0 || hl.WindowRequests < 1 || hl.WindowRequests > 100000 || hl.MinSamples < 1 || hl.MinSamples > hl.WindowRequests {
		bad("health: window must be positive, window_requests within 1..100000 and min_samples within 1..window_requests")
	}
	if hl := c.Health; hl.CheckpointAgeMax > 0 && hl.CheckpointAgeMax < c.Audit.CheckpointInterval {
		bad("health.checkpoint_age_max (%s) is shorter than audit.checkpoint_interval (%s): its alert would be raised between any two checkpoints",
			hl.CheckpointAgeMax.D(), c.Audit.CheckpointInterval.D())
	}
	// Written as "!(0 <= x <= max)" so that NaN, which compares false with
	// everything and would silently disable the alert, is refused too.
	if hl := c.Health; !(hl.HSMErrorRateMax >= 0 && hl.HSMErrorRateMax <= 1) || !(hl.MinFreeDiskPercent >= 0 && hl.MinFreeDiskPercent <= 100) {
		bad("health: hsm_error_rate_max is a fraction (0 to 1) and min_free_disk_percent a percentage (0 to 100)")
	}
	for i, l := range c.Screening.Lists {
		if l.Name == "" || l.Path == "" || (l.Chain != "ethereum" && l.Chain != "bitcoin") {
			bad("screening.lists[%d]: name, path and chain (ethereum or bitcoin) are required", i)
		}
	}
	seen := map[string]bool{}
	for i, p := range c.Principals {
		if p.Name == "" {
			bad("principals[%d]: name is required", i)
		}
		if seen[p.Name] {
			bad("principals[%d]: %q is listed twice", i, p.Name)
		}
		seen[p.Name] = true
		if len(p.Roles) == 0 {
			bad("principals[%d] (%s): at least one role is required", i, p.Name)
		}
		for _, r := range p.Roles {
			if !knownRoles[r] {
				bad("principals[%d] (%s): unknown role %q", i, p.Name, r)
			}
		}
	}
	return errors.Join(errs...)
}

// controlChars names the settings under v whose string value holds a
// control character. None takes one: they are paths, addresses, names and
// URIs, and a stray newline or tab in one is a quoting mistake that would
// otherwise reach a file name or a log line, and that YAML cannot always
// print back (a leading newline does not survive yaml.v3's round trip, so
// the effective configuration would not read back as the one in force).
func controlChars(v reflect.Value, name string) []string {
	switch v.Kind() {
	case reflect.String:
		if strings.ContainsFunc(v.String(), unicode.IsControl) {
			return []string{name}
		}
	case reflect.Pointer:
		if !v.IsNil() {
			return controlChars(v.Elem(), name)
		}
	case reflect.Slice:
		var out []string
		for i := range v.Len() {
			out = append(out, controlChars(v.Index(i), fmt.Sprintf("%s[%d]", name, i))...)
		}
		return out
	case reflect.Struct:
		var out []string
		for i := range v.NumField() {
			f := v.Type().Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || tag == "-" {
				continue
			}
			if tag == "" {
				tag = strings.ToLower(f.Name)
			}
			if name != "" {
				tag = name + "." + tag
			}
			out = append(out, controlChars(v.Field(i), tag)...)
		}
		return out
	}
	return nil
}

func (c *Config) resolvePaths(dir string) {
	if l := c.Metrics.Listen; l != nil && strings.HasPrefix(*l, "unix:") && !filepath.IsAbs(strings.TrimPrefix(*l, "unix:")) {
		abs := "unix:" + filepath.Join(dir, strings.TrimPrefix(*l, "unix:"))
		c.Metrics.Listen = &abs
	}
	for _, p := range []*string{&c.TLS.Cert, &c.TLS.Key, &c.TLS.ClientCA, &c.TLS.CRL, &c.Store.Path, &c.HSM.SoftHSM2Conf, &c.Backup.Dir, &c.Retention.ArchiveDir} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for i := range c.Screening.Lists {
		p := &c.Screening.Lists[i].Path
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	for i := range c.Seal.DevUnsealShares {
		p := &c.Seal.DevUnsealShares[i]
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// checkMetricsAddress accepts "" (disabled), unix:/path, and a host:port
// whose host is a loopback IP or "localhost" (any TCP address when
// allowRemote). An empty host means every interface, so it is remote.
func checkMetricsAddress(addr string, allowRemote bool) error {
	if addr == "" {
		return nil
	}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return errors.New("unix: needs a socket path")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is neither host:port nor unix:/path (or off): %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: bad port", addr)
	}
	if allowRemote || IsLoopbackHost(host) {
		return nil
	}
	return fmt.Errorf("%q is not a loopback address: the metrics listener is plain HTTP, for the host's scraper only; "+
		"bind it to 127.0.0.1 or ::1 or a unix socket, or set metrics.allow_remote: true to expose it anyway", addr)
}

// IsLoopbackHost reports whether host (from host:port) names only the
// loopback interface: "localhost" or a loopback IP literal.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Redacted returns the effective configuration as YAML. The file holds no
// secrets by design (the PIN is referenced by path), so nothing is removed,
// but a pin-value smuggled into the URI is masked.
func (c *Config) Redacted() ([]byte, error) {
	cp := *c
	cp.HSM.URI = redactPinValue(cp.HSM.URI)
	return yaml.Marshal(&cp)
}
