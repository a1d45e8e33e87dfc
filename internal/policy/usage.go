package policy

// Rolling-window usage in O(log n).
//
// policy_usage holds one row per (request, asset) that counted against the
// windows. In seq order (insertion order), per (key_id, asset):
//
//   - at never decreases: a row is recorded at max(now, the previous row's
//     at). A clock that stepped back therefore records at the previous time,
//     which is after now and so still counts in every window (usage recorded
//     after now is never hidden) until the clock has caught up with it and
//     the window has moved past it: a step back can make usage count for
//     longer, never for less time.
//   - cum is the running total: the previous row's cum + amount.
//
// The usage of a window of length d at now — the amounts recorded in
// (now-d, now] and any recorded after now, exactly the rows with
// at > now-d — is then
//
//	cum(last row) − prefix(now-d)
//
// where prefix(t) is the cum of the last row with at <= t. The last row and
// prefix(t) are each one seek on the (key_id, asset, at) index, so an
// evaluation no longer reads the rows inside its windows, however many.
//
// Prune deletes the oldest rows first, so what is left of a (key_id, asset)
// is a contiguous tail of its history. When no remaining row is as old as t,
// prefix(t) is the oldest remaining row's cum minus its amount (the total
// of the pruned rows before it): the window then sums exactly the remaining
// rows, as the schema-8 code did. cum may restart from the amount once
// every row of a (key_id, asset) has been pruned; only differences of cum
// within one (key_id, asset) are ever used.
//
// Release cannot delete rows (the running totals after them would be
// wrong), so it copies the request's rows into policy_usage_released, and a
// window subtracts the released amounts inside it, read the same way. A
// release entry carries its usage row's seq and at, so the entries of a
// (key_id, asset) are in (at, seq) order when sorted by seq, and they have
// their own running total in that order. A release usually lands after
// every other entry of its (key_id, asset) (it is of a recent row); one
// that does not adds its amount to the running totals of the entries after
// it, which are few (releases of later rows). Pruning a usage row deletes
// its release entry, so the entries left are a tail as well.
//
// Everything runs inside the caller's write transaction (the single
// writer), so the read-check-append of an evaluation cannot interleave with
// another's.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/custodysigner/appliance/internal/store"
)

// sumTable is the reads of a table of amounts with running totals per
// (key_id, asset) in (at, seq) order: policy_usage and
// policy_usage_released. They must stay index seeks; TestUsageQueryPlans
// checks them with EXPLAIN QUERY PLAN.
//
// The unary + on the key and asset parameters is for the statement cache,
// not the plan (the seek is the same): SQLite marks a statement that has an
// ORDER BY and a `column = ?` for re-preparation on every new binding, and
// the driver clears the bindings of every statement it caches, so without
// it each of these reads was compiled again on every use.
// TestSigningPathStatementsStayPrepared (internal/store) checks it.
type sumTable struct {
	name string
	last string // the newest row
	upTo string // the newest row at or before a time
}

func newSumTable(table string) sumTable {
	return sumTable{
		name: table,
		last: `SELECT at, cum FROM ` + table + ` WHERE key_id = +? AND asset = +?
			ORDER BY at DESC, seq DESC LIMIT 1`,
		upTo: `SELECT cum FROM ` + table + ` WHERE key_id = +? AND asset = +? AND at <= ?
			ORDER BY at DESC, seq DESC LIMIT 1`,
	}
}

var (
	usageSums    = newSumTable("policy_usage")
	releasedSums = newSumTable("policy_usage_released")
)

// The append, Release's statements and Prune's.
const (
	qInsertUsage = `INSERT INTO policy_usage (request_id, key_id, asset, amount, at, cum)
		VALUES (?, ?, ?, ?, ?, ?)`
	// qUnreleased: a request's usage rows not released yet.
	qUnreleased = `SELECT u.seq, u.key_id, u.asset, u.amount, u.at FROM policy_usage AS u
		WHERE u.request_id = ? AND NOT EXISTS (SELECT 1 FROM policy_usage_released AS r WHERE r.seq = u.seq)
		ORDER BY u.seq`
	// qReleasedBefore: the last release entry before a usage row (at, seq).
	// (+?: see sumTable.)
	qReleasedBefore = `SELECT cum FROM policy_usage_released WHERE key_id = +? AND asset = +? AND at <= ? AND seq < ?
		ORDER BY at DESC, seq DESC LIMIT 1`
	// qReleasedAfter: the release entries after a usage row (at, seq).
	qReleasedAfter = `SELECT seq, amount, cum FROM policy_usage_released WHERE key_id = +? AND asset = +? AND at >= ? AND seq > ?
		ORDER BY at, seq`
	qInsertReleased = `INSERT INTO policy_usage_released (seq, request_id, key_id, asset, amount, at, cum)
		VALUES (?, ?, ?, ?, ?, ?, ?)`
	qUpdateReleased = `UPDATE policy_usage_released SET cum = ? WHERE seq = ?`
	// Prune takes the oldest rows in seq order. Per (key_id, asset) the
	// rows at or before the horizon are a prefix in seq order (at never
	// decreases), so any batch deletes a prefix of each (key_id, asset),
	// and of its release entries.
	qPruneReleased = `DELETE FROM policy_usage_released WHERE seq IN
		(SELECT seq FROM policy_usage WHERE at <= ? ORDER BY seq LIMIT ?)`
	qPruneUsage = `DELETE FROM policy_usage WHERE seq IN
		(SELECT seq FROM policy_usage WHERE at <= ? ORDER BY seq LIMIT ?)`
)

