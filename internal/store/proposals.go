package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Proposal states.
const (
	ProposalPending  = "pending"
	ProposalExecuted = "executed"
	ProposalFailed   = "failed"
	ProposalExpired  = "expired"
)

// Proposal is a governance action waiting for, or decided by, the quorum.
type Proposal struct {
	ID        string
	Kind      string
	Params    []byte // canonical JSON
	Digest    []byte
	Proposer  string
	State     string
	Threshold int
	CreatedAt time.Time
	ExpiresAt time.Time
	DecidedAt time.Time
	Result    string
	Approvals []Approval
}

// Approval is one officer's signature over a proposal's digest.
type Approval struct {
	Officer   string
	Signature []byte
	At        time.Time
}

// InsertProposal records a new pending proposal inside tx.
func InsertProposal(ctx context.Context, tx *Tx, p Proposal) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO proposals (id, kind, params, digest, proposer, state, threshold, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		p.ID, p.Kind, p.Params, p.Digest, p.Proposer, ProposalPending, p.Threshold, p.CreatedAt.UnixNano(), p.ExpiresAt.UnixNano())
	if isUnique(err) {
		return fmt.Errorf("store: proposal %s exists: %w", p.ID, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: insert proposal: %w", err)
	}
	return nil
}

// AddApproval records an approval inside tx; an officer's second approval
// of the same proposal is ErrConflict.
func AddApproval(ctx context.Context, tx *Tx, proposalID string, a Approval) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO proposal_approvals (proposal_id, officer, signature, at) VALUES (?, ?, ?, ?)`,
		proposalID, a.Officer, a.Signature, a.At.UnixNano())
	if isUnique(err) {
		return fmt.Errorf("store: %s already approved %s: %w", a.Officer, proposalID, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: add approval: %w", err)
	}
	return nil
}

// DecideProposal moves a pending proposal to its final state inside tx.
func DecideProposal(ctx context.Context, tx *Tx, id, state, result string) error {
	res, err := tx.ExecContext(ctx, `UPDATE proposals SET state = ?, result = ?, decided_at = ? WHERE id = ? AND state = ?`,
		state, result, time.Now().UTC().UnixNano(), id, ProposalPending)
	if err != nil {
		return fmt.Errorf("store: decide proposal: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: proposal %s is not pending: %w", id, ErrConflict)
	}
	return nil
}

type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// GetProposal reads a proposal with its approvals (through tx when inside one).
func (s *Store) GetProposal(ctx context.Context, id string) (Proposal, error) {
	return getProposal(ctx, s.r, id)
}

// GetProposalTx is GetProposal inside a write transaction.
func GetProposalTx(ctx context.Context, tx *Tx, id string) (Proposal, error) {
	return getProposal(ctx, tx, id)
}

func getProposal(ctx context.Context, q queryRower, id string) (Proposal, error) {
	var p Proposal
	var created, expires, decided int64
	err := q.QueryRowContext(ctx, `SELECT id, kind, params, digest, proposer, state, threshold, created_at, expires_at, decided_at, result
		FROM proposals WHERE id = ?`, id).
		Scan(&p.ID, &p.Kind, &p.Params, &p.Digest, &p.Proposer, &p.State, &p.Threshold, &created, &expires, &decided, &p.Result)
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("store: proposal %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return p, fmt.Errorf("store: read proposal: %w", err)
	}
	p.CreatedAt, p.ExpiresAt = time.Unix(0, created).UTC(), time.Unix(0, expires).UTC()
	if decided > 0 {
		p.DecidedAt = time.Unix(0, decided).UTC()
	}
	rows, err := q.QueryContext(ctx, `SELECT officer, signature, at FROM proposal_approvals WHERE proposal_id = ? ORDER BY at, officer`, id)
	if err != nil {
		return p, fmt.Errorf("store: read approvals: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var a Approval
		var at int64
		if err := rows.Scan(&a.Officer, &a.Signature, &at); err != nil {
			return p, err
		}
		a.At = time.Unix(0, at).UTC()
		p.Approvals = append(p.Approvals, a)
	}
	return p, rows.Err()
}

// ListProposals returns proposals in a state ("" for all), newest first.
func (s *Store) ListProposals(ctx context.Context, state string, limit int) ([]Proposal, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id FROM proposals WHERE (? = '' OR state = ?) ORDER BY created_at DESC LIMIT ?`, state, state, limit)
	if err != nil {
		return nil, fmt.Errorf("store: list proposals: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	out := make([]Proposal, 0, len(ids))
	for _, id := range ids {
		p, err := s.GetProposal(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
