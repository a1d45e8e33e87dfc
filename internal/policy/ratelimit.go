package policy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

// Bucket scopes in policy_buckets.
const (
	scopeClient = "client" // per (key, principal)
	scopeKey    = "key"    // per key; principal is ""
)

// bucket is a token bucket as it stands at the decision time.
type bucket struct {
	scope, keyID, principal string
	rate                    Rate
	tokens                  float64 // refilled up to now, capped at Burst
	updatedAt               int64   // unix nanoseconds to store after taking a token
	rule                    string
}

// loadBucket reads a bucket and refills it to now. A bucket never seen is
// full. The refill is computed, not stored, so a refusal writes nothing.
// A clock that went backwards refills nothing and does not move updated_at
// back, so it cannot be used to earn tokens twice.
func loadBucket(ctx context.Context, q Queryer, scope, keyID, principal string, r Rate, now time.Time, rule string) (bucket, error) {
	b := bucket{scope: scope, keyID: keyID, principal: principal, rate: r, rule: rule,
		tokens: float64(r.Burst), updatedAt: now.UTC().UnixNano()}
	var tokens float64
	var at int64
	err := q.QueryRowContext(ctx, `SELECT tokens, updated_at FROM policy_buckets
		WHERE scope = ? AND key_id = ? AND principal = ?`, scope, keyID, principal).Scan(&tokens, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return b, nil
	}
	if err != nil {
		return bucket{}, fmt.Errorf("policy: read %s rate bucket for %q: %w", scope, keyID, err)
	}
	if math.IsNaN(tokens) || math.IsInf(tokens, 0) {
		return bucket{}, fmt.Errorf("policy: %s rate bucket for %q holds %v: %w", scope, keyID, tokens, ErrCorrupt)
	}
	elapsed := float64(b.updatedAt-at) / float64(time.Second)
	if elapsed < 0 {
		elapsed, b.updatedAt = 0, at
	}
	b.tokens = math.Min(float64(r.Burst), math.Max(tokens, 0)+elapsed*r.PerSecond)
	return b, nil
}

// wait is how long until the bucket holds one whole token (0 if it does).
func (b bucket) wait() time.Duration {
	if b.tokens >= 1 {
		return 0
	}
	secs := math.Min((1-b.tokens)/b.rate.PerSecond, maxWindow.Seconds())
	d := time.Duration(math.Ceil(secs * float64(time.Second)))
	return max(d, time.Millisecond)
}

// take stores the bucket less one token.
func (b bucket) take(ctx context.Context, tx *store.Tx) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO policy_buckets (scope, key_id, principal, tokens, updated_at)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (scope, key_id, principal) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at`,
		b.scope, b.keyID, b.principal, b.tokens-1, b.updatedAt)
	if err != nil {
		return fmt.Errorf("policy: update %s rate bucket for %q: %w", b.scope, b.keyID, err)
	}
	return nil
}

// rateBuckets loads the buckets the rules configure, client first.
func rateBuckets(ctx context.Context, q Queryer, c *compiled, req Request, now time.Time) ([]bucket, error) {
	var bs []bucket
	if c.ratePerClient != nil {
		b, err := loadBucket(ctx, q, scopeClient, req.KeyID, req.Principal, *c.ratePerClient, now,
			fmt.Sprintf("rate_per_client %g/s burst %d", c.ratePerClient.PerSecond, c.ratePerClient.Burst))
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	if c.ratePerKey != nil {
		b, err := loadBucket(ctx, q, scopeKey, req.KeyID, "", *c.ratePerKey, now,
			fmt.Sprintf("rate_per_key %g/s burst %d", c.ratePerKey.PerSecond, c.ratePerKey.Burst))
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	return bs, nil
}