// usageHead is the newest row of a (key_id, asset), if any.
type usageHead struct {
	found bool
	at    int64
	cum   *big.Int
}

// storedAmount parses a decimal amount or running total read back from the
// database.
func storedAmount(what, s, keyID, asset string) (*big.Int, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return nil, fmt.Errorf("policy: usage %s %q of %q %s: %w", what, s, keyID, asset, ErrCorrupt)
	}
	v, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil, fmt.Errorf("policy: usage %s %q of %q %s: %w", what, s, keyID, asset, ErrCorrupt)
	}
	return v, nil
}

// lastRow reads the newest row of keyID's asset in t.
func (t sumTable) lastRow(ctx context.Context, q Queryer, keyID, asset string) (usageHead, error) {
	var h usageHead
	var cum string
	err := q.QueryRowContext(ctx, t.last, keyID, asset).Scan(&h.at, &cum)
	if errors.Is(err, sql.ErrNoRows) {
		return usageHead{}, nil
	}
	if err != nil {
		return usageHead{}, fmt.Errorf("policy: read %s of %q %s: %w", t.name, keyID, asset, err)
	}
	if h.cum, err = storedAmount("running total", cum, keyID, asset); err != nil {
		return usageHead{}, err
	}
	h.found = true
	return h, nil
}

// windowReadTimes bounds the distinct window times windowUsage reads in its
// one statement; each further one (rules with many windows on one asset)
// takes a statement of its own.
const windowReadTimes = 4

// windowReads[n] reads, for a key and asset (?1, ?2) and n distinct times
// (?3 …), everything windowUsage needs, per table (policy_usage, then
// policy_usage_released): the newest row's at and cum, the oldest remaining
// row's cum and amount, and the cum of the newest row at or before each
// time. Each column is a seek on the table's (key_id, asset, at) index, as a
// scalar subquery (TestUsageQueryPlans checks them): one statement instead
// of one per seek.
var windowReads = func() (qs [windowReadTimes + 1]string) {
	for n := range qs {
		var cols []string
		for _, t := range []sumTable{usageSums, releasedSums} {
			seek := func(col, cond, order string) string {
				return `(SELECT ` + col + ` FROM ` + t.name + ` WHERE key_id = +?1 AND asset = +?2` + cond +
					` ORDER BY ` + order + ` LIMIT 1)`
			}
			cols = append(cols, seek("at", "", "at DESC, seq DESC"), seek("cum", "", "at DESC, seq DESC"),
				seek("cum", "", "at, seq"), seek("amount", "", "at, seq"))
			for i := range n {
				cols = append(cols, seek("cum", fmt.Sprintf(" AND at <= ?%d", i+3), "at DESC, seq DESC"))
			}
		}
		qs[n] = "SELECT " + strings.Join(cols, ",\n\t")
	}
	return qs
}()

// sumRead is what windowReads read of one table.
type sumRead struct {
	lastAt                         sql.NullInt64
	lastCum, firstCum, firstAmount sql.NullString
	times                          []int64          // the times read …
	upTo                           []sql.NullString // … and the cum at or before each
}

func (r *sumRead) dest(n int) []any {
	r.upTo = make([]sql.NullString, n)
	d := []any{&r.lastAt, &r.lastCum, &r.firstCum, &r.firstAmount}
	for i := range r.upTo {
		d = append(d, &r.upTo[i])
	}
	return d
}

