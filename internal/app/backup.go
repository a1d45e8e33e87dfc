package app

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/backup"
	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/store"
)

// backupWrapLabel is the trusted AES key on the token under which
// backup-able private keys are wrapped. Its value is derived from the
// officers' unseal secret, so a fresh token given the same quorum gets the
// same key and can unwrap.
const backupWrapLabel = "appliance-backup-wrap"

// Archive member names.
const (
	memberDB     = "appliance.db"
	memberConfig = "appliance.yaml"
	// memberMAC authenticates the manifest (and through its hashes, the
	// database and configuration): HMAC-SHA256 under a key derived from the
	// HSM PIN. The recipient key is public, so anyone could write an archive
	// that decrypts; only the appliance (or a quorum) can write one whose
	// MAC verifies.
	memberMAC = "manifest.mac"
)

// backupAuthInfo labels the HKDF deriving the manifest MAC key from the PIN.
const backupAuthInfo = "custodysigner/appliance/v1/backup-manifest-mac"

func backupAuthKey(pin []byte) ([]byte, error) {
	return hkdf.Key(sha256.New, pin, nil, backupAuthInfo, 32)
}

func manifestMAC(key, manifest []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(manifest)
	return hex.EncodeToString(m.Sum(nil))
}

// auditKeyMemberID names the audit key among the manifest's keys.
func auditKeyMemberID(keyID string) string { return "audit-key-" + keyID }

// BackupResult describes an archive written by Backup.
type BackupResult struct {
	Path      string             `json:"path"`
	SHA256    string             `json:"sha256"`
	Size      int64              `json:"size"`
	CreatedAt time.Time          `json:"created_at"`
	AuditHead backup.AuditHead   `json:"audit_head"`
	Keys      []BackupKeySummary `json:"keys"`
}

// BackupKeySummary says whether a key's private half is in the archive.
type BackupKeySummary struct {
	ID      string `json:"id"`
	Wrapped bool   `json:"wrapped"`
}

// registerBackupRecipient records the public key backups are encrypted to,
// derived from the secret (at the ceremony, at a re-share).
func registerBackupRecipient(ctx context.Context, tx *store.Tx, secret *ceremony.Secret) error {
	seed := secret.BackupRecipientSeed()
	defer clear(seed)
	_, pub, err := backup.KeyPairFromSeed(seed)
	if err != nil {
		return err
	}
	return store.SetBackupRecipientTx(ctx, tx, backup.MarshalPublicKey(pub))
}

// Backup writes one encrypted archive while the appliance runs: a
// consistent SQLite snapshot (online backup API), the configuration, a
// manifest, and every backup-able key wrapped inside the HSM. It needs the
// HSM (unsealed) and is audited; an archive whose audit entry cannot be
// committed is deleted.
func (a *App) Backup(ctx context.Context, by string) (BackupResult, error) {
	var res BackupResult
	m, signer := a.currentAudit()
	if m == nil || signer == nil {
		return res, apierr.New(http.StatusServiceUnavailable, apierr.CodeSealed, "backups need the HSM: unseal first")
	}
	recText, err := a.store.BackupRecipient(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return res, apierr.New(http.StatusConflict, apierr.CodeConflict, "no backup key: this appliance has no officer ceremony (or predates backups; re-share once to register one)")
	}
	if err != nil {
		return res, apierr.Internal(err)
	}
	recipient, err := backup.ParsePublicKey(recText)
	if err != nil {
		return res, apierr.Internal(err)
	}
	// Sign the head first, so the archive's chain ends in a checkpoint.
	if err := a.audit.Checkpoint(ctx); err != nil {
		return res, apierr.Internal(fmt.Errorf("checkpoint before backup: %w", err))
	}
	dir := a.cfg.BackupDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, apierr.Internal(err)
	}
	created := time.Now().UTC()
	name := "appliance-" + created.Format("20060102T150405.000000000Z") + ".apbk"
	res.Path, res.CreatedAt = filepath.Join(dir, name), created

	snap := res.Path + ".db.tmp"
	defer os.Remove(snap)
	if err := a.store.Snapshot(ctx, snap); err != nil {
		return res, apierr.Internal(fmt.Errorf("snapshot: %w", err))
	}
	man, wrapped, err := a.manifest(ctx, m, signer, snap, created)
	if err != nil {
		return res, apierr.Internal(err)
	}
	res.AuditHead = man.AuditHead
	for _, k := range man.Keys {
		res.Keys = append(res.Keys, BackupKeySummary{ID: k.ID, Wrapped: k.Wrapped})
	}
	tmp := res.Path + ".tmp"
	defer os.Remove(tmp)
	authKey := a.currentBackupAuth()
	if authKey == nil {
		return res, apierr.New(http.StatusServiceUnavailable, apierr.CodeSealed, "backups need the HSM: unseal first")
	}
	if res.SHA256, res.Size, err = writeArchive(tmp, recipient, created, man, snap, a.cfg.Raw(), wrapped, authKey); err != nil {
		return res, apierr.Internal(err)
	}
	err = a.store.RecordAudit(ctx, audit.Record{Kind: "backup", Principal: by, Detail: "encrypted backup written",
		Fields: map[string]string{"archive": name, "sha256": res.SHA256, "audit_head_seq": fmt.Sprint(man.AuditHead.Seq),
			"recipient": recipient.Fingerprint().String(), "keys_wrapped": fmt.Sprint(len(wrapped))}})
	if err != nil {
		return res, apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeUnavailable, "the audit log cannot be written; no backup was kept")
	}
	if err := os.Rename(tmp, res.Path); err != nil {
		return res, apierr.Internal(err)
	}
	a.log.Info("backup written", zap.String("path", res.Path), zap.String("sha256", res.SHA256), zap.Int64("audit_head", man.AuditHead.Seq))
	return res, nil
}

