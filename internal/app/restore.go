package app

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/backup"
	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/store"
)

// RestoreReport says what a restore brought back.
type RestoreReport struct {
	Mode          RestoreMode `json:"mode"`
	Archive       string      `json:"archive"`
	BackupTakenAt string      `json:"backup_taken_at"`
	AuditHeadSeq  int64       `json:"audit_head_seq"`
	KeysRestored  []string    `json:"keys_restored"`
	// KeysNotInBackup are keys created without the wrapped-backup
	// attribute: they come back only through the HSM vendor's replication,
	// and the appliance refuses to unseal until they are on the token
	// (or seal.allow_key_mismatch is set).
	KeysNotInBackup []string `json:"keys_not_in_backup"`
	ConfigDiffers   bool     `json:"config_differs"`
	// TokenHeadBefore (mode database): the token's audit head before the
	// restore; entries after the archive's head up to it are lost, and the
	// restore entry says so.
	TokenHeadBefore int64 `json:"token_head_before,omitempty"`
}

// RestoreMode says what was lost.
type RestoreMode string

const (
	// RestoreHostLost: a fresh token and an empty data directory; keys
	// are unwrapped into the token, the database comes from the archive.
	RestoreHostLost RestoreMode = "host"
	// RestoreDatabase: the database was lost or corrupted, the token is
	// intact. The archived database is put back; the keys are checked on
	// the token, not unwrapped; the token's audit head is moved back to the
	// archive's, and the entries lost between are named in the restore entry.
	RestoreDatabase RestoreMode = "database"
	// RestoreToken: the token was lost, the database is intact. The keys
	// are unwrapped into a fresh token; the live database is kept and its
	// chain continues without loss.
	RestoreToken RestoreMode = "token"
)

// Restore rebuilds what was lost (see RestoreMode) from an archive, with the
// officers' quorum: the shares derive the backup key (to decrypt), the
// manifest MAC key (to authenticate), the PIN, and the wrapping key (to
// unwrap the private keys inside the HSM). Keys come back with the same
// CKA_IDs and public keys; the database — policies, principals, pending
// requests, the audit chain — comes back as it was, and the chain continues
// with a "restore" entry and a fresh checkpoint.
//
// The configuration in use is cfg (the new host's); the archived one is
// written beside the database as appliance.yaml.from-backup for comparison.
func Restore(ctx context.Context, cfg *config.Config, log *zap.Logger, archive string, shareTexts []string, soPIN []byte) (*RestoreReport, error) {
	return RestoreWith(ctx, cfg, log, RestoreHostLost, archive, shareTexts, soPIN)
}