// sumsAfter returns, for each of ts, the total amount of keyID's asset in t
// with at > ts[i], and the newest row, from what rd read: the newest row,
// the newest row up to each distinct time (each time rd did not read is read
// now, one seek each), and the oldest row, used when a time is before every
// remaining row. Index seeks, whatever the number of rows summed.
func (t sumTable) sumsAfter(ctx context.Context, q Queryer, keyID, asset string, ts []int64, rd *sumRead) ([]*big.Int, usageHead, error) {
	sums := make([]*big.Int, len(ts))
	for i := range sums {
		sums[i] = new(big.Int)
	}
	if !rd.lastAt.Valid {
		return sums, usageHead{}, nil
	}
	head := usageHead{found: true, at: rd.lastAt.Int64}
	var err error
	if head.cum, err = storedAmount("running total", rd.lastCum.String, keyID, asset); err != nil {
		return nil, usageHead{}, err
	}
	var beforeFirst *big.Int // the oldest row's cum − amount: what was pruned before it
	upTo := make(map[int64]*big.Int, len(ts))
	for i, at := range ts {
		p, ok := upTo[at]
		if !ok {
			var cum sql.NullString
			if j := slices.Index(rd.times, at); j >= 0 {
				cum = rd.upTo[j]
			} else if err := q.QueryRowContext(ctx, t.upTo, keyID, asset, at).Scan(&cum.String); err == nil {
				cum.Valid = true
			} else if !errors.Is(err, sql.ErrNoRows) {
				return nil, usageHead{}, fmt.Errorf("policy: read %s of %q %s: %w", t.name, keyID, asset, err)
			}
			switch {
			case !cum.Valid:
				if beforeFirst == nil {
					c, err := storedAmount("running total", rd.firstCum.String, keyID, asset)
					if err != nil {
						return nil, usageHead{}, err
					}
					a, err := storedAmount("amount", rd.firstAmount.String, keyID, asset)
					if err != nil {
						return nil, usageHead{}, err
					}
					beforeFirst = c.Sub(c, a)
				}
				p = beforeFirst
			default:
				if p, err = storedAmount("running total", cum.String, keyID, asset); err != nil {
					return nil, usageHead{}, err
				}
			}
			upTo[at] = p
		}
		sums[i].Sub(head.cum, p)
	}
	return sums, head, nil
}

// windowUsage returns, for each of ws (all on asset), the amount recorded
// in (now-d, now] and also anything recorded after now (a clock that
// stepped back must not hide usage), less what was released; and the
// newest usage row, which record appends after. A handful of index seeks
// per distinct window length, never the rows inside the windows, all in one
// statement for up to windowReadTimes window lengths.
func windowUsage(ctx context.Context, q Queryer, keyID, asset string, now int64, ws []window) ([]*big.Int, usageHead, error) {
	ts := make([]int64, len(ws))
	var times []int64 // distinct, in order, at most windowReadTimes
	for i, w := range ws {
		ts[i] = now - int64(w.d)
		if len(times) < windowReadTimes && !slices.Contains(times, ts[i]) {
			times = append(times, ts[i])
		}
	}
	used, released := sumRead{times: times}, sumRead{times: times}
	args := []any{keyID, asset}
	for _, at := range times {
		args = append(args, at)
	}
	if err := q.QueryRowContext(ctx, windowReads[len(times)], args...).
		Scan(append(used.dest(len(times)), released.dest(len(times))...)...); err != nil {
		return nil, usageHead{}, fmt.Errorf("policy: read window usage of %q %s: %w", keyID, asset, err)
	}
	sums, head, err := usageSums.sumsAfter(ctx, q, keyID, asset, ts, &used)
	if err != nil || !head.found {
		return sums, head, err
	}
	freed, _, err := releasedSums.sumsAfter(ctx, q, keyID, asset, ts, &released)
	if err != nil {
		return nil, usageHead{}, err
	}
	for i, r := range freed {
		// A running total below an earlier one, or more released than
		// used: the invariants do not hold. Fail closed.
		if r.Sign() < 0 || sums[i].Sub(sums[i], r).Sign() < 0 {
			return nil, usageHead{}, fmt.Errorf("policy: window usage of %q %s %s is %s after releasing %s: %w",
				keyID, asset, ws[i].d, sums[i], r, ErrCorrupt)
		}
	}
	return sums, head, nil
}

