package store

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

// Ceremony is the stored part of an unseal ceremony.
type Ceremony struct {
	ID        []byte
	Threshold int
	Total     int
	Verifier  []byte
	CreatedAt time.Time
}

// Officer is a security officer with an Ed25519 approval public key.
type Officer struct {
	Name        string
	ApprovalKey []byte
	AddedAt     time.Time
}

// SaveCeremony records the ceremony and its officers in one transaction.
// There is one ceremony per appliance: a second is ErrConflict.
func (s *Store) SaveCeremony(ctx context.Context, c Ceremony, officers []Officer) error {
	now := time.Now().UTC().UnixNano()
	return s.WriteTx(ctx, func(tx *Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO ceremony (id, ceremony_id, threshold, total, verifier, created_at) VALUES (1, ?, ?, ?, ?, ?)`,
			c.ID, c.Threshold, c.Total, c.Verifier, now)
		if isUnique(err) {
			return fmt.Errorf("store: a ceremony is already recorded: %w", ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("store: save ceremony: %w", err)
		}
		for _, o := range officers {
			if err := insertOfficer(ctx, tx, o, now); err != nil {
				return err
			}
		}
		return AppendEvent(ctx, tx, "ceremony", "", fmt.Sprintf("threshold %d of %d officers", c.Threshold, c.Total))
	})
}

// ReplaceCeremonyTx records a re-share inside tx: the ceremony row gets the
// new id, threshold, total and verifier, audited with the old and new ids.
func ReplaceCeremonyTx(ctx context.Context, tx *Tx, c Ceremony, why string) error {
	var old []byte
	if err := tx.QueryRowContext(ctx, `SELECT ceremony_id FROM ceremony WHERE id = 1`).Scan(&old); err != nil {
		return fmt.Errorf("store: read ceremony: %w", err)
	}
	_, err := tx.ExecContext(ctx, `UPDATE ceremony SET ceremony_id = ?, threshold = ?, total = ?, verifier = ?, created_at = ? WHERE id = 1`,
		c.ID, c.Threshold, c.Total, c.Verifier, time.Now().UTC().UnixNano())
	if err != nil {
		return fmt.Errorf("store: replace ceremony: %w", err)
	}
	return appendAudit(ctx, tx, audit.Record{Kind: "reshare", Detail: why,
		Fields: map[string]string{"old_ceremony": fmt.Sprintf("%x", old), "new_ceremony": fmt.Sprintf("%x", c.ID),
			"threshold": fmt.Sprint(c.Threshold), "total": fmt.Sprint(c.Total)}}, nil)
}

func insertOfficer(ctx context.Context, tx *Tx, o Officer, now int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO officers (name, approval_key, added_at) VALUES (?, ?, ?)`, o.Name, o.ApprovalKey, now)
	if isUnique(err) {
		return fmt.Errorf("store: officer %q exists: %w", o.Name, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: add officer: %w", err)
	}
	return nil
}

// AddOfficer registers an officer inside tx.
func AddOfficer(ctx context.Context, tx *Tx, o Officer) error {
	return insertOfficer(ctx, tx, o, time.Now().UTC().UnixNano())
}

// RemoveOfficer deletes an officer inside tx.
func RemoveOfficer(ctx context.Context, tx *Tx, name string) error {
	res, err := tx.ExecContext(ctx, `DELETE FROM officers WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("store: remove officer: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: officer %q: %w", name, ErrNotFound)
	}
	return nil
}

// GetCeremony returns the ceremony, or ErrNotFound before init.
func (s *Store) GetCeremony(ctx context.Context) (Ceremony, error) {
	var c Ceremony
	var at int64
	err := s.r.QueryRowContext(ctx, `SELECT ceremony_id, threshold, total, verifier, created_at FROM ceremony WHERE id = 1`).
		Scan(&c.ID, &c.Threshold, &c.Total, &c.Verifier, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("store: no ceremony: %w", ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("store: read ceremony: %w", err)
	}
	c.CreatedAt = time.Unix(0, at).UTC()
	return c, nil
}

// ListOfficers returns every officer by name.
func (s *Store) ListOfficers(ctx context.Context) ([]Officer, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, approval_key, added_at FROM officers ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("store: list officers: %w", err)
	}
	defer rows.Close()
	var out []Officer
	for rows.Next() {
		var o Officer
		var at int64
		if err := rows.Scan(&o.Name, &o.ApprovalKey, &at); err != nil {
			return nil, err
		}
		o.AddedAt = time.Unix(0, at).UTC()
		out = append(out, o)
	}
	return out, rows.Err()
}

// FreezeState is the persisted freeze flag.
type FreezeState struct {
	Frozen bool
	Reason string
	By     string
	At     time.Time
}

// GetFreeze reads the freeze state.
func (s *Store) GetFreeze(ctx context.Context) (FreezeState, error) {
	var f FreezeState
	var frozen int
	var at int64
	err := s.r.QueryRowContext(ctx, `SELECT frozen, frozen_reason, frozen_by, frozen_at FROM appliance_state WHERE id = 1`).
		Scan(&frozen, &f.Reason, &f.By, &at)
	if err != nil {
		return f, fmt.Errorf("store: read freeze state: %w", err)
	}
	f.Frozen = frozen == 1
	if at > 0 {
		f.At = time.Unix(0, at).UTC()
	}
	return f, nil
}

// SetFreeze persists the freeze state inside tx.
func SetFreeze(ctx context.Context, tx *Tx, f FreezeState) error {
	frozen := 0
	if f.Frozen {
		frozen = 1
	}
	_, err := tx.ExecContext(ctx, `UPDATE appliance_state SET frozen = ?, frozen_reason = ?, frozen_by = ?, frozen_at = ? WHERE id = 1`,
		frozen, f.Reason, f.By, time.Now().UTC().UnixNano())
	if err != nil {
		return fmt.Errorf("store: set freeze state: %w", err)
	}
	return nil
}

// PrincipalRecord is a principal managed by quorum.
type PrincipalRecord struct {
	Name    string
	Roles   []string
	Keys    []string
	Removed bool
}

// PutPrincipal adds or replaces a principal inside tx.
func PutPrincipal(ctx context.Context, tx *Tx, p PrincipalRecord) error {
	roles, _ := json.Marshal(nonNilStrings(p.Roles))
	keys, _ := json.Marshal(nonNilStrings(p.Keys))
	removed := 0
	if p.Removed {
		removed = 1
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO principals (name, roles, keys, removed, updated_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET roles = excluded.roles, keys = excluded.keys, removed = excluded.removed, updated_at = excluded.updated_at`,
		p.Name, string(roles), string(keys), removed, time.Now().UTC().UnixNano())
	if err != nil {
		return fmt.Errorf("store: put principal: %w", err)
	}
	return nil
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// ListPrincipals returns every quorum-managed principal, removed ones included.
func (s *Store) ListPrincipals(ctx context.Context) ([]PrincipalRecord, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, roles, keys, removed FROM principals ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("store: list principals: %w", err)
	}
	defer rows.Close()
	var out []PrincipalRecord
	for rows.Next() {
		var p PrincipalRecord
		var roles, keys string
		var removed int
		if err := rows.Scan(&p.Name, &roles, &keys, &removed); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(roles), &p.Roles); err != nil {
			return nil, fmt.Errorf("store: principal %q roles: %w", p.Name, err)
		}
		if err := json.Unmarshal([]byte(keys), &p.Keys); err != nil {
			return nil, fmt.Errorf("store: principal %q keys: %w", p.Name, err)
		}
		p.Removed = removed == 1
		out = append(out, p)
	}
	return out, rows.Err()
}

// Event is one recorded step.
type Event struct {
	Seq       int64     `json:"seq"`
	At        time.Time `json:"at"`
	Kind      string    `json:"kind"`
	Principal string    `json:"principal,omitempty"`
	Detail    string    `json:"detail,omitempty"`
}

// ListEvents returns events after seq, oldest first, at most limit.
func (s *Store) ListEvents(ctx context.Context, after int64, limit int) ([]Event, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT seq, at, kind, principal, detail FROM events WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("store: list events: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var at int64
		if err := rows.Scan(&e.Seq, &at, &e.Kind, &e.Principal, &e.Detail); err != nil {
			return nil, err
		}
		e.At = time.Unix(0, at).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// OfficerKey returns an officer's Ed25519 approval public key, or ErrNotFound.
func (s *Store) OfficerKey(ctx context.Context, name string) (ed25519.PublicKey, error) {
	var key []byte
	err := s.r.QueryRowContext(ctx, `SELECT approval_key FROM officers WHERE name = ?`, name).Scan(&key)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && len(key) != ed25519.PublicKeySize) {
		return nil, fmt.Errorf("store: officer %q has no approval key: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: officer key: %w", err)
	}
	return ed25519.PublicKey(key), nil
}
