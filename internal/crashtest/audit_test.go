package crashtest

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/custodysigner/appliance/internal/client"
)

// reqAudit is what the audit chain says about one request.
type reqAudit struct {
	created  int    // sign_request entries
	signed   int    // request_signed entries
	signedTx string // the tx_hash (txid) the request_signed entry names
	failed   int    // request_failed entries
}

// auditIndex is an incremental reading of the audit chain: entries after
// seq, each checked to link to the one before (prev_hash), indexed by
// request. Entries are only ever appended, so reading on from the last
// entry seen, after checking it still links, reads every entry once.
type auditIndex struct {
	name    string // "API" or "database file"
	seq     int64  // the last entry read
	hash    string // its hash, hex
	entries int64
	kinds   map[string]int
	reqs    map[string]*reqAudit
}

func newAuditIndex(name string) *auditIndex {
	return &auditIndex{name: name, kinds: map[string]int{}, reqs: map[string]*reqAudit{}}
}

func (x *auditIndex) req(id string) *reqAudit {
	r := x.reqs[id]
	if r == nil {
		r = &reqAudit{}
		x.reqs[id] = r
	}
	return r
}

// add reads one entry; it must follow the last one read.
func (x *auditIndex) add(seq int64, kind, prevHash, hash string, fields map[string]string) error {
	if seq != x.seq+1 || (x.seq > 0 && prevHash != x.hash) {
		return fmt.Errorf("%s audit chain: entry %d (prev_hash %.16s…) does not follow entry %d (hash %.16s…)", x.name, seq, prevHash, x.seq, x.hash)
	}
	x.seq, x.hash = seq, hash
	x.entries++
	x.kinds[kind]++
	id := fields["request_id"]
	switch kind {
	case "sign_request":
		x.req(id).created++
	case "request_signed":
		r := x.req(id)
		r.signed++
		r.signedTx = fields["tx_hash"]
	case "request_failed":
		x.req(id).failed++
	}
	return nil
}

// readAPI pages GET /v1/audit as the auditor from the last entry read.
func (x *auditIndex) readAPI(ctx context.Context, c *client.Client) error {
	for {
		var page struct {
			Entries []struct {
				Seq      int64             `json:"seq"`
				Kind     string            `json:"kind"`
				Fields   map[string]string `json:"fields"`
				PrevHash string            `json:"prev_hash"`
				Hash     string            `json:"hash"`
			} `json:"entries"`
			HeadSeq int64 `json:"head_seq"`
			Next    int64 `json:"next"`
		}
		if err := c.Do(ctx, "GET", "/v1/audit?limit=1000&after="+strconv.FormatInt(x.seq, 10), nil, &page); err != nil {
			return fmt.Errorf("GET /v1/audit after %d: %w", x.seq, err)
		}
		for _, e := range page.Entries {
			if err := x.add(e.Seq, e.Kind, e.PrevHash, e.Hash, e.Fields); err != nil {
				return err
			}
		}
		if len(page.Entries) == 0 || page.Next >= page.HeadSeq {
			return nil
		}
	}
}

// readDB reads the events table of a database from the last entry read.
func (x *auditIndex) readDB(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, `SELECT seq, kind, fields, lower(hex(prev_hash)), lower(hex(hash)) FROM events WHERE seq > ? ORDER BY seq`, x.seq)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			seq                  int64
			kind, fj, prev, hash string
			fields               map[string]string
		)
		if err := rows.Scan(&seq, &kind, &fj, &prev, &hash); err != nil {
			return err
		}
		if kind == "sign_request" || kind == "request_signed" || kind == "request_failed" {
			if err := json.Unmarshal([]byte(fj), &fields); err != nil {
				return fmt.Errorf("events %d fields: %w", seq, err)
			}
		}
		if err := x.add(seq, kind, prev, hash, fields); err != nil {
			return err
		}
	}
	return rows.Err()
}

// checkAnswered requires, for a request whose signature a client received,
// exactly one creation entry and exactly one signature entry naming the same
// transaction.
func (x *auditIndex) checkAnswered(e *entry) error {
	r := x.reqs[e.ans.RequestID]
	switch {
	case r == nil || r.created != 1:
		n := 0
		if r != nil {
			n = r.created
		}
		return fmt.Errorf("%s audit chain: request %s (key %s, answered) has %d sign_request entries, want 1", x.name, e.ans.RequestID, e.key, n)
	case r.signed != 1:
		return fmt.Errorf("%s audit chain: request %s (key %s, answered) has %d request_signed entries, want 1", x.name, e.ans.RequestID, e.key, r.signed)
	case r.signedTx != e.ans.hash():
		return fmt.Errorf("%s audit chain: request %s signed %s, but the client received %s", x.name, e.ans.RequestID, r.signedTx, e.ans.hash())
	}
	return nil
}
