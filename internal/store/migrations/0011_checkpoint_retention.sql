-- 0011: checkpoints of archived entries may go. Once entries are archived
-- (0010) and deleted, their signed checkpoints are in the archive files and
-- no longer needed here, but they were kept for ever: one every
-- audit.checkpoint_interval, hundreds of megabytes over years. Retention
-- now deletes them (internal/store/auditarchive.go, PruneArchivedCheckpointsTx),
-- and this trigger lets only those go: a checkpoint before the chain's first
-- entry and before the end of the newest recorded archive. Every checkpoint
-- of an entry still in the chain stays append-only. (Migration 7 created
-- the trigger refusing every DELETE; it is replaced here, for new and
-- upgraded databases alike.)
DROP TRIGGER audit_checkpoints_append_only_delete;
CREATE TRIGGER audit_checkpoints_append_only_delete BEFORE DELETE ON audit_checkpoints
WHEN OLD.seq >= (SELECT coalesce(min(seq), 0) FROM events)
  OR OLD.seq >= (SELECT coalesce(max(through_seq), 0) FROM audit_archives)
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
