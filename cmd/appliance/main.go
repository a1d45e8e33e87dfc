// Command appliance is the HSM-backed signing appliance. It stays thin:
// parse arguments, call into internal/app, map errors to exit codes.
package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/app"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/devpki"
	"github.com/custodysigner/appliance/internal/secret"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	// exitConfig: a configuration error, or no database where the
	// installation's must be (a wrong store.path, or a lost database):
	// restarting cannot help, so systemd does not.
	exitConfig = 3
	// exitTampered: audit verification found the chain tampered with.
	exitTampered = 4
)

const usage = `appliance — HSM-backed signing appliance

Usage:
  appliance serve        --config FILE
  appliance init         --config FILE --so-pin-file FILE --threshold K --officers P1,P2,P3
                         --out DIR [--generate-approval-keys]     key ceremony (K-of-N unseal shares)
  appliance init         --config FILE [--so-pin-file FILE]        auto-unseal deployments (PIN from pin-source)
  appliance keys create  --config FILE --id ID [--label L] [--algorithm secp256k1|p256|ed25519]
                         [--chain ethereum --network CHAIN_ID] [--if-missing] [--share-file F ...]
  appliance policy set   --config FILE --key ID --rules JSON --share-file F [--share-file F ...]
                         local path for init and dev; a running appliance takes set_policy proposals
  appliance requests     list [--state S] | show --request ID  [connection flags]
  appliance unseal       --share-file F   [--url U --tls-cert C --tls-key K --ca CA]
  appliance freeze       --reason TEXT    [--url U --tls-cert C --tls-key K --ca CA]
  appliance propose      --kind KIND --params JSON  [connection flags]
  appliance approve      --request ID --key APPROVAL_KEY [--yes]  [connection flags]
  appliance keys list    --config FILE
  appliance audit verify (--db FILE | --export FILE | --config FILE) --pubkey PEM [--anchor SEQ:HASH]
  appliance audit export (--db FILE | --config FILE) [--out FILE] [--after N]
  appliance audit pubkey (--db FILE | --config FILE)
  appliance audit archives (--config FILE | --db FILE --dir DIR) [--pubkey PEM ...]
  appliance backup       [connection flags]                 encrypted backup by the running appliance
  appliance backup inspect FILE
  appliance restore      --config FILE --archive FILE [--mode host|database|token] [--so-pin-file FILE]
                         --share-file F [...]      with the quorum; see docs/RECOVERY.md
  appliance reshare      --config FILE --share-file F [...] --threshold K --officers P1,P2,P3 --out DIR
                         appliance stopped: new shares, new PIN; the old shares stop working
  appliance config check FILE
  appliance check        --config FILE [--full]     database integrity and audit chain consistency, on demand
  appliance dev pki      --dir DIR
  appliance version
`

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// hardening is what secret.Harden did at process start, logged by serve.
var (
	hardening    secret.Hardening
	hardeningErr error
)

