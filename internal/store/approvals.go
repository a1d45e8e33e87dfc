package store

import (
	"context"
	"fmt"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

// States of a request sent to officers' approval.
const (
	StatePendingApproval = "pending_approval"
	StateRejected        = "rejected"
	StateExpired         = "expired"
)

// Pending is what a request waiting for approvals records.
type Pending struct {
	Digest            []byte // what officers sign: binds the request (see signing)
	ApprovalsRequired int
	ExpiresAt         time.Time
	PolicyVersion     int
}

// PendRequestTx marks r, a request just created in tx (CreateRequest's
// hook), as waiting for approvals, in the database and in r.
func PendRequestTx(ctx context.Context, tx *Tx, r *Request, p Pending) error {
	_, err := tx.ExecContext(ctx, `UPDATE requests SET state = ?, digest = ?, approvals_required = ?, expires_at = ?, policy_version = ?
		WHERE id = ?`, StatePendingApproval, p.Digest, p.ApprovalsRequired, p.ExpiresAt.UnixNano(), p.PolicyVersion, r.ID)
	if err != nil {
		return fmt.Errorf("store: pend request %s: %w", r.ID, err)
	}
	r.State, r.Digest = StatePendingApproval, p.Digest
	return nil
}

// PendingOf reads a request's approval bookkeeping.
func (s *Store) PendingOf(ctx context.Context, id string) (Pending, []Approval, error) {
	var p Pending
	var exp int64
	err := s.r.QueryRowContext(ctx, `SELECT approvals_required, expires_at, policy_version FROM requests WHERE id = ?`, id).
		Scan(&p.ApprovalsRequired, &exp, &p.PolicyVersion)
	if err != nil {
		return p, nil, fmt.Errorf("store: pending %s: %w", id, err)
	}
	if exp > 0 {
		p.ExpiresAt = time.Unix(0, exp).UTC()
	}
	rows, err := s.r.QueryContext(ctx, `SELECT officer, signature, at FROM request_approvals WHERE request_id = ? ORDER BY at, officer`, id)
	if err != nil {
		return p, nil, fmt.Errorf("store: approvals of %s: %w", id, err)
	}
	defer rows.Close()
	var out []Approval
	for rows.Next() {
		var a Approval
		var at int64
		if err := rows.Scan(&a.Officer, &a.Signature, &at); err != nil {
			return p, nil, err
		}
		a.At = time.Unix(0, at).UTC()
		out = append(out, a)
	}
	return p, out, rows.Err()
}

// AddRequestApprovalTx records an officer's approval; a second one by the
// same officer is ErrConflict.
func AddRequestApprovalTx(ctx context.Context, tx *Tx, id string, a Approval) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO request_approvals (request_id, officer, signature, at) VALUES (?, ?, ?, ?)`,
		id, a.Officer, a.Signature, a.At.UnixNano())
	if isUnique(err) {
		return fmt.Errorf("store: %s already approved %s: %w", a.Officer, id, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: approve %s: %w", id, err)
	}
	return nil
}

// MoveRequestTx changes a request's state from one to another inside tx,
// recording a reason for final refusals, and audits the change; ErrConflict
// if it was not in from.
func MoveRequestTx(ctx context.Context, tx *Tx, id, from, to, code, message string) error {
	res, err := tx.ExecContext(ctx, `UPDATE requests SET state = ?, error_code = ?, error_message = ?, updated_at = ? WHERE id = ? AND state = ?`,
		to, code, message, time.Now().UTC().UnixNano(), id, from)
	if err != nil {
		return fmt.Errorf("store: move request %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: request %s is not %s: %w", id, from, ErrConflict)
	}
	f := map[string]string{"request_id": id, "from": from, "state": to}
	if code != "" {
		f["code"] = code
	}
	return appendAudit(ctx, tx, audit.Record{Kind: "request_" + to, Detail: message, Fields: f}, nil)
}

// ListRequests returns requests in a state, newest first.
func (s *Store) ListRequests(ctx context.Context, state string, limit int) ([]Request, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+requestColumns+` FROM requests WHERE state = ? ORDER BY created_at DESC LIMIT ?`, state, limit)
	if err != nil {
		return nil, fmt.Errorf("store: list requests: %w", err)
	}
	defer rows.Close()
	var out []Request
	for rows.Next() {
		r, err := scanRequest(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// AddRequestRejectionTx records an officer's rejection and returns how many
// officers have rejected the request; a second one by the same officer is
// ErrConflict.
func AddRequestRejectionTx(ctx context.Context, tx *Tx, id, officer, reason string) (int, error) {
	_, err := tx.ExecContext(ctx, `INSERT INTO request_rejections (request_id, officer, reason, at) VALUES (?, ?, ?, ?)`,
		id, officer, reason, time.Now().UTC().UnixNano())
	if isUnique(err) {
		return 0, fmt.Errorf("store: %s already rejected %s: %w", officer, id, ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("store: reject %s: %w", id, err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM request_rejections WHERE request_id = ?`, id).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count rejections of %s: %w", id, err)
	}
	return n, nil
}
