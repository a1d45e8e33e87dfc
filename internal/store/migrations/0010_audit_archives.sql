-- 0010: audit retention. Entries older than retention.audit are written to
-- an archive file up to a signed checkpoint, verified, recorded here and by
-- an audit_archived entry in the chain (one transaction), and only then
-- deleted from events (internal/store/auditarchive.go). The entry at
-- through_seq stays: it is the chain's new first entry, and the next
-- archive file starts with it.
CREATE TABLE audit_archives (
    through_seq  INTEGER PRIMARY KEY, -- a checkpointed entry, kept
    from_seq     INTEGER NOT NULL,    -- the first entry in the file
    through_hash BLOB    NOT NULL,    -- entry through_seq's hash
    file         TEXT    NOT NULL,    -- base name in retention.archive_dir
    sha256       TEXT    NOT NULL,    -- of the file, hex
    size         INTEGER NOT NULL,    -- of the file, bytes
    at           INTEGER NOT NULL
) STRICT;

CREATE TRIGGER audit_archives_append_only_update BEFORE UPDATE ON audit_archives
BEGIN SELECT RAISE(ABORT, 'audit archives are append-only'); END;
CREATE TRIGGER audit_archives_append_only_delete BEFORE DELETE ON audit_archives
BEGIN SELECT RAISE(ABORT, 'audit archives are append-only'); END;

-- Entries stay append-only, except those before the end of the newest
-- recorded archive: they are in an archive file. (Migration 7 created the
-- trigger refusing every DELETE; a released migration never changes, so it
-- is replaced here, for new and upgraded databases alike.)
DROP TRIGGER events_append_only_delete;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
WHEN OLD.seq >= (SELECT coalesce(max(through_seq), 1) FROM audit_archives)
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
