package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/custodysigner/appliance/internal/app"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/store"
)

const auditUsage = `audit verify (--db FILE | --export FILE | --config FILE) --pubkey PEM [--pubkey PEM ...] [--anchor SEQ:HASH]
  audit export (--db FILE | --config FILE) [--out FILE] [--after N]
  audit pubkey (--db FILE | --config FILE)
  audit archives (--config FILE | --db FILE --dir DIR) [--pubkey PEM ...]`

// tamperedError is a verification that failed on the data: exit code 4.
type tamperedError struct{ err error }

func (e tamperedError) Error() string { return e.err.Error() }
func (e tamperedError) Unwrap() error { return e.err }

func auditCmd(args []string, out io.Writer) error {
	if len(args) == 0 {
		return usageError{auditUsage}
	}
	fs := flag.NewFlagSet("audit "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	db := fs.String("db", "", "database file (read-only; a copy, or the live file)")
	cfgPath := fs.String("config", "", "configuration file naming the database")
	export := fs.String("export", "", "JSON-lines export to verify instead of a database")
	outPath := fs.String("out", "", "write the export here instead of standard output")
	after := fs.Int64("after", 0, "export entries after this sequence number")
	dir := fs.String("dir", "", "archive directory (default: the configuration's retention.archive_dir)")
	var pubkeys, anchors repeated
	fs.Var(&pubkeys, "pubkey", "audit public key (PEM), obtained out of band; repeat for older keys")
	fs.Var(&anchors, "anchor", "SEQ:HASH of a head recorded earlier; the chain must reach it")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		return usageError{auditUsage}
	}
	ctx := context.Background()
	if *db == "" && *cfgPath != "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return configError{err}
		}
		*db = cfg.Store.Path
		if *dir == "" {
			*dir = cfg.AuditArchiveDir()
		}
	}
	switch args[0] {
	case "verify":
		if len(pubkeys) == 0 || (*db == "") == (*export == "") {
			return usageError{auditUsage}
		}
		keys, err := readAuditKeys(pubkeys)
		if err != nil {
			return err
		}
		anch, err := parseAnchors(anchors)
		if err != nil {
			return err
		}
		var r audit.Report
		before := "are archived: their audit_archived entry is in the chain; verify the archive files that hold them with --export"
		if *export != "" {
			f, err := os.Open(*export)
			if err != nil {
				return err
			}
			defer f.Close()
			r, err = audit.VerifyExport(f, keys, anch)
			if err != nil {
				return verifyFailure(err)
			}
			before = "are not in this export: verify the archive or export that holds them"
		} else {
			f, err := store.OpenAuditFile(ctx, *db)
			if err != nil {
				return err
			}
			defer f.Close()
			r, err = f.Verify(ctx, keys, anch)
			if err != nil {
				return verifyFailure(err)
			}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		fmt.Fprintf(out, "audit chain OK: %d entries, first %d, head %d, %d checkpoints (last at entry %d), %d entries after it\n",
			r.Entries, r.FirstSeq, r.HeadSeq, r.Checkpoints, r.LastCheckpointSeq, r.Unprotected)
		if r.FirstSeq > 1 {
			fmt.Fprintf(out, "entries 1 to %d %s\n", r.FirstSeq-1, before)
		}
		return enc.Encode(r)
	case "export":
		if *db == "" {
			return usageError{auditUsage}
		}
		f, err := store.OpenAuditFile(ctx, *db)
		if err != nil {
			return err
		}
		defer f.Close()
		w := out
		if *outPath != "" {
			of, err := os.OpenFile(*outPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			defer of.Close()
			w = of
		}
		n, err := f.Export(ctx, w, *after)
		if err != nil {
			return err
		}
		if *outPath != "" {
			fmt.Fprintf(os.Stderr, "exported %d entries to %s\n", n, *outPath)
		}
		return nil
	case "archives":
		if *db == "" || *dir == "" {
			return usageError{auditUsage}
		}
		keys, err := readAuditKeys(pubkeys)
		if err != nil {
			return err
		}
		return auditArchives(ctx, out, *db, *dir, keys)
	case "pubkey":
		if *db == "" {
			return usageError{auditUsage}
		}
		st, err := store.OpenAuditFile(ctx, *db)
		if err != nil {
			return err
		}
		defer st.Close()
		keys, err := st.AuditKeys(ctx)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return errors.New("no audit key yet: the appliance creates it at its first unseal")
		}
		for _, k := range keys {
			pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.PublicKey)
			if err != nil {
				return err
			}
			pemKey, err := audit.MarshalPublicKey(pub)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "# audit key %s, created %s\n%s", k.KeyID, k.CreatedAt.Format("2006-01-02T15:04:05Z"), pemKey)
		}
		return nil
	default:
		return usageError{auditUsage}
	}
}

