package app

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/seal"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

// Labels of the appliance's own objects on the token.
const (
	// auditKeyLabel is the P-256 key that signs audit checkpoints.
	auditKeyLabel = "appliance-audit"
	// auditHeadLabel is a data object holding the last checkpoint, so a
	// database rolled back or truncated behind it is caught at unseal.
	auditHeadLabel = "appliance-audit-head"
)

// auditHMACInfo labels the HKDF that derives the HMAC key for sensitive
// audit fields from the HSM PIN: whoever can unseal can compute it, nobody
// reading the database or an export can.
const auditHMACInfo = "custodysigner/appliance/v1/audit-hmac"

// auditSigner is the audit key as the checkpointer uses it.
type auditSigner struct {
	ref    hsm.KeyRef
	pub    *ecdsa.PublicKey
	pubRaw []byte // 65-byte uncompressed point, as pinned
	id     string
}

// checkpointer signs the chain head every N entries or T seconds while the
// appliance is unsealed, and once more at shutdown.
type checkpointer struct {
	a        *App
	every    int64
	interval time.Duration

	mu      sync.Mutex // one checkpoint at a time
	lastSeq int64
	lastAt  time.Time
}

// prepareAudit runs at every unseal, on the freshly opened module, before
// the appliance can sign: it derives the HMAC key, checks (or creates) the
// audit key, and compares the token's last checkpoint with the database.
// A mismatch refuses the unseal with a report.
func (a *App) prepareAudit(ctx context.Context, m *hsm.Module, pin []byte) (*auditSigner, *audit.Redactor, error) {
	hk, err := hkdf.Key(sha256.New, pin, nil, auditHMACInfo, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("derive audit HMAC key: %w", err)
	}
	red, err := audit.NewRedactor(hk)
	clear(hk)
	if err != nil {
		return nil, nil, err
	}
	// The token's audit head first: a database that is not the token's
	// (younger, or another installation's) is refused before anything is
	// written to the token, such as an audit key for a database that has
	// none.
	if err := a.checkAuditHead(ctx, m); err != nil {
		return nil, nil, err
	}
	signer, err := a.auditKey(ctx, m)
	if err != nil {
		return nil, nil, err
	}
	return signer, red, nil
}

// auditKey returns the registered audit key after checking it on the token,
// or generates and registers one the first time.
func (a *App) auditKey(ctx context.Context, m *hsm.Module) (*auditSigner, error) {
	k, err := a.store.ActiveAuditKey(ctx)
	if errors.Is(err, store.ErrNotFound) {
		gk, err := m.GenerateKeyWith(ctx, hsm.P256, auditKeyLabel, hsm.KeyOptions{WrappedBackup: true})
		if err != nil {
			return nil, fmt.Errorf("generate the audit key: %w", err)
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), gk.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("audit key: %w", err)
		}
		k = store.AuditKey{KeyID: audit.KeyID(pub), HSMID: gk.ID, PublicKey: gk.PublicKey}
		if err := a.store.RegisterAuditKey(ctx, k); err != nil {
			return nil, err
		}
		a.log.Info("audit key generated", zap.String("audit_key_id", k.KeyID))
		return &auditSigner{ref: auditRef(k), pub: pub, pubRaw: k.PublicKey, id: k.KeyID}, nil
	}
	if err != nil {
		return nil, err
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("audit key %s in the database: %w", k.KeyID, err)
	}
	if err := m.CheckKey(ctx, auditRef(k), k.PublicKey); err != nil {
		return nil, &seal.IntegrityError{Report: fmt.Sprintf("the audit key %s does not reconcile with the token: %s", k.KeyID, signing.RefusalText(err))}
	}
	return &auditSigner{ref: auditRef(k), pub: pub, pubRaw: k.PublicKey, id: k.KeyID}, nil
}

func auditRef(k store.AuditKey) hsm.KeyRef {
	return hsm.KeyRef{ID: k.HSMID, Algorithm: hsm.P256, WrappedBackup: true}
}

