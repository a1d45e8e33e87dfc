package app

import (
	"context"
	"fmt"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

// ArchiveResult is what one audit retention pass did: the archive file it
// wrote ("" if none), the entries in it, and the entries it deleted (those
// an interrupted pass left included).
type ArchiveResult = store.ArchiveResult

// archiveAudit applies retention.audit (nothing when it is 0): the entries
// up to the newest checkpoint signed before now − retention.audit are
// written to an archive file in retention.archive_dir, verified, recorded by
// an audit_archived entry, then deleted in short batches, all but the
// checkpointed entry, which stays as the chain's first (store.ArchiveAudit).
// It archives through existing checkpoints only and never signs one, so it
// runs sealed as well as unsealed. It logs nothing: the caller does.
func (a *App) archiveAudit(ctx context.Context, now time.Time) (ArchiveResult, error) {
	keep := a.cfg.Retention.Audit.D()
	if keep <= 0 {
		return ArchiveResult{}, nil
	}
	res, err := a.store.ArchiveAudit(ctx, a.cfg.AuditArchiveDir(), now.Add(-keep))
	if err != nil {
		return res, fmt.Errorf("archive audit entries: %w", err)
	}
	return res, nil
}
