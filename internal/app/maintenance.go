package app

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/health"
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
	n, err := a.pruneBatches(ctx, func(ctx context.Context, tx *store.Tx) (int64, error) {
		return policy.Prune(ctx, tx, cutoff, pruneBatch)
	}, func(n int64) audit.Record {
		return audit.Record{Kind: "usage_pruned",
			Detail: "policy usage older than every possible window deleted",
			Fields: map[string]string{"rows": fmt.Sprint(n), "recorded_before": cutoff.UTC().Format(time.RFC3339)}}
	})
	if err != nil {
		return n, fmt.Errorf("prune policy usage: %w", err)
	}
	return n, nil
}

// pruneRequests deletes the requests that finished before now −
// retention.requests (nothing when it is 0), in batches, each its own
// transaction with an audit entry. It returns the requests deleted.
func (a *App) pruneRequests(ctx context.Context, now time.Time) (int64, error) {
	keep := a.cfg.Retention.Requests.D()
	if keep <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-keep)
	n, err := a.pruneBatches(ctx, func(ctx context.Context, tx *store.Tx) (int64, error) {
		return store.PruneRequestsTx(ctx, tx, cutoff, pruneBatch)
	}, func(n int64) audit.Record {
		return audit.Record{Kind: "requests_pruned",
			Detail: "requests finished longer ago than retention.requests deleted (their idempotency keys are forgotten)",
			Fields: map[string]string{"rows": fmt.Sprint(n), "finished_before": cutoff.UTC().Format(time.RFC3339),
				"retention": keep.String()}}
	})
	if err != nil {
		return n, fmt.Errorf("prune requests: %w", err)
	}
	return n, nil
}