// checkAuditHead compares the token's copy of the last checkpoint with the
// database: the database must hold that entry with that hash, and every
// entry after it must chain correctly.
func (a *App) checkAuditHead(ctx context.Context, m *hsm.Module) error {
	raw, err := m.ReadData(ctx, auditHeadLabel)
	if errors.Is(err, hsm.ErrDataNotFound) {
		if last, err := a.store.LastCheckpoint(ctx); err == nil {
			return &seal.IntegrityError{Report: fmt.Sprintf(
				"the token holds no audit head, but the database has checkpoints (the last at entry %d): this is not the token this database was used with", last.Seq)}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the audit head from the token: %w", err)
	}
	cp, err := decodeHead(raw)
	if err != nil {
		return &seal.IntegrityError{Report: "the token's audit head does not parse: " + err.Error()}
	}
	keys, err := a.auditPublicKeys(ctx)
	if err != nil {
		return err
	}
	pub := keys[cp.KeyID]
	if pub == nil || !cp.Verify(pub) {
		return &seal.IntegrityError{Report: fmt.Sprintf("the token's audit head (entry %d) is not signed by a registered audit key", cp.Seq)}
	}
	h, err := a.store.AuditEntryHash(ctx, cp.Seq)
	tailFrom, tailPrev := cp.Seq, cp.Hash
	if errors.Is(err, store.ErrNotFound) {
		// The token's head may have been archived: writing checkpoints to
		// the token failed for longer than retention.audit while they went
		// on in the database. Then the database's signed checkpoint of that
		// entry stands in for it, and the tail runs from the first entry
		// held (whose predecessor is archived too).
		var first int64
		if h, first, err = a.store.ArchivedCheckpoint(ctx, cp.Seq); err == nil {
			tailFrom, tailPrev = first-1, nil
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		head, _, _ := a.store.AuditHead(ctx)
		return &seal.IntegrityError{Report: fmt.Sprintf(
			"the audit chain ends at entry %d, but the token's last checkpoint (%s) covers entry %d: the database was rolled back or truncated; restore it with the quorum (docs/RECOVERY.md)",
			head, time.Unix(0, cp.At).UTC().Format(time.RFC3339), cp.Seq)}
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(h, cp.Hash) {
		return &seal.IntegrityError{Report: fmt.Sprintf("audit entry %d differs from the token's last checkpoint: the chain was rewritten", cp.Seq)}
	}
	// The tail after the checkpoint: chained, each hash matching its contents.
	prev, prevSeq := tailPrev, tailFrom
	err = a.store.AuditEntries(ctx, tailFrom, 0, func(e *audit.Entry) error {
		linked := prev == nil || bytes.Equal(e.PrevHash, prev) // nil: the first entry held, after an archive
		if e.Seq != prevSeq+1 || !linked || !bytes.Equal(e.ComputeHash(), e.Hash) {
			return &seal.IntegrityError{Report: fmt.Sprintf("audit entry %d after the last checkpoint is broken (modified, inserted or deleted)", prevSeq+1)}
		}
		prev, prevSeq = e.Hash, e.Seq
		return nil
	})
	return err
}

// auditPublicKeys maps key id to public key for every registered audit key.
func (a *App) auditPublicKeys(ctx context.Context) (map[string]*ecdsa.PublicKey, error) {
	ks, err := a.store.AuditKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*ecdsa.PublicKey, len(ks))
	for _, k := range ks {
		if pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.PublicKey); err == nil {
			out[k.KeyID] = pub
		}
	}
	return out, nil
}

func decodeHead(raw []byte) (audit.Checkpoint, error) {
	var l audit.Line
	if err := json.Unmarshal(raw, &l); err != nil {
		return audit.Checkpoint{}, err
	}
	return l.Checkpoint()
}

func encodeHead(c audit.Checkpoint) ([]byte, error) { return json.Marshal(audit.CheckpointLine(&c)) }

// errSealedNoCheckpoint: checkpoints need the HSM.
var errSealedNoCheckpoint = errors.New("sealed: no checkpoint without the HSM")

// Checkpoint signs the current chain head now, if it moved since the last
// checkpoint. The database row is written first and the token's copy
// second, so the token's head is never ahead of the database.
func (c *checkpointer) Checkpoint(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, signer := c.a.currentAudit()
	if m == nil || signer == nil {
		return errSealedNoCheckpoint
	}
	seq, h, err := c.a.store.AuditHead(ctx)
	if err != nil {
		return err
	}
	if seq == 0 || seq == c.lastSeq {
		return nil
	}
	if last, err := c.a.store.LastCheckpoint(ctx); err == nil && last.Seq == seq {
		c.lastSeq, c.lastAt = seq, time.Now()
		return nil
	}
	cp := audit.Checkpoint{Seq: seq, Hash: h, At: time.Now().UTC().UnixNano(), KeyID: signer.id}
	sig, err := m.Sign(ctx, signer.ref, cp.Digest())
	if err != nil {
		return fmt.Errorf("sign audit checkpoint: %w", err)
	}
	cp.Signature = sig
	if !cp.Verify(signer.pub) {
		return fmt.Errorf("audit checkpoint signature does not verify under audit key %s", signer.id)
	}
	if err := c.a.store.AddCheckpoint(ctx, cp); err != nil {
		return err
	}
	raw, err := encodeHead(cp)
	if err != nil {
		return err
	}
	if err := m.WriteData(ctx, auditHeadLabel, raw); err != nil {
		return fmt.Errorf("write the audit head to the token: %w", err)
	}
	c.lastSeq, c.lastAt = seq, time.Now()
	return nil
}

// run checkpoints until ctx ends: when CheckpointEvery entries have been
// appended, or CheckpointInterval has passed with any new entry.
func (c *checkpointer) run(ctx context.Context) {
	poll := min(c.interval, 250*time.Millisecond)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seq, _, err := c.a.store.AuditHead(ctx)
		if err != nil {
			continue
		}
		c.mu.Lock()
		due := seq > c.lastSeq && (seq-c.lastSeq >= c.every || time.Since(c.lastAt) >= c.interval)
		c.mu.Unlock()
		if !due {
			continue
		}
		if err := c.Checkpoint(ctx); err != nil && !errors.Is(err, errSealedNoCheckpoint) && ctx.Err() == nil {
			c.a.log.Error("audit checkpoint failed", zap.Error(err))
		}
	}
}

