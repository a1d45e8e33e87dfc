-- 0004: per-key signing policy (internal/policy owns these tables).
-- Times are UTC unix nanoseconds; amounts are decimal TEXT in base units
-- because wei exceeds what SQLite's INTEGER holds, and sums are taken in Go.

-- Every version of every key's rules. A change is a new row, never an
-- update, so the rules in force at any past moment can be shown.
CREATE TABLE policy_rules (
    key_id     TEXT    NOT NULL REFERENCES keys(id),
    version    INTEGER NOT NULL CHECK (version >= 1),
    rules      TEXT    NOT NULL, -- JSON of policy.Rules
    created_by TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, version)
) STRICT;

-- Destinations a key may pay in allowlist mode. An entry counts only from
-- effective_at (added_at + the rules' time lock, or added_at when a quorum
-- approved the addition).
CREATE TABLE policy_allowlist (
    key_id       TEXT    NOT NULL REFERENCES keys(id),
    address      TEXT    NOT NULL, -- canonical form (see policy.canonAddress)
    effective_at INTEGER NOT NULL,
    added_by     TEXT    NOT NULL,
    added_at     INTEGER NOT NULL,
    PRIMARY KEY (key_id, address)
) STRICT;

-- Value moved per request and asset, for rolling windows. The covering
-- index lets a window sum read only the index entries inside the window,
-- however much older history the table holds.
CREATE TABLE policy_usage (
    request_id TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    asset      TEXT    NOT NULL, -- canonical (lower-case) asset id
    amount     TEXT    NOT NULL, -- decimal, base units, > 0
    at         INTEGER NOT NULL
) STRICT;
CREATE INDEX policy_usage_window ON policy_usage (key_id, asset, at, amount);
CREATE INDEX policy_usage_request ON policy_usage (request_id);

-- Token buckets for rate limits, so a restart does not refill them.
-- scope is 'client' (principal set) or 'key' (principal '').
CREATE TABLE policy_buckets (
    scope      TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    principal  TEXT    NOT NULL,
    tokens     REAL    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key_id, principal)
) STRICT;
