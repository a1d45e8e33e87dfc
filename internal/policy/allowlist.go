package policy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

// AllowlistEntry is one destination a key may pay in allowlist mode.
type AllowlistEntry struct {
	Address     string // canonical form
	EffectiveAt time.Time
	AddedBy     string
	AddedAt     time.Time
}

// AddAllowlist records address for keyID, usable from effectiveAt (compute it
// with Rules.AllowlistEffectiveAt). Adding an address already listed keeps
// the earlier of the two effective times: a quorum can shorten a pending time
// lock, and a later ordinary addition can never push an entry out.
func AddAllowlist(ctx context.Context, tx *store.Tx, keyID, address string, effectiveAt time.Time, by string) error {
	addr := canonAddress(address)
	if keyID == "" || addr == "" || by == "" || effectiveAt.IsZero() {
		return fmt.Errorf("policy: allowlist addition needs a key, an address, an author and a time: %w", ErrInvalidRequest)
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO policy_allowlist (key_id, address, effective_at, added_by, added_at)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (key_id, address) DO UPDATE SET
			effective_at = MIN(effective_at, excluded.effective_at),
			added_by = CASE WHEN excluded.effective_at < effective_at THEN excluded.added_by ELSE added_by END`,
		keyID, addr, effectiveAt.UTC().UnixNano(), by, time.Now().UTC().UnixNano())
	if err != nil {
		return fmt.Errorf("policy: allowlist %s for %q: %w", addr, keyID, err)
	}
	return nil
}

// RemoveAllowlist deletes address from keyID's allowlist at once (a removal
// only ever narrows what may be signed, so it has no time lock). An address
// not listed is an error wrapping ErrNotFound.
func RemoveAllowlist(ctx context.Context, tx *store.Tx, keyID, address string) error {
	addr := canonAddress(address)
	res, err := tx.ExecContext(ctx, `DELETE FROM policy_allowlist WHERE key_id = ? AND address = ?`, keyID, addr)
	if err != nil {
		return fmt.Errorf("policy: remove %s from %q's allowlist: %w", addr, keyID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("policy: remove %s from %q's allowlist: %w", addr, keyID, err)
	}
	if n == 0 {
		return fmt.Errorf("policy: %s is not on %q's allowlist: %w", addr, keyID, ErrNotFound)
	}
	return nil
}

// ListAllowlist returns keyID's entries, pending ones included, by address.
func ListAllowlist(ctx context.Context, q Queryer, keyID string) ([]AllowlistEntry, error) {
	rows, err := q.QueryContext(ctx, `SELECT address, effective_at, added_by, added_at FROM policy_allowlist
		WHERE key_id = ? ORDER BY address`, keyID)
	if err != nil {
		return nil, fmt.Errorf("policy: list %q's allowlist: %w", keyID, err)
	}
	defer rows.Close()
	var out []AllowlistEntry
	for rows.Next() {
		var e AllowlistEntry
		var eff, added int64
		if err := rows.Scan(&e.Address, &eff, &e.AddedBy, &added); err != nil {
			return nil, fmt.Errorf("policy: list %q's allowlist: %w", keyID, err)
		}
		e.EffectiveAt, e.AddedAt = time.Unix(0, eff).UTC(), time.Unix(0, added).UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("policy: list %q's allowlist: %w", keyID, err)
	}
	return out, nil
}

// allowlisted reports whether addr (canonical) is on keyID's allowlist and
// effective at now.
func allowlisted(ctx context.Context, q Queryer, keyID, addr string, now time.Time) (bool, error) {
	var eff int64
	err := q.QueryRowContext(ctx, `SELECT effective_at FROM policy_allowlist WHERE key_id = ? AND address = ?`,
		keyID, addr).Scan(&eff)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("policy: allowlist lookup %s for %q: %w", addr, keyID, err)
	}
	return eff <= now.UTC().UnixNano(), nil
}
