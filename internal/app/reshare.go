package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/store"
)

// ReshareSpec describes a re-share: the new threshold and the officers who
// receive the new shares (already registered officers, with their approval
// keys), and where the share files go.
type ReshareSpec struct {
	Threshold int
	Officers  []string
	OutDir    string
}

// Reshare runs with the appliance stopped, when an officer's share is lost
// or an officer leaves: a quorum's current shares reconstruct the secret,
// which is split again under a new ceremony. The token's PIN is changed to
// the one the new ceremony derives, in the same step as the database's
// ceremony row, so the old shares stop working twice over: the appliance
// refuses them (other ceremony) and the PIN they derive no longer opens
// the token. Backups stay restorable with the new shares (their keys do not
// depend on the ceremony).
func Reshare(ctx context.Context, cfg *config.Config, log *zap.Logger, shareFiles []string, spec ReshareSpec) error {
	lk, err := lockOffline(cfg.Store.Path, "reshare")
	if err != nil {
		return err
	}
	defer lk.release()
	st, err := store.OpenExisting(ctx, cfg.Store.Path, log.Named("store"))
	if errors.Is(err, ErrNoDatabase) {
		return noDatabase(err)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	cur, err := st.GetCeremony(ctx)
	if err != nil {
		return err
	}
	if spec.Threshold < 2 || len(spec.Officers) < spec.Threshold {
		return fmt.Errorf("reshare: %d officers cannot meet a threshold of %d (at least 2)", len(spec.Officers), spec.Threshold)
	}
	for _, o := range spec.Officers {
		if _, err := st.OfficerKey(ctx, o); err != nil {
			return fmt.Errorf("reshare: %s is not a registered officer (add_officer first): %w", o, err)
		}
	}
	for _, o := range spec.Officers {
		f := filepath.Join(spec.OutDir, "shares", OfficerFileName(o)+".share")
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("reshare: %s exists; give an empty --out directory", f)
		}
	}
	var id [8]byte
	copy(id[:], cur.ID)
	p := ceremony.NewProgress(id, cur.Threshold, cur.Verifier, time.Minute, time.Now)
	var secret *ceremony.Secret
	for _, f := range shareFiles {
		raw, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		s, _, err := p.Add(strings.TrimSpace(string(raw)))
		clear(raw)
		if err != nil {
			return fmt.Errorf("share file %s: %w", f, err)
		}
		if s != nil {
			secret = s
			break
		}
	}
	if secret == nil {
		return fmt.Errorf("reshare: %d share file(s) given, %d needed", len(shareFiles), cur.Threshold)
	}
	defer secret.Destroy()
	next, err := ceremony.Reshare(secret, spec.Threshold, len(spec.Officers))
	if err != nil {
		return err
	}
	defer next.Secret.Destroy()
	oldPIN, newPIN := secret.DerivePIN(), next.Secret.DerivePIN()
	defer clear(oldPIN)
	defer clear(newPIN)

	m, err := OpenHSM(ctx, cfg, log, oldPIN)
	if err != nil {
		return err
	}
	defer m.Close()
	// The shares are written before anything changes: if the commit below
	// fails they are useless, never the only copy of a working secret.
	if err := writeShares(CeremonySpec{Officers: spec.Officers, OutDir: spec.OutDir}, next); err != nil {
		return err
	}
	pinChanged := false
	err = st.WriteTx(ctx, func(tx *store.Tx) error {
		if err := store.ReplaceCeremonyTx(ctx, tx, store.Ceremony{ID: next.ID[:], Threshold: next.Threshold, Total: next.Total, Verifier: next.Verifier},
			fmt.Sprintf("re-shared %d of %d to %s", next.Threshold, next.Total, strings.Join(spec.Officers, ", "))); err != nil {
			return err
		}
		if err := registerBackupRecipient(ctx, tx, next.Secret); err != nil {
			return err
		}
		// Last step inside the transaction: if the PIN change fails, the
		// database keeps the old ceremony.
		if err := m.SetPIN(ctx, oldPIN, newPIN); err != nil {
			return fmt.Errorf("change the token's PIN: %w", err)
		}
		pinChanged = true
		return nil
	})
	if err != nil && pinChanged {
		// The token has the new PIN but the database kept the old ceremony:
		// put the old PIN back so the old shares keep working.
		if rerr := m.SetPIN(ctx, newPIN, oldPIN); rerr != nil {
			return errors.Join(err, fmt.Errorf("CRITICAL: the token's PIN was changed but not recorded, and could not be changed back: %w", rerr))
		}
	}
	if err != nil {
		return err
	}
	log.Info("re-share complete: the old shares no longer unseal", zap.Int("threshold", next.Threshold), zap.Int("officers", next.Total),
		zap.String("shares", filepath.Join(spec.OutDir, "shares")))
	return nil
}
