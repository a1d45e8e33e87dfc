package app

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/store"
)

// CeremonySpec describes an init ceremony.
type CeremonySpec struct {
	Threshold int
	Officers  []string // principal names
	// OutDir receives shares/<officer>.share and, when GenerateApprovalKeys,
	// officers/<officer>.approval.key (PKCS#8 PEM) and .approval.pub.
	OutDir               string
	GenerateApprovalKeys bool
	// ApprovalKeys maps officers to their Ed25519 public keys when they
	// bring their own (PEM files), instead of generating them.
	ApprovalKeys map[string]ed25519.PublicKey
}

// OfficerFileName is the short name used for an officer's files: the last
// segment of a URI principal, else the name, restricted to a safe alphabet.
func OfficerFileName(principal string) string {
	name := principal
	if i := strings.Index(name, "://"); i >= 0 {
		name = path.Base(name[i+3:])
	}
	return unsafeChars.ReplaceAllString(name, "_")
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// InitCeremony runs the key ceremony on a fresh appliance: a random 256-bit
// unseal secret split k-of-n, one share file per officer, the HSM user PIN
// derived from the secret and set at token initialisation, officers' approval
// keys registered, and only the secret's verifier stored. Afterwards the
// secret and the PIN exist nowhere. Running it on an initialised appliance
// changes nothing.
func InitCeremony(ctx context.Context, cfg *config.Config, log *zap.Logger, soPIN []byte, spec CeremonySpec) error {
	st, err := store.Open(ctx, cfg.Store.Path, log.Named("store"))
	if err != nil {
		return err
	}
	defer st.Close()
	if c, err := st.GetCeremony(ctx); err == nil {
		log.Info("already initialised: an unseal ceremony is recorded", zap.Int("threshold", c.Threshold), zap.Int("officers", c.Total))
		return nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if len(spec.Officers) < spec.Threshold || spec.Threshold < 2 {
		return fmt.Errorf("ceremony: %d officers cannot meet a threshold of %d (at least 2)", len(spec.Officers), spec.Threshold)
	}
	officers, err := approvalKeys(spec)
	if err != nil {
		return err
	}
	c, err := ceremony.NewCeremony(spec.Threshold, len(spec.Officers))
	if err != nil {
		return err
	}
	defer c.Secret.Destroy()
	pin := c.Secret.DerivePIN()
	defer clear(pin)

	uri, err := hsm.ParseURI(cfg.HSM.URI)
	if err != nil {
		return fmt.Errorf("hsm.uri: %w", err)
	}
	if cfg.HSM.SoftHSM2Conf != "" {
		if err := os.Setenv("SOFTHSM2_CONF", cfg.HSM.SoftHSM2Conf); err != nil {
			return err
		}
	}
	if err := hsm.InitToken(uri.ModulePath, uri.Token, soPIN, pin); err != nil {
		return fmt.Errorf("initialise token %q with the derived PIN: %w", uri.Token, err)
	}
	wrapKey := c.Secret.BackupWrappingKey()
	err = hsm.ProvisionWrappingKey(uri.ModulePath, uri.Token, soPIN, pin, backupWrapLabel, wrapKey)
	clear(wrapKey)
	if err != nil {
		return fmt.Errorf("provision the backup wrapping key: %w", err)
	}
	// Prove the PIN works before anyone is handed a share.
	m, err := OpenHSM(ctx, cfg, log, pin)
	if err != nil {
		return err
	}
	_ = m.Close()

	if err := writeShares(spec, c); err != nil {
		return err
	}
	if err := st.SaveCeremony(ctx, store.Ceremony{ID: c.ID[:], Threshold: c.Threshold, Total: c.Total, Verifier: c.Verifier}, officers); err != nil {
		return err
	}
	if err := st.WriteTx(ctx, func(tx *store.Tx) error { return registerBackupRecipient(ctx, tx, c.Secret) }); err != nil {
		return err
	}
	log.Info("unseal ceremony complete", zap.Int("threshold", c.Threshold), zap.Int("officers", c.Total),
		zap.String("shares", filepath.Join(spec.OutDir, "shares")), zap.String("token", uri.Token))
	return nil
}

func approvalKeys(spec CeremonySpec) ([]store.Officer, error) {
	out := make([]store.Officer, 0, len(spec.Officers))
	for _, name := range spec.Officers {
		if pub, ok := spec.ApprovalKeys[name]; ok {
			out = append(out, store.Officer{Name: name, ApprovalKey: pub})
			continue
		}
		if !spec.GenerateApprovalKeys {
			return nil, fmt.Errorf("officer %s has no approval key (bring one or let the ceremony generate it)", name)
		}
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, err
		}
		pubDER, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, err
		}
		base := filepath.Join(spec.OutDir, "officers", OfficerFileName(name))
		if err := writeFile(base+".approval.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, err
		}
		if err := writeFile(base+".approval.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
			return nil, err
		}
		clear(der)
		out = append(out, store.Officer{Name: name, ApprovalKey: pub})
	}
	return out, nil
}