// RestoreWith is Restore for a given mode. soPIN is needed to initialise a
// fresh token (host and token modes).
func RestoreWith(ctx context.Context, cfg *config.Config, log *zap.Logger, mode RestoreMode, archive string, shareTexts []string, soPIN []byte) (*RestoreReport, error) {
	rep := &RestoreReport{Archive: archive, Mode: mode}
	lk, err := lockOffline(cfg.Store.Path, "restore")
	if err != nil {
		return nil, err
	}
	defer lk.release()
	_, statErr := os.Stat(cfg.Store.Path)
	switch mode {
	case RestoreHostLost, RestoreDatabase:
		if statErr == nil {
			return nil, fmt.Errorf("restore: %s exists; move it aside first (this mode restores the database)", cfg.Store.Path)
		}
		// SQLite would apply a lost database's log to the restored one.
		if _, err := os.Lstat(cfg.Store.Path + "-wal"); err == nil {
			return nil, fmt.Errorf("restore: %s-wal, the write-ahead log of the lost database, is still there; move it aside too", cfg.Store.Path)
		}
	case RestoreToken:
		if statErr != nil {
			return nil, fmt.Errorf("restore: mode token keeps the database, but %s: %w", cfg.Store.Path, statErr)
		}
	default:
		return nil, fmt.Errorf("restore: unknown mode %q (host, database or token)", mode)
	}
	secret, ceremonyID, err := ceremony.Recover(shareTexts)
	if err != nil {
		return nil, fmt.Errorf("restore: the quorum's shares: %w", err)
	}
	defer secret.Destroy()
	seed := secret.BackupRecipientSeed()
	priv, _, err := backup.KeyPairFromSeed(seed)
	clear(seed)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(cfg.Store.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	staging, err := os.MkdirTemp(dir, ".restore-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	// The manifest MAC key: the same secret bound to the ceremony the
	// backup was taken under (the officers may have re-shared since).
	authKeyFor := func(man *backup.Manifest) ([]byte, error) {
		raw, err := hex.DecodeString(man.Ceremony.ID)
		if err != nil || len(raw) != 8 {
			return nil, fmt.Errorf("restore: manifest ceremony id %q", man.Ceremony.ID)
		}
		archived := secret.Rebind([8]byte(raw))
		defer archived.Destroy()
		pin := archived.DerivePIN()
		defer clear(pin)
		return backupAuthKey(pin)
	}
	man, wrapped, cfgRaw, err := unpack(archive, priv, staging, authKeyFor)
	if err != nil {
		return nil, err
	}
	rep.BackupTakenAt, rep.AuditHeadSeq = man.CreatedAt.Format(time.RFC3339), man.AuditHead.Seq
	rep.ConfigDiffers = string(cfgRaw) != string(cfg.Raw())

	// The database to continue with, checked against the shares before
	// anything touches the token.
	dbPath := filepath.Join(staging, memberDB)
	if mode == RestoreToken {
		dbPath = cfg.Store.Path
	}
	st, err := store.OpenExisting(ctx, dbPath, log.Named("store"))
	if err != nil {
		return nil, fmt.Errorf("restore: open the database: %w", err)
	}
	closeStore := func() {
		if st != nil {
			_ = st.Close()
			st = nil
		}
	}
	defer closeStore()
	if err := st.QuickCheck(ctx); err != nil {
		return nil, err
	}
	if err := adoptShares(ctx, st, secret, ceremonyID, shareTexts[0]); err != nil {
		return nil, err
	}

	pin := secret.DerivePIN()
	defer clear(pin)
	uri, err := hsm.ParseURI(cfg.HSM.URI)
	if err != nil {
		return nil, fmt.Errorf("hsm.uri: %w", err)
	}
	if cfg.HSM.SoftHSM2Conf != "" {
		if err := os.Setenv("SOFTHSM2_CONF", cfg.HSM.SoftHSM2Conf); err != nil {
			return nil, err
		}
	}
	if mode != RestoreDatabase {
		// A fresh token with the derived PIN and the wrapping key.
		if err := hsm.InitToken(uri.ModulePath, uri.Token, soPIN, pin); err != nil {
			return nil, fmt.Errorf("restore: initialise token %q (it must be fresh): %w", uri.Token, err)
		}
		wrapKey := secret.BackupWrappingKey()
		err = hsm.ProvisionWrappingKey(uri.ModulePath, uri.Token, soPIN, pin, backupWrapLabel, wrapKey)
		clear(wrapKey)
		if err != nil {
			return nil, fmt.Errorf("restore: provision the backup wrapping key: %w", err)
		}
	}
	m, err := OpenHSM(ctx, cfg, log, pin)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if mode == RestoreDatabase {
		err = checkKeysOnToken(ctx, st, m, rep)
	} else {
		err = unwrapKeys(ctx, st, m, man, wrapped, rep)
	}
	if err != nil {
		return nil, err
	}
	if mode == RestoreDatabase {
		if raw, err := m.ReadData(ctx, auditHeadLabel); err == nil {
			if cp, err := decodeHead(raw); err == nil {
				rep.TokenHeadBefore = cp.Seq
			}
		}
	}

	// The audit chain continues: a "restore" entry, and a checkpoint over
	// it that the token keeps as its head.
	if err := continueChain(ctx, st, m, rep, man); err != nil {
		return nil, err
	}
	closeStore()
	if err := writeFile(filepath.Join(dir, "appliance.yaml.from-backup"), cfgRaw, 0o600); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	if mode != RestoreToken {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Rename(dbPath+suffix, cfg.Store.Path+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("restore: move the database into place: %w", err)
			}
		}
	}
	log.Info("restore complete", zap.String("mode", string(mode)), zap.String("archive", archive),
		zap.Strings("keys_restored", rep.KeysRestored), zap.Strings("keys_not_in_backup", rep.KeysNotInBackup))
	return rep, nil
}

// adoptShares checks the shares against the database's ceremony (bound to
// its id: the shares may be of a later re-share) and, if they are of
// another ceremony, makes theirs the database's.
func adoptShares(ctx context.Context, st *store.Store, secret *ceremony.Secret, sharesID [8]byte, firstShare string) error {
	cer, err := st.GetCeremony(ctx)
	if err != nil {
		return err
	}
	bound := secret.Rebind([8]byte(cer.ID))
	ok := bound.Verify(cer.Verifier)
	bound.Destroy()
	if !ok {
		return errors.New("restore: the shares do not match the database's ceremony")
	}
	if bytes.Equal(cer.ID, sharesID[:]) {
		return nil
	}
	sh, err := ceremony.ParseShare(firstShare)
	if err != nil {
		return err
	}
	clear(sh.Data)
	next := store.Ceremony{ID: sharesID[:], Threshold: int(sh.Threshold), Total: int(sh.Total), Verifier: secret.Verifier()}
	return st.WriteTx(ctx, func(tx *store.Tx) error {
		return store.ReplaceCeremonyTx(ctx, tx, next, "restore with the shares of a later re-share")
	})
}

// unwrapKeys unwraps every wrapped key of the manifest into the token under
// the CKA_ID the database registers for it.
func unwrapKeys(ctx context.Context, st *store.Store, m *hsm.Module, man *backup.Manifest, wrapped map[string][]byte, rep *RestoreReport) error {
	ckaIDs, err := restoredCKAIDs(ctx, st)
	if err != nil {
		return err
	}
	inArchive := map[string]bool{}
	for _, k := range man.Keys {
		inArchive[k.ID] = k.Wrapped
		if !k.Wrapped {
			continue
		}
		pub, err := hex.DecodeString(k.PublicKey)
		if err != nil {
			return err
		}
		id, ok := ckaIDs[k.ID]
		if !ok {
			return fmt.Errorf("restore: key %s is in the manifest but not in the registry", k.ID)
		}
		if err := m.UnwrapKey(ctx, wrapped[k.WrappedMember], backupWrapLabel, hsm.Algorithm(k.Algorithm), id, k.Label, pub); err != nil {
			return fmt.Errorf("restore: unwrap key %s: %w", k.ID, err)
		}
		rep.KeysRestored = append(rep.KeysRestored, k.ID)
	}
	for id := range ckaIDs {
		if !inArchive[id] {
			rep.KeysNotInBackup = append(rep.KeysNotInBackup, id)
		}
	}
	sort.Strings(rep.KeysNotInBackup)
	return nil
}

// checkKeysOnToken checks every registered key against the (kept) token.
func checkKeysOnToken(ctx context.Context, st *store.Store, m *hsm.Module, rep *RestoreReport) error {
	keys, err := st.ListKeys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		ref := hsm.KeyRef{ID: k.CKAID, Algorithm: hsm.Algorithm(k.Algorithm), WrappedBackup: k.WrappedBackup}
		if err := m.CheckKey(ctx, ref, k.PublicKey); err != nil {
			rep.KeysNotInBackup = append(rep.KeysNotInBackup, k.ID)
			continue
		}
		rep.KeysRestored = append(rep.KeysRestored, k.ID)
	}
	return nil
}

