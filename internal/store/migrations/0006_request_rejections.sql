-- 0006: officers' rejections of pending signing requests (a configurable
-- number of them ends the request).
CREATE TABLE request_rejections (
    request_id TEXT    NOT NULL REFERENCES requests(id),
    officer    TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (request_id, officer)
) STRICT;
