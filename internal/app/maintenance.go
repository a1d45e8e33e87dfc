package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/store"
)

const (
	// usageRetention is how long policy usage is kept: the longest window
	// rules may set, and a day for clocks that were wrong. Older usage can
	// never count again, so pruning it changes no decision.
	usageRetention = policy.MaxWindow + 24*time.Hour
	// pruneBatch bounds each pruning transaction, so that signers waiting
	// for the writer wait for one short batch at most.
	pruneBatch = 5000
	// pruneEvery is how often the serving appliance prunes.
	pruneEvery = time.Hour
)

// pruneUsage deletes the policy usage recorded before now − usageRetention,
// in batches, each its own transaction with an audit entry. It returns the
// rows deleted.
func (a *App) pruneUsage(ctx context.Context, now time.Time) (int64, error) {
	cutoff := now.Add(-usageRetention)
	var total int64
	for {
		var n int64
		err := a.store.WriteTx(ctx, func(tx *store.Tx) error {
			var err error
			if n, err = policy.Prune(ctx, tx, cutoff, pruneBatch); err != nil || n == 0 {
				return err
			}
			return a.store.Audit(ctx, tx, audit.Record{Kind: "usage_pruned",
				Detail: "policy usage older than every possible window deleted",
				Fields: map[string]string{"rows": fmt.Sprint(n), "recorded_before": cutoff.UTC().Format(time.RFC3339)}})
		})
		if err != nil {
			return total, fmt.Errorf("prune policy usage: %w", err)
		}
		total += n
		if n < pruneBatch {
			return total, nil
		}
		// Between batches, signers have the writer to themselves.
		select {
		case <-ctx.Done():
			return total, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// maintain prunes policy usage a minute after the start, then every
// pruneEvery, until ctx ends.
func (a *App) maintain(ctx context.Context) {
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := a.pruneUsage(ctx, time.Now())
		switch {
		case err != nil && !errors.Is(err, context.Canceled):
			a.log.Error("pruning policy usage", zap.Error(err))
		case n > 0:
			a.log.Info("policy usage pruned", zap.Int64("rows", n), zap.Duration("retention", usageRetention))
		}
		t.Reset(pruneEvery)
	}
}
