-- 0001: key registry, signing requests and the watchdog health row.
-- Times are UTC unix nanoseconds (INTEGER) throughout, so ordering and range
-- queries compare integers rather than strings in varying formats.

CREATE TABLE keys (
    id         TEXT    PRIMARY KEY,
    label      TEXT    NOT NULL,
    cka_id     BLOB    NOT NULL UNIQUE,
    algorithm  TEXT    NOT NULL,
    chain      TEXT    NOT NULL DEFAULT '',
    network    TEXT    NOT NULL DEFAULT '',
    public_key BLOB    NOT NULL,
    address    TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
) STRICT;

-- State is deliberately not a CHECK constraint: later issues add states, and
-- SQLite can only change a CHECK by rebuilding the table. Go validates it.
CREATE TABLE requests (
    id              TEXT    PRIMARY KEY,
    principal       TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL DEFAULT '',
    key_id          TEXT    NOT NULL REFERENCES keys(id),
    chain           TEXT    NOT NULL DEFAULT '',
    network         TEXT    NOT NULL DEFAULT '',
    payload         BLOB    NOT NULL,
    payload_hash    BLOB    NOT NULL,
    intent          BLOB,
    digest          BLOB,
    state           TEXT    NOT NULL,
    signed_tx       BLOB,
    tx_hash         TEXT    NOT NULL DEFAULT '',
    error_code      TEXT    NOT NULL DEFAULT '',
    error_message   TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

-- The idempotency backstop: even a writer that skipped the lookup cannot
-- record the same (principal, key) twice. Requests without a key are exempt.
CREATE UNIQUE INDEX requests_idempotency
    ON requests (principal, idempotency_key) WHERE idempotency_key <> '';

CREATE INDEX requests_state_created ON requests (state, created_at);

-- One row, rewritten by Probe, so the watchdog proves a real commit reaches disk.
CREATE TABLE health (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at INTEGER NOT NULL,
    probes    INTEGER NOT NULL
) STRICT;