// unpack decrypts the archive into staging and returns its manifest, the
// wrapped keys and the archived configuration, checking every member
// against the manifest.
//
// authKeyFor gives the manifest MAC key for a manifest; the MAC is checked
// before any other member is trusted, and only the manifest's members (with
// their sizes bounded and hashes checked) are accepted.
func unpack(archive string, priv *backup.PrivateKey, staging string, authKeyFor func(*backup.Manifest) ([]byte, error)) (*backup.Manifest, map[string][]byte, []byte, error) {
	f, err := os.Open(archive)
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	r, err := backup.Open(f, priv)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("restore: %s: %w", archive, err)
	}
	var man *backup.Manifest
	var manJSON []byte
	authenticated := false
	expected := map[string]bool{}
	wrapped := map[string][]byte{}
	var cfgRaw []byte
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("restore: %s: %w", archive, err)
		}
		switch {
		case e.Name == backup.ManifestName && man == nil:
			if manJSON, err = readBounded(r, backup.MaxManifestSize); err != nil {
				return nil, nil, nil, err
			}
			if man, err = backup.ParseManifest(bytes.NewReader(manJSON)); err != nil {
				return nil, nil, nil, err
			}
			for _, m := range man.Members() {
				expected[m] = true
			}
			continue
		case man == nil:
			return nil, nil, nil, fmt.Errorf("restore: %s: the manifest is not the first member", archive)
		case e.Name == memberMAC && !authenticated:
			mac, err := readBounded(r, 128)
			if err != nil {
				return nil, nil, nil, err
			}
			key, err := authKeyFor(man)
			if err != nil {
				return nil, nil, nil, err
			}
			ok := hmac.Equal(mac, []byte(manifestMAC(key, manJSON)))
			clear(key)
			if !ok {
				return nil, nil, nil, fmt.Errorf("restore: %s: the manifest's MAC does not verify: not written by this appliance, or not for these shares", archive)
			}
			authenticated = true
			continue
		case !authenticated:
			return nil, nil, nil, fmt.Errorf("restore: %s: the manifest is not authenticated before member %q", archive, e.Name)
		case !expected[e.Name]:
			return nil, nil, nil, fmt.Errorf("restore: %s: member %q is not in the manifest", archive, e.Name)
		}
		delete(expected, e.Name)
		switch {
		case e.Name == man.DatabaseMember:
			if err := extract(r, filepath.Join(staging, memberDB), man.DatabaseSHA256); err != nil {
				return nil, nil, nil, err
			}
		case e.Name == man.ConfigMember:
			if cfgRaw, err = readBounded(r, 16<<20); err != nil {
				return nil, nil, nil, err
			}
			if sum := sha256.Sum256(cfgRaw); hex.EncodeToString(sum[:]) != man.ConfigSHA256 {
				return nil, nil, nil, fmt.Errorf("restore: %s: the configuration differs from the manifest's hash", archive)
			}
		default: // a wrapped key: the HSM authenticates it when unwrapping
			if wrapped[e.Name], err = readBounded(r, 64<<10); err != nil {
				return nil, nil, nil, err
			}
		}
	}
	if man == nil || !authenticated || len(expected) > 0 {
		return nil, nil, nil, fmt.Errorf("restore: %s is incomplete", archive)
	}
	if _, err := os.Stat(filepath.Join(staging, memberDB)); err != nil {
		return nil, nil, nil, fmt.Errorf("restore: %s has no database", archive)
	}
	for _, k := range man.Keys {
		if k.Wrapped && wrapped[k.WrappedMember] == nil {
			return nil, nil, nil, fmt.Errorf("restore: %s lacks the wrapped key %s", archive, k.ID)
		}
	}
	return man, wrapped, cfgRaw, nil
}

