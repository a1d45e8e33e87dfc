-- 0009: rolling windows in O(log n) (issue 8). A window's usage was the sum
-- of every usage row inside it, read on every evaluation; a busy key's 24 h
-- window held 10^5..10^6 rows. Each row now also carries the running total
-- of its (key_id, asset), so a window's usage is the difference of two
-- running totals found by index seeks, less the released usage, read the
-- same way (see internal/policy/usage.go).
--
-- The table is rebuilt: seq (AUTOINCREMENT: strictly increasing, never
-- reused) makes the row order explicit, and cum is NOT NULL. The rows are
-- copied with their running totals by a Go step in the same transaction
-- (internal/store/migrate_usage.go): SQLite cannot add 256-bit integers.
ALTER TABLE policy_usage RENAME TO policy_usage_v8;
DROP INDEX policy_usage_window;
DROP INDEX policy_usage_request;

-- Invariants, per (key_id, asset), in seq order: at never decreases (the
-- policy records at = max(now, previous at)), and cum is the previous row's
-- cum + amount. cum restarts from amount when Prune has removed every
-- earlier row: only differences of cum within one (key_id, asset) mean
-- anything. Prune deletes the oldest rows first, so what remains of a
-- (key_id, asset) is always a contiguous tail of its history.
CREATE TABLE policy_usage (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    asset      TEXT    NOT NULL, -- canonical (lower-case) asset id
    amount     TEXT    NOT NULL, -- decimal, base units, > 0
    at         INTEGER NOT NULL,
    cum        TEXT    NOT NULL  -- decimal: running total including this row
) STRICT;
-- (key_id, asset, at) and, implicitly, seq: "the last row at or before t"
-- is one seek.
CREATE INDEX policy_usage_window ON policy_usage (key_id, asset, at);
CREATE INDEX policy_usage_request ON policy_usage (request_id);

-- Usage given back by Release (a rejected or expired approval, the pending
-- usage of an approved request before it is evaluated again, a failed
-- signing). The usage row stays, or the running totals after it would be
-- wrong; a window subtracts the released amounts inside it, read the same
-- way: cum is the running total of the released amounts of the (key_id,
-- asset) in (at, seq) order. A release usually lands at the end of that
-- order; one that lands before others adds its amount to their cum (few:
-- releases of later usage rows of the same key and asset). One entry per
-- usage row (seq), so releasing twice changes nothing; pruning a usage row
-- deletes its entry (Prune explicitly, and the foreign key).
CREATE TABLE policy_usage_released (
    seq        INTEGER PRIMARY KEY REFERENCES policy_usage (seq) ON DELETE CASCADE,
    request_id TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    asset      TEXT    NOT NULL,
    amount     TEXT    NOT NULL, -- the usage row's amount
    at         INTEGER NOT NULL, -- the usage row's at
    cum        TEXT    NOT NULL  -- decimal: running total of released amounts, in (at, seq) order
) STRICT;
CREATE INDEX policy_usage_released_window ON policy_usage_released (key_id, asset, at);