// manifest describes the snapshot and wraps every backup-able key.
func (a *App) manifest(ctx context.Context, m *hsm.Module, signer *auditSigner, snap string, created time.Time) (*backup.Manifest, map[string][]byte, error) {
	dbSum, err := fileSHA256(snap)
	if err != nil {
		return nil, nil, err
	}
	cfgSum := sha256.Sum256(a.cfg.Raw())
	schema, err := a.store.SchemaVersion(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, err := a.store.GetCeremony(ctx)
	if err != nil {
		return nil, nil, err
	}
	man := &backup.Manifest{FormatVersion: backup.ManifestVersion, ApplianceVersion: a.version, CreatedAt: created,
		SchemaVersion: schema, DatabaseMember: memberDB, DatabaseSHA256: dbSum, ConfigMember: memberConfig,
		ConfigSHA256: hex.EncodeToString(cfgSum[:]),
		Ceremony:     backup.CeremonyInfo{ID: hex.EncodeToString(c.ID), Threshold: c.Threshold, Total: c.Total}}
	f, err := store.OpenAuditFile(ctx, snap)
	if err != nil {
		return nil, nil, err
	}
	err = f.Entries(ctx, 0, func(e *audit.Entry) error {
		man.AuditHead = backup.AuditHead{Seq: e.Seq, Hash: hex.EncodeToString(e.Hash)}
		return nil
	})
	f.Close()
	if err != nil {
		return nil, nil, err
	}
	wrapped := map[string][]byte{}
	add := func(k backup.ManifestKey, ref hsm.KeyRef) error {
		if ref.WrappedBackup {
			blob, err := m.WrapKey(ctx, ref, backupWrapLabel)
			if err != nil {
				return fmt.Errorf("wrap key %s: %w", k.ID, err)
			}
			k.Wrapped, k.WrappedMember = true, "keys/"+k.ID+".wrapped"
			wrapped[k.WrappedMember] = blob
		}
		man.Keys = append(man.Keys, k)
		return nil
	}
	for _, k := range a.keys.List() {
		err := add(backup.ManifestKey{ID: k.ID, Label: k.Label, Algorithm: k.Algorithm, Chain: k.Chain, Network: k.Network,
			PublicKey: hex.EncodeToString(k.PublicKey), Address: k.Address}, k.Ref)
		if err != nil {
			return nil, nil, err
		}
	}
	err = add(backup.ManifestKey{ID: auditKeyMemberID(signer.id), Label: auditKeyLabel, Algorithm: string(hsm.P256),
		PublicKey: hex.EncodeToString(signer.pubRaw)}, signer.ref)
	if err != nil {
		return nil, nil, err
	}
	return man, wrapped, man.Validate()
}

func writeArchive(path string, recipient *backup.PublicKey, created time.Time, man *backup.Manifest, snap string, cfgRaw []byte, wrapped map[string][]byte, authKey []byte) (string, int64, error) {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", 0, err
	}
	defer out.Close()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(out, h)}
	w, err := backup.NewWriter(cw, recipient, created)
	if err != nil {
		return "", 0, err
	}
	manJSON, err := man.Marshal()
	if err != nil {
		return "", 0, err
	}
	if err := w.AddBytes(backup.ManifestName, manJSON); err != nil {
		return "", 0, err
	}
	if err := w.AddBytes(memberMAC, []byte(manifestMAC(authKey, manJSON))); err != nil {
		return "", 0, err
	}
	db, err := os.Open(snap)
	if err != nil {
		return "", 0, err
	}
	defer db.Close()
	fi, err := db.Stat()
	if err != nil {
		return "", 0, err
	}
	if err := w.AddFile(memberDB, db, fi.Size()); err != nil {
		return "", 0, err
	}
	if err := w.AddBytes(memberConfig, cfgRaw); err != nil {
		return "", 0, err
	}
	for _, k := range man.Keys {
		if k.Wrapped {
			if err := w.AddBytes(k.WrappedMember, wrapped[k.WrappedMember]); err != nil {
				return "", 0, err
			}
		}
	}
	if err := w.Close(); err != nil {
		return "", 0, err
	}
	if err := out.Sync(); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n, out.Close()
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
