package policy

import (
	"context"
	"database/sql"
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

// storedBucket is a bucket's row as read, if it has one.
type storedBucket struct {
	found  bool
	tokens float64
	at     int64
}

// storedBuckets are the rows of a key's two buckets for one principal. The
// evaluation reads them with the rules (evaluationRead, rules.go), before it
// knows whether the rules limit rates: two seeks in a statement it runs
// anyway cost less than a statement of their own.
type storedBuckets struct {
	client, key storedBucket
}

// from takes the four bucket columns of evaluationRead.
func (sb *storedBuckets) from(ct sql.NullFloat64, ca sql.NullInt64, kt sql.NullFloat64, ka sql.NullInt64) {
	sb.client = storedBucket{found: ct.Valid && ca.Valid, tokens: ct.Float64, at: ca.Int64}
	sb.key = storedBucket{found: kt.Valid && ka.Valid, tokens: kt.Float64, at: ka.Int64}
}

// loadBucket refills a bucket as stored to now. A bucket never seen is
// full. The refill is computed, not stored, so a refusal writes nothing.
// A clock that went backwards refills nothing and does not move updated_at
// back, so it cannot be used to earn tokens twice.
func loadBucket(st storedBucket, scope, keyID, principal string, r Rate, now time.Time, rule string) (bucket, error) {
	b := bucket{scope: scope, keyID: keyID, principal: principal, rate: r, rule: rule,
		tokens: float64(r.Burst), updatedAt: now.UTC().UnixNano()}
	if !st.found {
		return b, nil
	}
	tokens, at := st.tokens, st.at
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

// rateBuckets loads the buckets the rules configure, client first, from
// their rows as read with the rules.
func rateBuckets(c *compiled, st storedBuckets, req Request, now time.Time) ([]bucket, error) {
	var bs []bucket
	if c.ratePerClient != nil {
		b, err := loadBucket(st.client, scopeClient, req.KeyID, req.Principal, *c.ratePerClient, now,
			fmt.Sprintf("rate_per_client %g/s burst %d", c.ratePerClient.PerSecond, c.ratePerClient.Burst))
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	if c.ratePerKey != nil {
		b, err := loadBucket(st.key, scopeKey, req.KeyID, "", *c.ratePerKey, now,
			fmt.Sprintf("rate_per_key %g/s burst %d", c.ratePerKey.PerSecond, c.ratePerKey.Burst))
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	return bs, nil
}