func writeShares(spec CeremonySpec, c *ceremony.Ceremony) error {
	for i, name := range spec.Officers {
		f := filepath.Join(spec.OutDir, "shares", OfficerFileName(name)+".share")
		if err := writeFile(f, []byte(c.Shares[i].Encode()+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// writeFile refuses to overwrite: a share or key file is never replaced silently.
func writeFile(name string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// PINFromShares reconstructs the HSM PIN from share files (the local path
// for dev and recovery tools). The shares and the secret are zeroed.
func PINFromShares(ctx context.Context, st *store.Store, files []string) ([]byte, error) {
	c, err := st.GetCeremony(ctx)
	if err != nil {
		return nil, err
	}
	var id [8]byte
	copy(id[:], c.ID)
	p := ceremony.NewProgress(id, c.Threshold, c.Verifier, time.Minute, time.Now)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		secret, _, err := p.Add(strings.TrimSpace(string(raw)))
		clear(raw)
		if err != nil {
			return nil, fmt.Errorf("share file %s: %w", f, err)
		}
		if secret != nil {
			pin := secret.DerivePIN()
			secret.Destroy()
			return pin, nil
		}
	}
	return nil, fmt.Errorf("%d share file(s) given, %d needed", len(files), c.Threshold)
}

// LoadApprovalKey reads an officer's Ed25519 approval private key (PKCS#8 PEM).
func LoadApprovalKey(file string) (ed25519.PrivateKey, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return nil, fmt.Errorf("%s: no PEM block", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an Ed25519 key", file)
	}
	return priv, nil
}

// SetPolicyLocal installs a new version of a key's policy rules from the
// command line, for init and dev. It needs the quorum's shares (checked
// against the ceremony's verifier), as a set_policy proposal would.
func SetPolicyLocal(ctx context.Context, cfg *config.Config, log *zap.Logger, keyID string, rules []byte, shareFiles []string) (int, error) {
	r, err := policy.ParseRules(rules)
	if err != nil {
		return 0, err
	}
	lk, err := lockOffline(cfg.Store.Path, "policy set")
	if err != nil {
		return 0, err
	}
	defer lk.release()
	st, err := store.Open(ctx, cfg.Store.Path, log.Named("store"))
	if err != nil {
		return 0, err
	}
	defer st.Close()
	pin, err := PINFromShares(ctx, st, shareFiles)
	if err != nil {
		return 0, fmt.Errorf("the quorum's shares: %w", err)
	}
	clear(pin)
	var v int
	err = st.WriteTx(ctx, func(tx *store.Tx) error {
		var err error
		if v, err = policy.SetRules(ctx, tx, keyID, r, "local: quorum of shares"); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "policy", "local", fmt.Sprintf("key %s version %d", keyID, v))
	})
	return v, err
}