// appendUsage records amount (> 0) of keyID's asset under requestID at
// max(now, the newest row's at), with its running total. head is the newest
// row when the caller has just read it in this transaction, else nil.
func appendUsage(ctx context.Context, tx *store.Tx, requestID, keyID, asset string, amount *big.Int, now int64, head *usageHead) error {
	if head == nil {
		h, err := usageSums.lastRow(ctx, tx, keyID, asset)
		if err != nil {
			return err
		}
		head = &h
	}
	at, cum := now, new(big.Int).Set(amount)
	if head.found {
		at = max(now, head.at)
		cum.Add(cum, head.cum)
	}
	if _, err := tx.ExecContext(ctx, qInsertUsage, requestID, keyID, asset, amount.String(), at, cum.String()); err != nil {
		return fmt.Errorf("policy: record usage of %s: %w", requestID, err)
	}
	return nil
}

// Release removes requestID's window usage: for a request whose approval was
// rejected or expired, or whose signing failed and will not be retried.
// Rate-limit tokens are not refunded (the request was still made). Releasing
// an unknown or already released request does nothing.
func (e *Engine) Release(ctx context.Context, tx *store.Tx, requestID string) error {
	type row struct {
		seq, at           int64
		keyID, asset, amt string
	}
	var rs []row
	err := func() error {
		rows, err := tx.QueryContext(ctx, qUnreleased, requestID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.seq, &r.keyID, &r.asset, &r.amt, &r.at); err != nil {
				return err
			}
			rs = append(rs, r)
		}
		return rows.Err()
	}()
	if err != nil {
		return fmt.Errorf("policy: release usage of %s: %w", requestID, err)
	}
	for _, r := range rs {
		amount, err := storedAmount("amount", r.amt, r.keyID, r.asset)
		if err != nil {
			return err
		}
		if err := releaseRow(ctx, tx, requestID, r.keyID, r.asset, amount, r.seq, r.at); err != nil {
			return fmt.Errorf("policy: release usage of %s: %w", requestID, err)
		}
	}
	return nil
}

// releaseRow adds the release entry of usage row seq (at, amount) with its
// running total, and adds amount to the running totals of the entries after
// it in (at, seq) order.
func releaseRow(ctx context.Context, tx *store.Tx, requestID, keyID, asset string, amount *big.Int, seq, at int64) error {
	type entry struct {
		seq      int64
		amt, cum string
	}
	var after []entry
	err := func() error {
		rows, err := tx.QueryContext(ctx, qReleasedAfter, keyID, asset, at, seq)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e entry
			if err := rows.Scan(&e.seq, &e.amt, &e.cum); err != nil {
				return err
			}
			after = append(after, e)
		}
		return rows.Err()
	}()
	if err != nil {
		return err
	}
	// The running total before it: the previous entry's, or, when it is
	// the first remaining one, what was pruned before the next.
	prev := new(big.Int)
	var cum string
	err = tx.QueryRowContext(ctx, qReleasedBefore, keyID, asset, at, seq).Scan(&cum)
	switch {
	case err == nil:
		if prev, err = storedAmount("released running total", cum, keyID, asset); err != nil {
			return err
		}
	case !errors.Is(err, sql.ErrNoRows):
		return err
	case len(after) > 0:
		c, err := storedAmount("released running total", after[0].cum, keyID, asset)
		if err != nil {
			return err
		}
		a, err := storedAmount("released amount", after[0].amt, keyID, asset)
		if err != nil {
			return err
		}
		prev.Sub(c, a)
	}
	if _, err := tx.ExecContext(ctx, qInsertReleased, seq, requestID, keyID, asset, amount.String(), at,
		prev.Add(prev, amount).String()); err != nil {
		return err
	}
	for _, e := range after {
		c, err := storedAmount("released running total", e.cum, keyID, asset)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, qUpdateReleased, c.Add(c, amount).String(), e.seq); err != nil {
			return err
		}
	}
	return nil
}

// Prune deletes at most limit usage rows recorded at or before before, the
// oldest first, with their release entries, and returns how many usage
// rows it deleted. It is maintenance, run in its own short transactions (the
// bound keeps each one short): pass a time older than the longest window any
// key's rules use, or a later rules version with a longer window would see
// less history than happened (a window reaching back past the pruned rows
// sums what remains). Windows stay exact whatever is pruned: the running
// totals of the remaining rows are not touched.
func Prune(ctx context.Context, tx *store.Tx, before time.Time, limit int) (int64, error) {
	h := before.UTC().UnixNano()
	if _, err := tx.ExecContext(ctx, qPruneReleased, h, limit); err != nil {
		return 0, fmt.Errorf("policy: prune released usage: %w", err)
	}
	res, err := tx.ExecContext(ctx, qPruneUsage, h, limit)
	if err != nil {
		return 0, fmt.Errorf("policy: prune usage: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("policy: prune usage: %w", err)
	}
	return n, nil
}
