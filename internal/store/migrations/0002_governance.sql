-- 0002: the unseal ceremony, officers, freeze state, governance proposals
-- with their approvals, principals managed by quorum, and an event record
-- (every seal, freeze and governance step; the audit chain of a later issue
-- builds on it).

-- One row: the ceremony whose shares can unseal this appliance. Only the
-- verifier of the unseal secret is stored, never the secret or the PIN.
CREATE TABLE ceremony (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    ceremony_id BLOB    NOT NULL,
    threshold   INTEGER NOT NULL,
    total       INTEGER NOT NULL,
    verifier    BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

-- Officers and their Ed25519 approval public keys.
CREATE TABLE officers (
    name         TEXT    PRIMARY KEY,
    approval_key BLOB    NOT NULL,
    added_at     INTEGER NOT NULL
) STRICT;

-- One row: whether the appliance is frozen. It survives restarts.
CREATE TABLE appliance_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    frozen        INTEGER NOT NULL DEFAULT 0,
    frozen_reason TEXT    NOT NULL DEFAULT '',
    frozen_by     TEXT    NOT NULL DEFAULT '',
    frozen_at     INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO appliance_state (id) VALUES (1);

-- Principals added, changed or removed by quorum; they override the
-- configuration file's entry of the same name. roles and keys are JSON arrays.
CREATE TABLE principals (
    name       TEXT    PRIMARY KEY,
    roles      TEXT    NOT NULL,
    keys       TEXT    NOT NULL,
    removed    INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE proposals (
    id          TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL,
    params      BLOB    NOT NULL,
    digest      BLOB    NOT NULL,
    proposer    TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    threshold   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    decided_at  INTEGER NOT NULL DEFAULT 0,
    result      TEXT    NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX proposals_state ON proposals (state, created_at);

-- One approval per officer per proposal: the primary key makes an officer count once.
CREATE TABLE proposal_approvals (
    proposal_id TEXT    NOT NULL REFERENCES proposals(id),
    officer     TEXT    NOT NULL,
    signature   BLOB    NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (proposal_id, officer)
) STRICT;

CREATE TABLE events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    principal TEXT    NOT NULL DEFAULT '',
    detail    TEXT    NOT NULL DEFAULT ''
) STRICT;
