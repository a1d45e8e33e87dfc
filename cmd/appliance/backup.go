package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/custodysigner/appliance/internal/app"
	"github.com/custodysigner/appliance/internal/backup"
)

// backupCmd asks the running appliance to write an encrypted backup.
func backupCmd(args []string, out io.Writer) error {
	if len(args) > 0 && args[0] == "inspect" {
		if len(args) != 2 {
			return usageError{"backup inspect FILE"}
		}
		f, err := os.Open(args[1])
		if err != nil {
			return err
		}
		defer f.Close()
		h, err := backup.ReadHeader(f)
		if err != nil {
			return err
		}
		return printJSON(out, map[string]any{"format_version": h.Version, "created_at": h.Created,
			"recipient_fingerprint": h.Recipient.String(), "hpke": fmt.Sprintf("kem 0x%04x kdf 0x%04x aead 0x%04x", h.KEM, h.KDF, h.AEAD)})
	}
	c, err := newClient("backup", args, nil)
	if err != nil {
		return err
	}
	var res map[string]any
	if err := c.Do(context.Background(), "POST", "/v1/backups", map[string]string{}, &res); err != nil {
		return err
	}
	return printJSON(out, res)
}

// restoreCmd rebuilds an appliance from an archive on a fresh token.
func restoreCmd(args []string, out io.Writer) error {
	var archive, soPINFile, mode string
	var shares repeated
	cfg, log, err := loadConfig("restore", args, func(fs *flag.FlagSet) {
		fs.StringVar(&archive, "archive", "", "backup archive (.apbk)")
		fs.StringVar(&soPINFile, "so-pin-file", "", "file holding the new token's SO PIN (modes host and token)")
		fs.StringVar(&mode, "mode", "host", "what was lost: host (token and database), database (token kept) or token (database kept)")
		fs.Var(&shares, "share-file", "unseal share file of the backup's ceremony (repeat until the threshold)")
	})
	if err != nil {
		return err
	}
	if archive == "" || len(shares) == 0 || (soPINFile == "" && mode != string(app.RestoreDatabase)) {
		return usageError{"restore --config FILE --archive FILE [--mode host|database|token] [--so-pin-file FILE] --share-file F [--share-file F ...]"}
	}
	var soPIN []byte
	if soPINFile != "" {
		if soPIN, err = readSecretFile(soPINFile); err != nil {
			return err
		}
		defer clear(soPIN)
	}
	var texts []string
	for _, f := range shares {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		texts = append(texts, strings.TrimSpace(string(raw)))
		clear(raw)
	}
	rep, err := app.RestoreWith(context.Background(), cfg, log, app.RestoreMode(mode), archive, texts, soPIN)
	if err != nil {
		return err
	}
	return printJSON(out, rep)
}

// reshareCmd re-splits the unseal secret (appliance stopped): the old
// shares stop working.
func reshareCmd(args []string, out io.Writer) error {
	var spec app.ReshareSpec
	var officers string
	var shares repeated
	cfg, log, err := loadConfig("reshare", args, func(fs *flag.FlagSet) {
		fs.IntVar(&spec.Threshold, "threshold", 0, "shares needed to unseal after the re-share")
		fs.StringVar(&officers, "officers", "", "comma-separated registered officers who receive new shares")
		fs.StringVar(&spec.OutDir, "out", "", "directory for shares/<officer>.share (must not hold them already)")
		fs.Var(&shares, "share-file", "a current share file (repeat until the current threshold)")
	})
	if err != nil {
		return err
	}
	if spec.Threshold == 0 || officers == "" || spec.OutDir == "" || len(shares) == 0 {
		return usageError{"reshare --config FILE --share-file F [...] --threshold K --officers P1,P2,P3 --out DIR"}
	}
	spec.Officers = strings.Split(officers, ",")
	if err := app.Reshare(context.Background(), cfg, log, shares, spec); err != nil {
		return err
	}
	fmt.Fprintf(out, "re-shared %d of %d; new shares in %s/shares; the old shares no longer unseal\n", spec.Threshold, len(spec.Officers), spec.OutDir)
	return nil
}