// auditArchives reports the recorded audit archives against the archive
// directory: a line each, then the JSON report. An archive altered, not
// verifying or not linking is exit 4.
func auditArchives(ctx context.Context, out io.Writer, db, dir string, keys []*ecdsa.PublicKey) error {
	f, err := store.OpenAuditFile(ctx, db)
	if err != nil {
		return err
	}
	defer f.Close()
	rep, err := f.ArchiveStatus(ctx, dir, keys)
	if err != nil {
		return err
	}
	for _, a := range rep.Archives {
		line := fmt.Sprintf("%s  entries %d to %d  %s", a.File, a.From, a.Through, a.State)
		if a.Verified {
			line += ", verified"
		}
		if a.Deleting {
			line += ", its pass is still deleting: keep it here"
		}
		if a.Problem != "" {
			line += ": " + a.Problem
		}
		fmt.Fprintln(out, line)
	}
	fmt.Fprintf(out, "%d archives recorded in %s; the database starts at entry %d\n", len(rep.Archives), dir, rep.FirstSeq)
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	if rep.Broken > 0 {
		return tamperedError{fmt.Errorf("AUDIT ARCHIVES BROKEN: %d of %d altered, failing verification or not linking: %w", rep.Broken, len(rep.Archives), audit.ErrTampered)}
	}
	return nil
}

func verifyFailure(err error) error {
	// An anchor the chain cannot check is the auditor's to fix, not tampering.
	var ae *audit.AnchorError
	if errors.As(err, &ae) {
		return usageError{"--anchor: " + ae.Error()}
	}
	if errors.Is(err, audit.ErrTampered) {
		return tamperedError{fmt.Errorf("AUDIT VERIFICATION FAILED: %w", err)}
	}
	return err
}

func readAuditKeys(files []string) ([]*ecdsa.PublicKey, error) {
	var keys []*ecdsa.PublicKey
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		k, err := audit.ParsePublicKey(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func parseAnchors(list []string) (map[int64][]byte, error) {
	out := map[int64][]byte{}
	for _, a := range list {
		s, h, ok := strings.Cut(a, ":")
		seq, err1 := strconv.ParseInt(s, 10, 64)
		hash, err2 := hex.DecodeString(h)
		if !ok || err1 != nil || err2 != nil || seq < 1 || len(hash) != audit.HashSize {
			return nil, usageError{fmt.Sprintf("--anchor %q: want SEQ:HASH (SEQ from 1, HASH 64 hex digits)", a)}
		}
		out[seq] = hash
	}
	return out, nil
}

// checkCmd checks the database and the audit chain on demand.
func checkCmd(args []string, out io.Writer) error {
	var full bool
	cfg, _, err := loadConfig("check", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&full, "full", false, "run the full integrity_check instead of quick_check")
	})
	if err != nil {
		return err
	}
	rep, err := app.CheckIntegrity(context.Background(), cfg.Store.Path, full)
	if err != nil {
		return verifyFailure(err)
	}
	fmt.Fprintf(out, "database %s: %s ok; audit chain consistent (%d entries from %d, last checkpoint at %d)\n",
		rep.Database, rep.Check, rep.Audit.Entries, rep.Audit.FirstSeq, rep.Audit.LastCheckpointSeq)
	return printJSON(out, rep)
}