// pruneBatches runs del until it deletes fewer than pruneBatch rows, each
// call in its own write transaction together with the audit entry rec
// makes for it (none when it deleted nothing). It returns the rows deleted.
func (a *App) pruneBatches(ctx context.Context, del func(context.Context, *store.Tx) (int64, error), rec func(int64) audit.Record) (int64, error) {
	var total int64
	for {
		var n int64
		err := a.store.WriteTx(ctx, func(tx *store.Tx) error {
			var err error
			if n, err = del(ctx, tx); err != nil || n == 0 {
				return err
			}
			return a.store.Audit(ctx, tx, rec(n))
		})
		if err != nil {
			return total, err
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

// errSkippedSealed: a retention step that needs the HSM did not run (the
// next pass while unsealed does it).
var errSkippedSealed = errors.New("sealed: skipped until unsealed")

// pruneCheckpoints deletes the signed checkpoints of archived entries (they
// are in the archive files), in batches, each its own transaction with an
// audit entry, all but the checkpoint of the token's audit head, which the
// unseal compares with the database (store.PruneArchivedCheckpointsTx). It
// reads that head from the token, so it runs only unsealed.
func (a *App) pruneCheckpoints(ctx context.Context, _ time.Time) (int64, error) {
	m, _ := a.currentAudit()
	if m == nil {
		return 0, errSkippedSealed
	}
	var keep int64 // no head on the token: none to keep
	raw, err := m.ReadData(ctx, auditHeadLabel)
	switch {
	case err == nil:
		cp, err := decodeHead(raw)
		if err != nil {
			return 0, fmt.Errorf("prune audit checkpoints: the token's audit head does not parse: %w", err)
		}
		keep = cp.Seq
	case !errors.Is(err, hsm.ErrDataNotFound):
		return 0, fmt.Errorf("prune audit checkpoints: read the token's audit head: %w", err)
	}
	n, err := a.pruneBatches(ctx, func(ctx context.Context, tx *store.Tx) (int64, error) {
		return store.PruneArchivedCheckpointsTx(ctx, tx, keep, pruneBatch)
	}, func(n int64) audit.Record {
		return audit.Record{Kind: "checkpoints_pruned",
			Detail: "signed checkpoints of archived audit entries deleted (the archive files hold them)",
			Fields: map[string]string{"rows": fmt.Sprint(n), "token_head": fmt.Sprint(keep)}}
	})
	if err != nil {
		return n, fmt.Errorf("prune audit checkpoints: %w", err)
	}
	return n, nil
}

// maintain prunes policy usage and, when retention says so, old finished
// requests and old audit entries (archived first) with their checkpoints,
// a minute after the start and then every pruneEvery, until ctx ends.
func (a *App) maintain(ctx context.Context) {
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.maintainOnce(ctx, time.Now())
		t.Reset(pruneEvery)
	}
}

// archiveAndPrune is archiveAudit as a step of maintainOnce: it runs passes
// until one writes no archive (a pass writes one file of bounded size),
// logs each archive, and returns the entries deleted.
func (a *App) archiveAndPrune(ctx context.Context, now time.Time) (int64, error) {
	var deleted int64
	for {
		res, err := a.archiveAudit(ctx, now)
		deleted += res.Deleted
		if res.File != "" {
			a.log.Info("audit entries archived", zap.String("file", res.File), zap.Int64("from", res.From), zap.Int64("through", res.Through))
		}
		if err != nil || res.File == "" {
			return deleted, err
		}
	}
}

// alertRetention is the alert, and the /v1/health check, raised while the
// last pass of a retention step failed.
const alertRetention = "retention"

// retentionFailures is the retention steps whose last pass failed: what
// the retention check reports until a pass of the step succeeds.
type retentionFailures struct {
	mu     sync.Mutex
	failed map[string]retentionFailure // by step (the metric's label)
}

type retentionFailure struct {
	what string
	at   time.Time
	err  string
}

func (r *retentionFailures) set(step, what string, at time.Time, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		delete(r.failed, step)
		return
	}
	if r.failed == nil {
		r.failed = map[string]retentionFailure{}
	}
	r.failed[step] = retentionFailure{what: what, at: at, err: err.Error()}
}

// retentionCheck makes /v1/health degraded, and raises retention, while
// the last pass of a retention step failed: the database grows again, or,
// when an interrupted pass left entries to delete and the archive it
// recorded is missing or altered, someone touched the audit archives on
// the box. Degraded, never down: signing goes on.
// The next successful pass of the step (hourly) clears it.
func (a *App) retentionCheck() health.Check {
	return a.obs.alerts.Check(alertRetention, func(context.Context) error {
		a.retention.mu.Lock()
		defer a.retention.mu.Unlock()
		var out []string
		for _, f := range a.retention.failed {
			out = append(out, fmt.Sprintf("pruning %s failed at %s: %s", f.what, f.at.UTC().Format(time.RFC3339), f.err))
		}
		if len(out) == 0 {
			return nil
		}
		sort.Strings(out)
		return fmt.Errorf("%s (retried hourly)", strings.Join(out, "; "))
	})
}

// maintainOnce is one pass of maintain; each step's failure is logged,
// counted and kept for the retention check, and does not stop the others.
func (a *App) maintainOnce(ctx context.Context, now time.Time) {
	steps := []struct {
		what, metric string
		run          func(context.Context, time.Time) (int64, error)
		keep         time.Duration
	}{
		{"policy usage", "policy_usage", a.pruneUsage, usageRetention},
		{"finished requests", "requests", a.pruneRequests, a.cfg.Retention.Requests.D()},
		{"archived audit entries", "audit_entries", a.archiveAndPrune, a.cfg.Retention.Audit.D()},
		{"checkpoints of archived audit entries", "audit_checkpoints", a.pruneCheckpoints, a.cfg.Retention.Audit.D()},
	}
	for _, st := range steps {
		if st.keep <= 0 {
			continue // retention off: no pass, no metric
		}
		n, err := st.run(ctx, now)
		if errors.Is(err, context.Canceled) {
			return
		}
		if errors.Is(err, errSkippedSealed) {
			a.log.Debug("pruning " + st.what + " skipped while sealed")
			continue // not a pass: no metric
		}
		a.obs.metrics.ObserveRetention(st.metric, n, err, time.Now())
		a.retention.set(st.metric, st.what, time.Now(), err)
		switch {
		case err != nil:
			a.log.Error("pruning "+st.what, zap.Error(err), zap.Int64("rows", n))
		case n > 0:
			a.log.Info(st.what+" pruned", zap.Int64("rows", n), zap.Duration("retention", st.keep))
		}
	}
}
