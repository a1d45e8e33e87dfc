package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/seal"
	"github.com/custodysigner/appliance/internal/signing"
)

// Unseal opens the HSM with pin, checks every registered key against the
// token and makes the module current. It implements seal.Unsealer.
//
// Integrity at unseal: a registered key missing from the token or different
// from its pinned public key, an audit key that does not reconcile, or an
// audit chain that does not reach the token's last checkpoint refuses the
// unseal with a report (a *seal.IntegrityError), unless
// seal.allow_key_mismatch lets the appliance serve without the refused keys.
func (a *App) Unseal(ctx context.Context, pin []byte) (err error) {
	m, err := openHSM(ctx, a.cfg, a.log, pin, a.interpose)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = m.Close()
		}
	}()
	signer, red, err := a.prepareAudit(ctx, m, pin)
	if err != nil {
		return err
	}
	auditPin := hsm.PinnedKey{Ref: signer.ref, PublicKey: signer.pubRaw}
	refused := a.keys.Reconcile(ctx, m, a.log.Named("keys"), auditPin)
	if len(refused) > 0 && !a.cfg.Seal.AllowKeyMismatch {
		return &seal.IntegrityError{Report: keyReport(refused)}
	}
	authKey, err := backupAuthKey(pin)
	if err != nil {
		return err
	}
	a.mu.Lock()
	old := a.hsm
	a.hsm, a.auditSigner = m, signer
	clear(a.backupAuth)
	a.backupAuth = authKey
	a.mu.Unlock()
	a.store.SetAuditKey(red)
	if old != nil {
		_ = old.Close()
	}
	return nil
}

// keyReport lists refused keys for officers, in a stable order.
func keyReport(refused map[string]error) string {
	ids := make([]string, 0, len(refused))
	for id := range refused {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("key %q: %s", id, signing.RefusalText(refused[id]))
	}
	return fmt.Sprintf("%d registered key(s) do not reconcile with the token (%s); another token, or a tampered registry. "+
		"Set seal.allow_key_mismatch to serve without them", len(ids), strings.Join(parts, "; "))
}

// Seal logs out, closes every HSM session and unloads the module.
func (a *App) Seal() {
	a.store.SetAuditKey(nil)
	a.mu.Lock()
	m := a.hsm
	a.hsm, a.auditSigner = nil, nil
	clear(a.backupAuth)
	a.backupAuth = nil
	a.mu.Unlock()
	if m != nil {
		if err := m.Close(); err != nil {
			a.log.Warn("closing the HSM at seal", zap.Error(err))
		}
	}
}

// currentBackupAuth returns a copy of the manifest MAC key, nil while sealed.
func (a *App) currentBackupAuth() []byte {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.backupAuth == nil {
		return nil
	}
	return append([]byte(nil), a.backupAuth...)
}

func (a *App) currentModule() *hsm.Module {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.hsm
}

// currentSigner returns the HSM as the signing service sees it; an untyped
// nil while sealed.
func (a *App) currentSigner() signing.Signer {
	if m := a.currentModule(); m != nil {
		return m
	}
	return nil
}

// autoPIN is the unattended unseal source: the systemd credential when the
// service runs with one, else the URI's pin-source.
func (a *App) autoPIN() (func() ([]byte, error), string) {
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		path := filepath.Join(dir, a.cfg.Seal.Credential)
		return func() ([]byte, error) { return readSecretFile(path) }, "systemd credential " + a.cfg.Seal.Credential
	}
	return func() ([]byte, error) {
		uri, err := hsm.ParseURI(a.cfg.HSM.URI)
		if err != nil {
			return nil, err
		}
		return uri.ReadPIN()
	}, "hsm.uri pin-source"
}

func readSecretFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		// The path is not secret; the contents never reach an error.
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	n := len(raw)
	for n > 0 && (raw[n-1] == '\n' || raw[n-1] == '\r') {
		n--
	}
	pin := append([]byte(nil), raw[:n]...)
	clear(raw)
	return pin, nil
}

// startSeal runs the unattended unseal paths: auto-unseal, or in dev mode
// the configured share files, loudly.
func (a *App) startSeal(ctx context.Context) error {
	if err := a.seal.Start(ctx); err != nil {
		return err
	}
	if len(a.cfg.Seal.DevUnsealShares) == 0 || !a.seal.Sealed() || a.seal.Frozen() {
		return nil
	}
	a.log.Warn("DEV MODE: unsealing with share files from disk — never do this in production",
		zap.Strings("share_files", a.cfg.Seal.DevUnsealShares))
	for _, f := range a.cfg.Seal.DevUnsealShares {
		raw, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("dev unseal share %s: %w", f, err)
		}
		_, err = a.seal.SubmitShare(ctx, "dev-unseal:"+filepath.Base(f), strings.TrimSpace(string(raw)))
		clear(raw)
		if err != nil {
			return fmt.Errorf("dev unseal with %s: %w", f, err)
		}
	}
	if a.seal.Sealed() {
		return errors.New("dev unseal: still sealed after every share file")
	}
	return nil
}

// reloadPrincipals applies the quorum's principal changes over the
// configuration file's principals.
func (a *App) reloadPrincipals(ctx context.Context) error {
	recs, err := a.store.ListPrincipals(ctx)
	if err != nil {
		return err
	}
	overrides := make([]access.Override, 0, len(recs))
	for _, r := range recs {
		overrides = append(overrides, access.Override{Name: r.Name, Roles: r.Roles, Keys: r.Keys, Removed: r.Removed})
	}
	a.access.Set(a.cfg.Principals, overrides)
	return nil
}
