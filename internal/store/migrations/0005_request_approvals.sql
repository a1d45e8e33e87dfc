-- 0005: officers' approvals of signing requests that policy sent to a quorum.
ALTER TABLE requests ADD COLUMN approvals_required INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN policy_version INTEGER NOT NULL DEFAULT 0;

-- One approval per officer per request: the primary key makes an officer count once.
CREATE TABLE request_approvals (
    request_id TEXT    NOT NULL REFERENCES requests(id),
    officer    TEXT    NOT NULL,
    signature  BLOB    NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (request_id, officer)
) STRICT;
