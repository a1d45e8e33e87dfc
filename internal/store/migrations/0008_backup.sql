-- 0008: backups. Keys created with the "wrapped backup" attribute can be
-- wrapped inside the HSM under the trusted backup wrapping key; the start
-- checks hold them to that attribute set instead of non-extractable.
-- backup_recipient is the public key backups are encrypted to; its private
-- half is derived from the officers' unseal secret and never stored.
ALTER TABLE keys ADD COLUMN wrapped_backup INTEGER NOT NULL DEFAULT 0;

CREATE TABLE backup_recipient (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    public_key TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
