-- 0007: the audit chain. Every event becomes a link of a hash chain (each
-- entry's hash covers its contents and the previous entry's hash); fields
-- holds structured details as a canonical JSON object in which sensitive
-- values are HMACs. Existing events are chained in place by the migration's
-- Go step (store/audit.go), which then forbids UPDATE and DELETE on the
-- chain with triggers.
ALTER TABLE events ADD COLUMN fields    TEXT NOT NULL DEFAULT '{}';
ALTER TABLE events ADD COLUMN prev_hash BLOB;
ALTER TABLE events ADD COLUMN hash      BLOB;

-- Signed heads: the audit key (P-256, in the HSM) signs "entry seq has hash
-- hash" every N entries or T seconds and at shutdown.
CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      BLOB    NOT NULL,
    at        INTEGER NOT NULL,
    key_id    TEXT    NOT NULL,
    signature BLOB    NOT NULL
) STRICT;

-- Audit keys: their HSM object id and public key (the offline verifier is
-- given the public key by the auditor; this copy is for the appliance's own
-- checks and for `appliance audit pubkey`).
CREATE TABLE audit_keys (
    key_id     TEXT    PRIMARY KEY,
    hsm_id     BLOB    NOT NULL,
    public_key BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER NOT NULL DEFAULT 0
) STRICT;