func main() {
	// First of all, before any secret is read: no core dumps, not dumpable
	// (every command: officers' commands read shares and approval keys).
	hardening, hardeningErr = secret.Harden()
	err := run(os.Args[1:], os.Stdout)
	if err == nil {
		os.Exit(exitOK)
	}
	fmt.Fprintln(os.Stderr, "appliance:", err)
	var ue usageError
	var ce configError
	var te tamperedError
	switch {
	case errors.As(err, &te):
		os.Exit(exitTampered)
	case errors.As(err, &ue):
		fmt.Fprint(os.Stderr, usage)
		os.Exit(exitUsage)
	case errors.As(err, &ce), errors.Is(err, app.ErrNoDatabase):
		os.Exit(exitConfig)
	default:
		os.Exit(exitFailure)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return usageError{"no command"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serve(rest)
	case "init":
		return initCmd(rest)
	case "keys":
		return keysCmd(rest, out)
	case "policy":
		if len(rest) == 0 || rest[0] != "set" {
			return usageError{"policy set --config FILE --key ID --rules JSON --share-file F ..."}
		}
		var keyID, rules string
		var shares repeated
		cfg, log, err := loadConfig("policy set", rest[1:], func(fs *flag.FlagSet) {
			fs.StringVar(&keyID, "key", "", "key id")
			fs.StringVar(&rules, "rules", "", "policy rules as JSON")
			fs.Var(&shares, "share-file", "unseal share file (repeat until the threshold): the quorum's authority")
		})
		if err != nil {
			return err
		}
		if err := app.RequireDatabase(cfg); err != nil {
			return err
		}
		v, err := app.SetPolicyLocal(context.Background(), cfg, log, keyID, []byte(rules), shares)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "policy of key %s is now version %d\n", keyID, v)
		return nil
	case "requests":
		return requestsCmd(rest, out)
	case "audit":
		return auditCmd(rest, out)
	case "backup":
		return backupCmd(rest, out)
	case "restore":
		return restoreCmd(rest, out)
	case "reshare":
		return reshareCmd(rest, out)
	case "check":
		return checkCmd(rest, out)
	case "unseal":
		return unsealCmd(rest, out)
	case "freeze":
		return freezeCmd(rest, out)
	case "propose":
		return proposeCmd(rest, out)
	case "approve":
		return approveCmd(rest, os.Stdin, out)
	case "config":
		if len(rest) != 2 || rest[0] != "check" {
			return usageError{"config check FILE"}
		}
		cfg, err := config.Load(rest[1])
		if err != nil {
			return configError{err}
		}
		y, err := cfg.Redacted()
		if err != nil {
			return err
		}
		_, err = out.Write(y)
		return err
	case "dev":
		if len(rest) == 0 || rest[0] != "pki" {
			return usageError{"dev pki --dir DIR"}
		}
		fs := flag.NewFlagSet("dev pki", flag.ContinueOnError)
		dir := fs.String("dir", "", "directory for the dev PKI")
		if err := fs.Parse(rest[1:]); err != nil || *dir == "" {
			return usageError{"dev pki --dir DIR"}
		}
		return devpki.Generate(*dir, devpki.DefaultClients())
	case "version", "--version", "-v":
		fmt.Fprintln(out, "appliance", version)
		return nil
	case "help", "--help", "-h":
		fmt.Fprint(out, usage)
		return nil
	default:
		return usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
}

// loadConfig parses --config (and the extra flags bound by bind) and builds
// the logger the configuration asks for.
func loadConfig(name string, args []string, bind func(*flag.FlagSet)) (*config.Config, *zap.Logger, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	path := fs.String("config", "/etc/appliance/appliance.yaml", "configuration file")
	if bind != nil {
		bind(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, usageError{fmt.Sprintf("%s: %v", name, err)}
	}
	if fs.NArg() > 0 {
		return nil, nil, usageError{fmt.Sprintf("%s: unexpected argument %q", name, fs.Arg(0))}
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return nil, nil, configError{err}
	}
	log, err := app.NewLogger(cfg.Log)
	if err != nil {
		return nil, nil, configError{err}
	}
	return cfg, log, nil
}

func serve(args []string) error {
	cfg, _, err := loadConfig("serve", args, nil)
	if err != nil {
		return err
	}
	log, level, err := app.NewLoggerLevel(cfg.Log)
	if err != nil {
		return configError{err}
	}
	defer func() { _ = log.Sync() }()
	if err := logHardening(log, cfg.Mode, hardening, hardeningErr); err != nil {
		return err
	}
	tuneGC(log)
	tuneProcs(log, cfg.HSM.PoolSize)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a, err := app.New(ctx, cfg, log, version)
	if err != nil {
		log.Error("start failed", zap.Error(err))
		return err
	}
	defer a.Close()
	a.SetLogLevel(level)
	return a.Serve(ctx)
}

// logHardening logs, once, what the process hardening achieved. A
// production appliance whose core dumps could not be turned off refuses to
// start (on Linux only a sandbox refusing setrlimit or prctl can cause it;
// other platforms have no hardening); dev mode warns and goes on.
func logHardening(log *zap.Logger, mode config.Mode, h secret.Hardening, err error) error {
	fields := []zap.Field{zap.Bool("core_limit_zero", h.CoreLimitZero), zap.Bool("dumpable", !h.NotDumpable),
		zap.Bool("secret_memory_locked", h.LockWorks), zap.Uint64("memlock_limit", h.MemlockLimit)}
	switch {
	case err == nil && h.Complete():
		log.Info("process hardened: "+h.String(), fields...)
	case mode == config.ModeProduction:
		log.Error("process hardening failed: core dumps may be possible; refusing to start", append(fields, zap.Error(err))...)
		return fmt.Errorf("process hardening: %w", errors.Join(err, errors.New(h.String())))
	default:
		log.Warn("process hardening failed (dev mode: going on): "+h.String(), append(fields, zap.Error(err))...)
	}
	return nil
}

// readSecretFile reads a secret (a PIN) from a file and trims trailing
// newlines in place: the result shares the read buffer, which the caller
// zeroes, and no string copy is made.
func readSecretFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(raw, "\r\n"), nil
}

func initCmd(args []string) error {
	var soPINFile, officers, outDir string
	var threshold int
	var genKeys bool
	cfg, log, err := loadConfig("init", args, func(fs *flag.FlagSet) {
		fs.StringVar(&soPINFile, "so-pin-file", "", "file holding the token's SO PIN; initialises the token when it does not exist")
		fs.IntVar(&threshold, "threshold", 0, "K: shares needed to unseal (ceremony)")
		fs.StringVar(&officers, "officers", "", "comma-separated officer principals, one share each (ceremony)")
		fs.StringVar(&outDir, "out", "", "directory for shares/ and officers/ (ceremony)")
		fs.BoolVar(&genKeys, "generate-approval-keys", false, "generate each officer's Ed25519 approval key pair into --out/officers")
	})
	if err != nil {
		return err
	}
	var soPIN []byte
	if soPINFile != "" {
		if soPIN, err = readSecretFile(soPINFile); err != nil {
			return fmt.Errorf("SO PIN file: %w", err)
		}
		defer clear(soPIN)
	}
	if threshold == 0 && officers == "" {
		return app.InitAppliance(context.Background(), cfg, log, soPIN, nil)
	}
	if len(soPIN) == 0 || outDir == "" || officers == "" {
		return usageError{"init ceremony: --so-pin-file, --threshold, --officers and --out are required"}
	}
	return app.InitAppliance(context.Background(), cfg, log, soPIN, &app.CeremonySpec{
		Threshold: threshold, Officers: strings.Split(officers, ","), OutDir: outDir, GenerateApprovalKeys: genKeys,
	})
}

// repeated collects a repeatable flag.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func keysCmd(args []string, out io.Writer) error {
	if len(args) == 0 {
		return usageError{"keys create|list"}
	}
	switch args[0] {
	case "create":
		var spec app.KeySpec
		var alg string
		var shares repeated
		cfg, log, err := loadConfig("keys create", args[1:], func(fs *flag.FlagSet) {
			fs.StringVar(&spec.ID, "id", "", "registry id")
			fs.StringVar(&spec.Label, "label", "", "CKA_LABEL (default: the id)")
			fs.StringVar(&alg, "algorithm", "", "secp256k1, p256 or ed25519")
			fs.StringVar(&spec.Chain, "chain", "", "ethereum")
			fs.StringVar(&spec.Network, "network", "", "chain id or network name")
			fs.BoolVar(&spec.IfMissing, "if-missing", false, "succeed without change when the id exists")
			fs.BoolVar(&spec.WrappedBackup, "wrapped-backup", false, "the private key may be backed up, wrapped inside the HSM (not ed25519)")
			fs.Var(&shares, "share-file", "unseal share file (repeat until the threshold); without it the URI's pin-source is used")
		})
		if err != nil {
			return err
		}
		if err := app.RequireDatabase(cfg); err != nil {
			return err
		}
		spec.Algorithm = hsm.Algorithm(alg)
		k, err := app.CreateKey(context.Background(), cfg, log, spec, shares)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Algorithm, k.Chain, k.Network, k.Address)
		return nil
	case "list":
		cfg, log, err := loadConfig("keys list", args[1:], nil)
		if err != nil {
			return err
		}
		if err := app.RequireDatabase(cfg); err != nil {
			return err
		}
		keys, err := app.ListKeys(context.Background(), cfg, log)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tALGORITHM\tCHAIN\tNETWORK\tADDRESS\tPUBLIC KEY")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Algorithm, k.Chain, k.Network, k.Address, hex.EncodeToString(k.PublicKey))
		}
		return tw.Flush()
	default:
		return usageError{"keys create|list"}
	}
}