// readBounded reads a whole member, failing (rather than truncating) when
// it is larger than limit.
func readBounded(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("restore: a member is larger than %d bytes", limit)
	}
	return b, nil
}

func extract(r io.Reader, path, wantSHA string) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	if err := errors.Join(out.Sync(), out.Close()); err != nil {
		return err
	}
	got, err := fileSHA256(path)
	if err != nil {
		return err
	}
	if got != wantSHA {
		return fmt.Errorf("restore: the database member's SHA-256 %s differs from the manifest's %s", got, wantSHA)
	}
	return nil
}

// restoredCKAIDs maps manifest key ids to their CKA_IDs in the archived registry.
func restoredCKAIDs(ctx context.Context, st *store.Store) (map[string][]byte, error) {
	out := map[string][]byte{}
	keys, err := st.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		out[k.ID] = k.CKAID
	}
	aks, err := st.AuditKeys(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range aks {
		out[auditKeyMemberID(k.KeyID)] = k.HSMID
	}
	return out, nil
}

// continueChain hands the archived chain to the new token: it writes the
// archive's last checkpoint as the token's head, appends the restore entry
// and signs a checkpoint over it with the restored audit key.
func continueChain(ctx context.Context, st *store.Store, m *hsm.Module, rep *RestoreReport, man *backup.Manifest) error {
	k, err := st.ActiveAuditKey(ctx)
	if err != nil {
		return fmt.Errorf("restore: audit key: %w", err)
	}
	ref := auditRef(k)
	if err := m.CheckKey(ctx, ref, k.PublicKey); err != nil {
		return fmt.Errorf("restore: the audit key did not come back: %w", err)
	}
	err = st.RecordAudit(ctx, audit.Record{Kind: "restore", Detail: "restored from an encrypted backup onto a fresh token",
		Fields: map[string]string{"archive": filepath.Base(rep.Archive), "backup_taken_at": rep.BackupTakenAt,
			"archived_head_seq": fmt.Sprint(man.AuditHead.Seq), "archived_head_hash": man.AuditHead.Hash,
			"mode": string(rep.Mode), "token_head_before": fmt.Sprint(rep.TokenHeadBefore),
			"keys_restored": strings.Join(rep.KeysRestored, ","), "keys_not_in_backup": strings.Join(rep.KeysNotInBackup, ",")}})
	if err != nil {
		return err
	}
	seq, h, err := st.AuditHead(ctx)
	if err != nil {
		return err
	}
	cp := audit.Checkpoint{Seq: seq, Hash: h, At: time.Now().UTC().UnixNano(), KeyID: k.KeyID}
	if cp.Signature, err = m.Sign(ctx, ref, cp.Digest()); err != nil {
		return err
	}
	if err := st.AddCheckpoint(ctx, cp); err != nil {
		return err
	}
	raw, err := encodeHead(cp)
	if err != nil {
		return err
	}
	return m.WriteData(ctx, auditHeadLabel, raw)
}
