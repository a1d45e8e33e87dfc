package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// finalStates are the states a request never leaves. A failed request can
// be retried under its idempotency key (RestartRequest), but only while it
// is kept: once pruned, the same key makes a new request.
var finalStates = []string{StateSigned, StateFailed, StateDenied, StateRejected, StateExpired}

// Finished requests older than the cutoff, through requests_state_created:
// one range per state, oldest first within it (a request is updated after
// it is created, so created_at < cutoff holds for every match). No ORDER
// BY: sorting across the states would read every match for each batch.
const qOldFinished = `SELECT id FROM requests
	WHERE state IN (?2, ?3, ?4, ?5, ?6) AND created_at < ?1 AND updated_at < ?1
	LIMIT ?7`

// PruneRequestsTx deletes at most limit requests that reached a final state
// before cutoff, with their officers' approvals and rejections, inside tx,
// and returns how many it deleted. Their
// audit entries stay: the chain is the record of what was signed; the
// request rows hold the payloads, answers and idempotency keys.
func PruneRequestsTx(ctx context.Context, tx *Tx, cutoff time.Time, limit int) (int64, error) {
	if limit < 1 {
		return 0, fmt.Errorf("store: prune requests: limit %d: %w", limit, ErrInvalid)
	}
	args := []any{cutoff.UTC().UnixNano()}
	for _, s := range finalStates {
		args = append(args, s)
	}
	rows, err := tx.QueryContext(ctx, qOldFinished, append(args, limit)...)
	if err != nil {
		return 0, fmt.Errorf("store: prune requests: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("store: prune requests: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("store: prune requests: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	set, err := json.Marshal(ids)
	if err != nil {
		return 0, err
	}
	// Children first: request_approvals and request_rejections reference
	// requests(id), and foreign keys are enforced.
	for _, q := range []string{
		`DELETE FROM request_approvals WHERE request_id IN (SELECT value FROM json_each(?))`,
		`DELETE FROM request_rejections WHERE request_id IN (SELECT value FROM json_each(?))`,
	} {
		if _, err := tx.ExecContext(ctx, q, string(set)); err != nil {
			return 0, fmt.Errorf("store: prune requests: %w", err)
		}
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM requests WHERE id IN (SELECT value FROM json_each(?))`, string(set))
	if err != nil {
		return 0, fmt.Errorf("store: prune requests: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("store: prune requests: %w", err)
	}
	return n, nil
}
