package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

// Key is a registry entry for a key held in the HSM. The pinned PublicKey is
// what every signature is verified against and what the token's key is
// compared with at start, so a swapped token object is detected.
type Key struct {
	ID        string // registry id, e.g. "eth-dev" (unique)
	Label     string // CKA_LABEL
	CKAID     []byte // CKA_ID on the token (unique)
	Algorithm string // "secp256k1" | "p256" | "ed25519"
	Chain     string // "ethereum" | "bitcoin" | ""
	Network   string // e.g. "1337" (Ethereum chain id, decimal) or "regtest"
	PublicKey []byte // pinned public key
	Address   string // canonical address, may be ""
	CreatedAt time.Time
	// WrappedBackup: the private key is extractable only wrapped under the
	// token's trusted backup key (CKA_WRAP_WITH_TRUSTED), so it can be
	// backed up and restored onto a fresh token; never in the clear.
	WrappedBackup bool
}

// Algorithms the registry accepts.
const (
	AlgSecp256k1 = "secp256k1"
	AlgP256      = "p256"
	AlgEd25519   = "ed25519"
)

const keyColumns = `id, label, cka_id, algorithm, chain, network, public_key, address, created_at, wrapped_backup`

// InsertKey registers k. A duplicate id or CKA_ID is an error wrapping
// ErrConflict; a missing id, CKA_ID or public key, or an unknown algorithm,
// wraps ErrInvalid. A zero CreatedAt is set to now.
func (s *Store) InsertKey(ctx context.Context, k Key) error {
	return s.WriteTx(ctx, func(tx *Tx) error { return InsertKeyTx(ctx, tx, k) })
}

// InsertKeyTx registers a key inside tx (a quorum's create_key).
func InsertKeyTx(ctx context.Context, tx *Tx, k Key) error {
	if err := validKey(k); err != nil {
		return err
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now()
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO keys (`+keyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Label, k.CKAID, k.Algorithm, k.Chain, k.Network, k.PublicKey, k.Address, k.CreatedAt.UTC().UnixNano(), k.WrappedBackup)
	if isUnique(err) {
		return fmt.Errorf("store: key %q: id or CKA_ID already registered: %w", k.ID, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: insert key %q: %w", k.ID, err)
	}
	return appendAudit(ctx, tx, audit.Record{Kind: "key_registered", Detail: "key " + k.ID + " generated in the HSM and registered",
		Fields: map[string]string{"key_id": k.ID, "label": k.Label, "algorithm": k.Algorithm, "chain": k.Chain, "network": k.Network,
			"public_key": fmt.Sprintf("%x", k.PublicKey), "address": k.Address, "wrapped_backup": fmt.Sprint(k.WrappedBackup)}}, nil)
}

func validKey(k Key) error {
	switch {
	case k.ID == "":
		return fmt.Errorf("store: key without id: %w", ErrInvalid)
	case len(k.CKAID) == 0:
		return fmt.Errorf("store: key %q without CKA_ID: %w", k.ID, ErrInvalid)
	case len(k.PublicKey) == 0:
		return fmt.Errorf("store: key %q without public key: %w", k.ID, ErrInvalid)
	}
	switch k.Algorithm {
	case AlgSecp256k1, AlgP256, AlgEd25519:
		return nil
	}
	return fmt.Errorf("store: key %q: unknown algorithm %q: %w", k.ID, k.Algorithm, ErrInvalid)
}

// GetKey returns the key registered as id, or an error wrapping ErrNotFound.
func (s *Store) GetKey(ctx context.Context, id string) (Key, error) {
	k, err := scanKey(s.r.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, fmt.Errorf("store: key %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Key{}, fmt.Errorf("store: get key %q: %w", id, err)
	}
	return k, nil
}

// ListKeys returns every registered key, oldest first (ties by id).
func (s *Store) ListKeys(ctx context.Context) ([]Key, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("store: list keys: %w", err)
	}
	defer rows.Close()
	var keys []Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list keys: %w", err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list keys: %w", err)
	}
	return keys, nil
}

type scanner interface{ Scan(dest ...any) error }

func scanKey(sc scanner) (Key, error) {
	var k Key
	var created int64
	err := sc.Scan(&k.ID, &k.Label, &k.CKAID, &k.Algorithm, &k.Chain, &k.Network, &k.PublicKey, &k.Address, &created, &k.WrappedBackup)
	k.CreatedAt = time.Unix(0, created).UTC()
	return k, err
}