// currentAudit returns the open module and the audit key, both nil while sealed.
func (a *App) currentAudit() (*hsm.Module, *auditSigner) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.hsm, a.auditSigner
}

// IntegrityReport is the answer of `appliance check`.
type IntegrityReport struct {
	Database string       `json:"database"`
	Check    string       `json:"check"` // quick_check or integrity_check
	Audit    audit.Report `json:"audit"`
	// AuditKeysFrom says where the audit keys came from: the database
	// itself, so this proves consistency, not authenticity. An auditor
	// verifies with their own copy: appliance audit verify --pubkey.
	AuditKeysFrom string `json:"audit_keys_from"`
}

// CheckIntegrity checks the database on demand (the full integrity_check
// when full) and the audit chain against the audit keys it registers. It
// only reads, and can run beside the appliance.
func CheckIntegrity(ctx context.Context, path string, full bool) (*IntegrityReport, error) {
	f, err := store.OpenAuditFile(ctx, path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rep := &IntegrityReport{Database: path, Check: "quick_check", AuditKeysFrom: "the database (consistency only)"}
	if full {
		rep.Check = "integrity_check"
	}
	// As at start: one sequential read, then the check's random ones hit
	// the page cache.
	if _, err := store.WarmCache(ctx, path, store.CacheBudget()); err != nil {
		return rep, err
	}
	if err := f.Pragma(ctx, rep.Check); err != nil {
		return rep, err
	}
	aks, err := f.AuditKeys(ctx)
	if err != nil {
		return rep, err
	}
	var keys []*ecdsa.PublicKey
	for _, k := range aks {
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.PublicKey)
		if err != nil {
			return rep, fmt.Errorf("audit key %s: %w", k.KeyID, err)
		}
		keys = append(keys, pub)
	}
	rep.Audit, err = f.Verify(ctx, keys, nil)
	return rep, err
}
