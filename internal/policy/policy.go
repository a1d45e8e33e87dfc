// Package policy decides whether a decoded signing intent may be signed for
// a key: allow, deny (with a stable code and the rule that fired), or needs
// M officer approvals. Rules are per key and versioned in SQLite; the state
// they consult (rolling-window usage, rate-limit buckets, the allowlist) lives
// in the same database.
//
// The engine never opens a transaction of its own. Evaluate runs inside the
// caller's store write transaction, the one that also records the request
// and its audit entry. The store has exactly one writer (BEGIN IMMEDIATE on a
// single connection), so evaluations are serialised and the read-check-write
// of a limit cannot interleave with another request's: N concurrent requests
// can never together exceed a limit (DESIGN invariant 3).
package policy

import (
	"context"
	"database/sql"
	"errors"
	"math/big"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Errors callers compare with errors.Is. They mean "something is wrong with
// the input or the database", never "policy said no": a refusal is a
// Decision with Outcome Deny and a nil error.
var (
	// ErrInvalidRules: rules failed validation; nothing was stored.
	ErrInvalidRules = errors.New("invalid policy rules")
	// ErrInvalidRequest: the request or its intent is malformed (a caller
	// bug, e.g. a nil or negative amount); nothing was decided or recorded.
	ErrInvalidRequest = errors.New("invalid policy request")
	// ErrNotFound: no such rules version or allowlist entry.
	ErrNotFound = errors.New("not found")
	// ErrCorrupt: stored policy state could not be read back (bad JSON, a
	// non-decimal amount). The engine fails closed.
	ErrCorrupt = errors.New("stored policy state is corrupt")
)

// Stable refusal codes, the same strings as internal/apierr's codes.
const (
	CodePolicyDenied  = "policy_denied"  // contract, fee cap or other rule
	CodeLimitExceeded = "limit_exceeded" // per-transaction or rolling-window value limit
	CodeAddressDenied = "address_denied" // allowlist mode and the destination is not (yet) on it
	CodeRateLimited   = "rate_limited"   // token bucket empty; see Decision.RetryAfter
)

// Intent kinds, as the chain decoders name them.
const (
	KindTransfer          = "transfer"
	KindERC20Transfer     = "erc20_transfer"
	KindERC20TransferFrom = "erc20_transfer_from"
	KindERC20Approve      = "erc20_approve"
	KindContractCall      = "contract_call"
	KindContractCreation  = "contract_creation"
)

// Chains whose fee caps the engine knows.
const (
	ChainEthereum = "ethereum"
	ChainBitcoin  = "bitcoin"
)

// Transfer is one movement of value: native value, a token amount, or
// (Bitcoin) one non-change output.
type Transfer struct {
	Asset  string   // "ETH", "BTC" or a token contract address
	To     string   // destination address
	Amount *big.Int // base units, >= 0
}

// Intent is what policy sees of a decoded transaction. The integrator fills
// it from the chain decoders.
type Intent struct {
	Chain     string // "ethereum" | "bitcoin"
	Kind      string // one of the Kind constants
	Transfers []Transfer
	// Contract and Selector describe a contract call ("0x" + 8 hex digits).
	Contract string
	Selector string
	// Ethereum fees (a legacy transaction gives its gas price for both).
	MaxFeePerGas, MaxPriorityFeePerGas *big.Int
	// Bitcoin fees.
	FeeRate float64 // sat/vB
	Fee     *big.Int
}

// Request is one evaluation.
type Request struct {
	KeyID     string
	Principal string // the client principal, for per-client rate limits
	RequestID string // recorded with window usage so Release can free it
	Intent    Intent
	Now       time.Time // the decision time; zero means the engine's clock
}

// Outcome is the three-valued result of an evaluation.
type Outcome int

// Outcomes. The zero value is Deny so a forgotten Decision never allows.
const (
	Deny Outcome = iota
	Allow
	NeedsApproval
)

// String returns "allow", "deny" or "needs_approval".
func (o Outcome) String() string {
	switch o {
	case Allow:
		return "allow"
	case NeedsApproval:
		return "needs_approval"
	case Deny:
		return "deny"
	}
	return "unknown"
}

// Decision is what the engine decided and why.
type Decision struct {
	Outcome Outcome
	// Code is one of the Code constants when Outcome is Deny, else "".
	Code string
	// Rule names the rule that fired, e.g. "windows[0] ETH 1h max 50"; for
	// NeedsApproval every rule that asked for approvals, joined by "; ".
	Rule string
	// Message is for people and for the request record; it contains Rule.
	Message string
	// RetryAfter is set with CodeRateLimited: when one token will be there.
	RetryAfter time.Duration
	// Approvals is M when Outcome is NeedsApproval.
	Approvals int
	// Version is the rules version decided under (0: the key has no rules).
	Version int
}

// Queryer is the read side the engine needs: a *store.Tx (= *sql.Tx) or a
// read-only *sql.DB.
type Queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Engine evaluates requests against stored rules. It holds no state of its
// own, so it is safe for concurrent use; every call is serialised by the
// caller's write transaction.
type Engine struct {
	log *zap.Logger
	now func() time.Time

	compiledMu sync.Mutex
	compiled   map[string]compiledRules // key id → its current rules, compiled (see currentCompiled)
}

// Option configures an Engine.
type Option func(*Engine)

// WithClock sets the clock used when a Request has no Now (tests).
func WithClock(now func() time.Time) Option {
	return func(e *Engine) { e.now = now }
}

// New returns an engine that logs refusals to log, which is required.
func New(log *zap.Logger, opts ...Option) (*Engine, error) {
	if log == nil {
		return nil, errors.New("policy: a logger is required")
	}
	e := &Engine{log: log, now: time.Now}
	for _, o := range opts {
		o(e)
	}
	if e.now == nil {
		return nil, errors.New("policy: a clock is required")
	}
	return e, nil
}
