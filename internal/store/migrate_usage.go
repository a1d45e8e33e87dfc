package store

import (
	"context"
	"fmt"
	"math/big"
	"strings"
)

// usageBatch is how many rows one INSERT of sumPolicyUsage copies (6
// parameters each, well under SQLite's limit of 32,766).
const usageBatch = 256

// sumPolicyUsage is migration 9's Go step (0009_policy_usage_sums.sql): it
// copies the schema-8 usage rows into the rebuilt policy_usage with their
// running totals, which SQL cannot add (amounts exceed 64 bits), and drops
// the old table. Per (key_id, asset) the rows are copied in (at, rowid)
// order, so seq order is at order and the running totals follow it; a clock
// that stepped back under the old code left rows whose rowid order is not
// at order, and sorting puts them where the windows read them. The window
// sums are the same before and after (TestMigrationFromEverySchema). An
// amount that is not a decimal fails the migration, which leaves the
// database at schema 8 (and its pre-upgrade copy beside it).
func sumPolicyUsage(ctx context.Context, tx *Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT rowid, request_id, key_id, asset, amount, at FROM policy_usage_v8
		ORDER BY key_id, asset, at, rowid`)
	if err != nil {
		return fmt.Errorf("read policy usage: %w", err)
	}
	defer rows.Close()
	// Rows are inserted usageBatch at a time: one statement per row would
	// make a large table's upgrade several times slower.
	insert := func(n int) string {
		return `INSERT INTO policy_usage (request_id, key_id, asset, amount, at, cum) VALUES ` +
			strings.Repeat(", (?, ?, ?, ?, ?, ?)", n)[2:]
	}
	ins, err := tx.PrepareContext(ctx, insert(usageBatch))
	if err != nil {
		return fmt.Errorf("prepare policy usage copy: %w", err)
	}
	defer ins.Close()
	args := make([]any, 0, 6*usageBatch)
	flush := func() error {
		var err error
		switch n := len(args) / 6; n {
		case 0:
			return nil
		case usageBatch:
			_, err = ins.ExecContext(ctx, args...)
		default:
			_, err = tx.ExecContext(ctx, insert(n), args...)
		}
		args = args[:0]
		if err != nil {
			return fmt.Errorf("copy policy usage: %w", err)
		}
		return nil
	}
	var (
		curKey, curAsset string
		started          bool
		cum, v           = new(big.Int), new(big.Int)
	)
	for rows.Next() {
		var (
			rowid                           int64
			requestID, keyID, asset, amount string
			at                              int64
		)
		if err := rows.Scan(&rowid, &requestID, &keyID, &asset, &amount, &at); err != nil {
			return fmt.Errorf("read policy usage: %w", err)
		}
		if !started || keyID != curKey || asset != curAsset {
			started, curKey, curAsset = true, keyID, asset
			cum.SetInt64(0)
		}
		if _, ok := v.SetString(amount, 10); !ok || amount == "" || strings.TrimLeft(amount, "0123456789") != "" {
			return fmt.Errorf("policy usage row %d (%q %s): amount %q is not a decimal", rowid, keyID, asset, amount)
		}
		cum.Add(cum, v)
		args = append(args, requestID, keyID, asset, amount, at, cum.String())
		if len(args) == 6*usageBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read policy usage: %w", err)
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("read policy usage: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DROP TABLE policy_usage_v8`); err != nil {
		return fmt.Errorf("drop the schema-8 policy usage table: %w", err)
	}
	return nil
}
