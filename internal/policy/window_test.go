package policy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/custodysigner/appliance/internal/store"
)

// seedRequestID names seedUsage's i-th request.
func seedRequestID(i int) string { return fmt.Sprintf("usage-%07d", i) }

// seedUsage appends one usage row of amount per entry of ats (in order) to
// keyID's asset (canonical, lower case), under the request ids
// seedRequestID(0), seedRequestID(1), …: seedUsageRows for one key and
// asset.
func seedUsage(tb testing.TB, s *store.Store, keyID, asset, amount string, ats []time.Time) {
	tb.Helper()
	rows := make([]seedRow, len(ats))
	for i, at := range ats {
		rows[i] = seedRow{requestID: seedRequestID(i), keyID: keyID, asset: asset, amount: amount, at: at}
	}
	seedUsageRows(tb, s, rows)
}

// seedRow is one usage row for seedUsageRows.
type seedRow struct {
	requestID, keyID, asset, amount string // asset canonical (lower case); amount decimal, > 0
	at                              time.Time
}

// seedUsageRows records rows, in any order, as Evaluate would have: per key
// and asset in time order (ties in the given order), after the rows already
// there (at no earlier than the newest of them), each with its running
// total, in one write transaction. It is how tests and benchmarks fill the
// windows quickly: policy_usage rows must not be inserted by hand, since
// each carries the running total of its (key_id, asset).
func seedUsageRows(tb testing.TB, s *store.Store, rows []seedRow) {
	tb.Helper()
	rows = slices.Clone(rows)
	slices.SortStableFunc(rows, func(a, b seedRow) int {
		if c := strings.Compare(a.keyID, b.keyID); c != 0 {
			return c
		}
		if c := strings.Compare(a.asset, b.asset); c != 0 {
			return c
		}
		return a.at.Compare(b.at)
	})
	ctx := context.Background()
	err := s.WriteTx(ctx, func(tx *store.Tx) error {
		st, err := tx.PrepareContext(ctx, qInsertUsage)
		if err != nil {
			return err
		}
		defer st.Close()
		var head usageHead
		for i, r := range rows {
			if i == 0 || r.keyID != rows[i-1].keyID || r.asset != rows[i-1].asset {
				if head, err = usageSums.lastRow(ctx, tx, r.keyID, r.asset); err != nil {
					return err
				}
			}
			v, ok := new(big.Int).SetString(r.amount, 10)
			if !ok || v.Sign() <= 0 {
				return fmt.Errorf("seed amount %q", r.amount)
			}
			at, cum := r.at.UTC().UnixNano(), v
			if head.found {
				at, cum = max(at, head.at), v.Add(v, head.cum)
			}
			if _, err := st.ExecContext(ctx, r.requestID, r.keyID, r.asset, r.amount, at, cum.String()); err != nil {
				return err
			}
			head = usageHead{found: true, at: at, cum: cum}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("seeding usage: %v", err)
	}
}

// modelRow is a usage row as the differential test's model records it.
type modelRow struct {
	key, asset, req string
	amount          *big.Int
	at              int64 // as recorded: max(now, the newest remaining row's at)
	rawAt           int64 // the evaluation's now
	released        bool
	pruned          bool
}

// usageModel is the brute-force reference: the schema-8 semantics, a sum
// over every remaining, unreleased row with at > now-d.
type usageModel struct{ rows []*modelRow }

func (m *usageModel) sum(key, asset string, now int64, d time.Duration, raw bool) *big.Int {
	total := new(big.Int)
	for _, r := range m.rows {
		at := r.at
		if raw {
			at = r.rawAt
		}
		if r.key == key && r.asset == asset && !r.pruned && !r.released && at > now-int64(d) {
			total.Add(total, r.amount)
		}
	}
	return total
}

func (m *usageModel) record(key, asset, req string, amount *big.Int, now int64) {
	at := now
	for _, r := range m.rows {
		if r.key == key && r.asset == asset && !r.pruned {
			at = max(at, r.at)
		}
	}
	m.rows = append(m.rows, &modelRow{key: key, asset: asset, req: req, amount: new(big.Int).Set(amount), at: at, rawAt: now})
}

// release marks req's remaining rows released, and says whether one of
// them comes before an already released row of its key and asset (the
// release entries after it get their running totals raised).
func (m *usageModel) release(req string) (outOfOrder bool) {
	for i, r := range m.rows {
		if r.req != req || r.pruned || r.released {
			continue
		}
		r.released = true
		for _, later := range m.rows[i+1:] {
			if later.key == r.key && later.asset == r.asset && later.released && !later.pruned {
				outOfOrder = true
			}
		}
	}
	return outOfOrder
}

func (m *usageModel) prune(before int64, limit int) int64 {
	var n int64
	for _, r := range m.rows {
		if n == int64(limit) {
			break
		}
		if !r.pruned && r.at <= before {
			r.pruned = true
			n++
		}
	}
	return n
}

// TestWindowUsageDifferential drives the engine through thousands of random
// steps — evaluations (recorded or refused, one or two assets, amounts up to
// 2^256), releases (repeated, of pruned requests, of unknown ids), prunes
// (bounded, some reaching into the windows) and a clock that mostly moves
// forward but also stands still and steps back — and after every step
// compares every window's usage with a brute-force sum over the model of the
// recorded history (the schema-8 query's semantics). Each decision must be
// the one the model predicts, and the table must hold exactly the model's
// rows with consistent running totals.
func TestWindowUsageDifferential(t *testing.T) {
	steps := 4000
	if testing.Short() {
		steps = 600
	}
	s, _ := newStore(t)
	e := newEngine(t)
	ctx := context.Background()
	token := strings.ToLower(usdc)
	two256 := new(big.Int).Lsh(big.NewInt(1), 256)
	type keyCfg struct {
		id    string
		rules Rules
		// amount draws a transfer amount.
		amount func(r *rand.Rand) *big.Int
	}
	small := func(r *rand.Rand) *big.Int {
		if r.IntN(10) == 0 {
			return big.NewInt(0)
		}
		return big.NewInt(1 + r.Int64N(100))
	}
	huge := func(r *rand.Rand) *big.Int {
		// Up to 2^256, of every magnitude.
		if r.IntN(8) == 0 {
			return randAmount(r, 256)
		}
		return randAmount(r, 1+r.IntN(256))
	}
	lim := func(n int64) string { return new(big.Int).Mul(big.NewInt(n), two256).String() }
	keys := []keyCfg{
		{"k-small", Rules{Windows: []Window{
			{"ETH", "1m", "200"}, {"ETH", "10m", "700"}, {"eth", "1h", "2500"}, {"ETH", "10m", "650"},
			{usdc, "30s", "100"}, {usdc, "2h", "4000"},
		}}, small},
		// Limits of a few 2^256: at most 78 digits (maxAmountDigits).
		{"k-huge", Rules{Windows: []Window{
			{"ETH", "5m", lim(2)}, {"ETH", "1h", lim(8)}, {usdc, "20m", lim(4)},
		}}, huge},
		// More window lengths on one asset than windowUsage reads in its
		// one statement: the rest take a seek each.
		{"k-many", Rules{Windows: []Window{
			{"ETH", "30s", "150"}, {"ETH", "2m", "300"}, {"ETH", "5m", "500"}, {"ETH", "2m", "280"},
			{"ETH", "15m", "900"}, {"ETH", "45m", "1800"}, {"ETH", "90m", "3000"},
		}}, small},
	}
	compiled := map[string]*compiled{}
	for _, k := range keys {
		addKey(t, s, k.id)
		setRules(t, s, k.id, k.rules)
		c, err := k.rules.compile()
		if err != nil {
			t.Fatal(err)
		}
		compiled[k.id] = c
	}
	windowsOf := func(key, asset string) []window {
		var ws []window
		for _, w := range compiled[key].windows {
			if w.asset == asset {
				ws = append(ws, w)
			}
		}
		return ws
	}

	rng := rand.New(rand.NewPCG(8, 2030))
	m := &usageModel{}
	now := t0
	var requests []string
	counts := map[string]int{}

	check := func(tx *store.Tx, step int) error {
		for _, k := range keys {
			for _, asset := range []string{"eth", token} {
				ws := windowsOf(k.id, asset)
				used, _, err := windowUsage(ctx, tx, k.id, asset, now.UnixNano(), ws)
				if err != nil {
					return fmt.Errorf("step %d: windowUsage %s %s: %w", step, k.id, asset, err)
				}
				for i, w := range ws {
					want := m.sum(k.id, asset, now.UnixNano(), w.d, false)
					if used[i].Cmp(want) != 0 {
						return fmt.Errorf("step %d: %s %s window %s at %v: usage %s, brute force %s",
							step, k.id, asset, w.d, now.Sub(t0), used[i], want)
					}
					// Recording at max(now, previous at) only ever counts more
					// than recording at now would have.
					if raw := m.sum(k.id, asset, now.UnixNano(), w.d, true); used[i].Cmp(raw) < 0 {
						return fmt.Errorf("step %d: %s %s window %s: usage %s below the raw-clock sum %s", step, k.id, asset, w.d, used[i], raw)
					}
				}
			}
		}
		return nil
	}

	step := 0
	for step < steps {
		err := s.WriteTx(ctx, func(tx *store.Tx) error {
			for range 1 + rng.IntN(8) {
				step++
				switch op := rng.IntN(100); {
				case op < 62:
					k := keys[rng.IntN(len(keys))]
					var in Intent
					switch rng.IntN(3) {
					case 0:
						in = ethTransfer(alice, "0")
						in.Transfers[0].Amount = k.amount(rng)
					case 1:
						in = tokenTransfer(usdc, alice, "0")
						in.Transfers[0].Amount = k.amount(rng)
					default:
						in = Intent{Chain: ChainEthereum, Kind: KindTransfer, Transfers: []Transfer{
							{Asset: "ETH", To: alice, Amount: k.amount(rng)},
							{Asset: usdc, To: bob, Amount: k.amount(rng)},
							{Asset: "eth", To: bob, Amount: k.amount(rng)},
						}}
					}
					id := fmt.Sprintf("req-%05d", step)
					p, err := checkRequest(Request{KeyID: k.id, RequestID: id, Intent: in})
					if err != nil {
						return err
					}
					// The model's decision: the first window (assets sorted,
					// windows in rule order) that the request would overflow.
					wantRule := ""
				decide:
					for _, a := range p.assets {
						if p.totals[a].Sign() == 0 {
							continue
						}
						for _, w := range windowsOf(k.id, a) {
							after := new(big.Int).Add(m.sum(k.id, a, now.UnixNano(), w.d, false), p.totals[a])
							if after.Cmp(w.max) > 0 {
								wantRule = w.rule
								break decide
							}
						}
					}
					d, err := e.Evaluate(ctx, tx, Request{KeyID: k.id, Principal: "p", RequestID: id, Intent: in, Now: now})
					if err != nil {
						return fmt.Errorf("step %d: %w", step, err)
					}
					if wantRule == "" {
						if d.Outcome != Allow {
							return fmt.Errorf("step %d: %+v; the model allows it", step, d)
						}
						for _, a := range p.assets {
							if p.totals[a].Sign() > 0 {
								m.record(k.id, a, id, p.totals[a], now.UnixNano())
							}
						}
						requests = append(requests, id)
						counts["allow"]++
						counts["allow "+k.id]++
					} else {
						if d.Outcome != Deny || d.Code != CodeLimitExceeded || d.Rule != wantRule {
							return fmt.Errorf("step %d: %+v; the model refuses it under %q", step, d, wantRule)
						}
						counts["deny"]++
						counts["deny "+k.id]++
					}
				case op < 80:
					id := fmt.Sprintf("unknown-%d", step)
					if len(requests) > 0 && rng.IntN(6) > 0 {
						// Mostly recent requests, sometimes any (released,
						// pruned or not).
						i := len(requests) - 1 - rng.IntN(min(len(requests), 40))
						if rng.IntN(4) == 0 {
							i = rng.IntN(len(requests))
						}
						id = requests[i]
					}
					if err := e.Release(ctx, tx, id); err != nil {
						return err
					}
					if m.release(id) {
						counts["release before others"]++
					}
					counts["release"]++
				case op < 84:
					before := now.Add(-time.Duration(rng.Int64N(3*3600)) * time.Second)
					limit := 1 + rng.IntN(20)
					n, err := Prune(ctx, tx, before, limit)
					if err != nil {
						return err
					}
					if want := m.prune(before.UnixNano(), limit); n != want {
						return fmt.Errorf("step %d: Prune deleted %d rows; the model %d", step, n, want)
					}
					counts["prune"]++
				default:
					// Evaluate only (a dry run) at this instant.
				}
				// Whole seconds, so rows often sit exactly on a window's
				// boundary (now-d: out) and share their at.
				secs := func(d time.Duration) time.Duration {
					return time.Duration(rng.Int64N(int64(d/time.Second))) * time.Second
				}
				switch c := rng.IntN(100); {
				case c < 10: // the same instant
				case c < 85:
					now = now.Add(secs(20 * time.Second))
				case c < 95:
					now = now.Add(secs(5 * time.Minute))
				case c < 96:
					now = now.Add(secs(2 * time.Hour))
				case c < 98:
					now = now.Add(-secs(30 * time.Minute))
					counts["clock back"]++
				default:
					// Back by a few seconds: at ties with what follows.
					now = now.Add(-secs(10 * time.Second))
					counts["clock back"]++
				}
				if err := check(tx, step); err != nil {
					return err
				}
				if step%250 == 0 {
					if err := checkUsageTable(tx, m); err != nil {
						return fmt.Errorf("step %d: %w", step, err)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := s.WriteTx(ctx, func(tx *store.Tx) error { return checkUsageTable(tx, m) })
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"allow", "deny", "release", "release before others", "prune", "clock back"} {
		if counts[c] < steps/100 {
			t.Fatalf("too few %q steps to mean anything: %v", c, counts)
		}
	}
	remaining := 0
	for _, r := range m.rows {
		if !r.pruned {
			remaining++
		}
	}
	t.Logf("%d steps: %v; %d usage rows recorded, %d left", steps, counts, len(m.rows), remaining)
}

// randAmount returns a random amount in [1, 2^bits].
func randAmount(r *rand.Rand, bits int) *big.Int {
	b := make([]byte, (bits+7)/8)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	v := new(big.Int).SetBytes(b)
	v.Rsh(v, uint(len(b)*8-bits))
	return v.Add(v, big.NewInt(1))
}

// checkUsageTable compares policy_usage and policy_usage_released with the
// model: the same rows in the same order, at never decreasing and running
// totals consistent per (key_id, asset), and one release entry per released
// remaining row — a copy of the row, with its own consistent running total
// over the released rows — and none for anything else.
func checkUsageTable(tx *store.Tx, m *usageModel) error {
	ctx := context.Background()
	rows, err := tx.QueryContext(ctx, `SELECT u.seq, u.request_id, u.key_id, u.asset, u.amount, u.at, u.cum,
		r.seq IS NOT NULL, COALESCE(r.request_id = u.request_id AND r.key_id = u.key_id AND r.asset = u.asset
			AND r.amount = u.amount AND r.at = u.at, 1), COALESCE(r.cum, '')
		FROM policy_usage AS u LEFT JOIN policy_usage_released AS r ON r.seq = u.seq ORDER BY u.seq`)
	if err != nil {
		return err
	}
	defer rows.Close()
	var want []*modelRow
	for _, r := range m.rows {
		if !r.pruned {
			want = append(want, r)
		}
	}
	type groupState struct {
		at          int64
		cum, relCum *big.Int
	}
	groups := map[string]*groupState{}
	i := 0
	for rows.Next() {
		var seq, at int64
		var req, key, asset, amount, cum, relCum string
		var released, copied bool
		if err := rows.Scan(&seq, &req, &key, &asset, &amount, &at, &cum, &released, &copied, &relCum); err != nil {
			return err
		}
		if i >= len(want) {
			return fmt.Errorf("usage row %d (%s) is not in the model", seq, req)
		}
		w := want[i]
		i++
		if req != w.req || key != w.key || asset != w.asset || amount != w.amount.String() || at != w.at || released != w.released || !copied {
			return fmt.Errorf("usage row %d: %s %s %s %s at %d released %v (copied %v); model %+v", seq, req, key, asset, amount, at, released, copied, *w)
		}
		c, ok := new(big.Int).SetString(cum, 10)
		if !ok {
			return fmt.Errorf("usage row %d: cum %q", seq, cum)
		}
		g := groups[key+"/"+asset]
		switch {
		case g == nil && c.Cmp(w.amount) < 0:
			return fmt.Errorf("usage row %d: first remaining row's cum %s < amount %s", seq, c, w.amount)
		case g != nil && at < g.at:
			return fmt.Errorf("usage row %d: at %d before the previous row's %d", seq, at, g.at)
		case g != nil && new(big.Int).Add(g.cum, w.amount).Cmp(c) != 0:
			return fmt.Errorf("usage row %d: cum %s != %s + %s", seq, c, g.cum, w.amount)
		}
		if g == nil {
			g = &groupState{}
			groups[key+"/"+asset] = g
		}
		g.at, g.cum = at, c
		if !released {
			continue
		}
		rc, ok := new(big.Int).SetString(relCum, 10)
		switch {
		case !ok:
			return fmt.Errorf("release entry %d: cum %q", seq, relCum)
		case g.relCum == nil && rc.Cmp(w.amount) < 0:
			return fmt.Errorf("release entry %d: first remaining entry's cum %s < amount %s", seq, rc, w.amount)
		case g.relCum != nil && new(big.Int).Add(g.relCum, w.amount).Cmp(rc) != 0:
			return fmt.Errorf("release entry %d: cum %s != %s + %s", seq, rc, g.relCum, w.amount)
		}
		g.relCum = rc
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if i != len(want) {
		return fmt.Errorf("%d usage rows; the model has %d", i, len(want))
	}
	var orphans int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM policy_usage_released AS r
		WHERE NOT EXISTS (SELECT 1 FROM policy_usage AS u WHERE u.seq = r.seq)`).Scan(&orphans); err != nil || orphans != 0 {
		return fmt.Errorf("%d release entries without their usage row (%v)", orphans, err)
	}
	return nil
}

// TestUsageQueryPlans: the reads of an evaluation (its rules and rate
// buckets, its windows) and of Release are index seeks — SQLite's EXPLAIN
// QUERY PLAN shows a SEARCH of the expected index, never a SCAN of a table
// or an index, and no sort — with the tables empty and with thousands of
// rows, released ones among them, after ANALYZE.
func TestUsageQueryPlans(t *testing.T) {
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	ctx := context.Background()
	const (
		usageKA    = "SEARCH policy_usage USING INDEX policy_usage_window (key_id=? AND asset=?)"
		usageAt    = "SEARCH policy_usage USING INDEX policy_usage_window (key_id=? AND asset=? AND at<?)"
		releasedKA = "SEARCH policy_usage_released USING INDEX policy_usage_released_window (key_id=? AND asset=?)"
		releasedAt = "SEARCH policy_usage_released USING INDEX policy_usage_released_window (key_id=? AND asset=? AND at<?)"
		bucketSeek = "SEARCH policy_buckets USING INDEX sqlite_autoindex_policy_buckets_1 (scope=? AND key_id=? AND principal=?)"
	)
	windowSeeks := func(times int) []string {
		s := []string{usageKA, usageKA, usageKA, usageKA, releasedKA, releasedKA, releasedKA, releasedKA}
		for range times {
			s = append(s, usageAt, releasedAt)
		}
		return s
	}
	plans := []struct {
		name, query string
		args        []any
		searches    []string // exactly these, in any order
	}{
		{"last usage", usageSums.last, []any{"k", "eth"}, []string{usageKA}},
		{"usage up to", usageSums.upTo, []any{"k", "eth", int64(1)}, []string{usageAt}},
		{"last released", releasedSums.last, []any{"k", "eth"}, []string{releasedKA}},
		{"released up to", releasedSums.upTo, []any{"k", "eth", int64(1)}, []string{releasedAt}},
		// What an evaluation reads, one statement per asset: the seeks above.
		{"window read, 1 time", windowReads[1], []any{"k", "eth", int64(1)}, windowSeeks(1)},
		{"window read, 4 times", windowReads[4], []any{"k", "eth", int64(1), int64(2), int64(3), int64(4)}, windowSeeks(4)},
		// The rules, read on every evaluation, with the rate buckets.
		{"current rules", currentRulesQuery, []any{"k"}, []string{"SEARCH policy_rules USING INDEX sqlite_autoindex_policy_rules_1 (key_id=?)"}},
		{"evaluation read", evaluationRead, []any{"k", "client"}, []string{"SEARCH policy_rules USING INDEX sqlite_autoindex_policy_rules_1 (key_id=?)",
			bucketSeek, bucketSeek, bucketSeek, bucketSeek}},
		// Release's reads: few rows, but seeks all the same.
		{"unreleased", qUnreleased, []any{"r"}, []string{
			"SEARCH u USING INDEX policy_usage_request (request_id=?)", "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)"}},
		{"released before", qReleasedBefore, []any{"k", "eth", int64(1), int64(1)}, []string{releasedAt}},
		{"released after", qReleasedAfter, []any{"k", "eth", int64(1), int64(1)}, []string{
			"SEARCH policy_usage_released USING INDEX policy_usage_released_window (key_id=? AND asset=? AND at>?)"}},
	}
	explain := func(label string) {
		t.Helper()
		err := s.WriteTx(ctx, func(tx *store.Tx) error {
			for _, p := range plans {
				rows, err := tx.QueryContext(ctx, "EXPLAIN QUERY PLAN "+p.query, p.args...)
				if err != nil {
					return fmt.Errorf("%s: %w", p.name, err)
				}
				var details, searches []string
				for rows.Next() {
					var id, parent, unused int
					var detail string
					if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
						rows.Close()
						return err
					}
					details = append(details, detail)
					switch {
					case strings.HasPrefix(detail, "SEARCH "):
						detail = strings.Replace(detail, " COVERING INDEX ", " INDEX ", 1) // the seek all the same
						searches = append(searches, strings.TrimSuffix(strings.Replace(detail, " EXISTS ", " ", 1), " LEFT-JOIN"))
					case detail == "SCAN CONSTANT ROW": // a SELECT of scalar subqueries, no table
					case strings.Contains(detail, "SCAN"), strings.Contains(detail, "TEMP B-TREE"):
						t.Errorf("%s, %s: %q in plan %q", label, p.name, detail, details)
					}
				}
				rows.Close()
				slices.Sort(searches)
				want := slices.Sorted(slices.Values(p.searches))
				if !slices.Equal(searches, want) {
					t.Errorf("%s, %s: seeks\n  %q\nwant\n  %q\nplan %q", label, p.name, searches, want, details)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	explain("empty")
	ats := make([]time.Time, 5000)
	for i := range ats {
		ats[i] = t0.Add(time.Duration(i) * time.Second)
	}
	seedUsage(t, s, "k", "eth", "7", ats)
	err := s.WriteTx(ctx, func(tx *store.Tx) error {
		for i := 0; i < len(ats); i += 10 {
			if err := e.Release(ctx, tx, seedRequestID(i)); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `ANALYZE`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	explain("5,000 rows, analyzed")
}

// TestReleaseAndPruneKeepSums walks the cases the running totals make
// delicate, with known numbers: a release inside one window but not
// another, releasing twice, after pruning and unknown ids, a prune that
// reaches into a window (the window sums what remains, as before), every
// row pruned, and a clock step back recorded at the previous time.
func TestReleaseAndPruneKeepSums(t *testing.T) {
	s, _ := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	setRules(t, s, "k", Rules{Windows: []Window{{"ETH", "1h", "1000"}, {"ETH", "10m", "1000"}}})
	ctx := context.Background()
	usage := func(now time.Time) (h1, m10 string) {
		t.Helper()
		c, _ := Rules{Windows: []Window{{"ETH", "1h", "1"}, {"ETH", "10m", "1"}}}.compile()
		var used []*big.Int
		err := s.WriteTx(ctx, func(tx *store.Tx) error {
			var err error
			used, _, err = windowUsage(ctx, tx, "k", "eth", now.UnixNano(), c.windows)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return used[0].String(), used[1].String()
	}
	want := func(now time.Time, h1, m10 string) {
		t.Helper()
		if g1, g10 := usage(now); g1 != h1 || g10 != m10 {
			t.Fatalf("at %v: 1h %s, 10m %s; want %s, %s", now.Sub(t0), g1, g10, h1, m10)
		}
	}
	release := func(ids ...string) {
		t.Helper()
		err := s.WriteTx(ctx, func(tx *store.Tx) error {
			for _, id := range ids {
				if err := e.Release(ctx, tx, id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	prune := func(before time.Time, limit int, wantN int64) {
		t.Helper()
		var n int64
		err := s.WriteTx(ctx, func(tx *store.Tx) error {
			var err error
			n, err = Prune(ctx, tx, before, limit)
			return err
		})
		if err != nil || n != wantN {
			t.Fatalf("Prune(%v, %d) = %d, %v; want %d", before.Sub(t0), limit, n, err, wantN)
		}
	}
	for i, a := range []string{"1", "2", "4", "8", "16"} { // at 0, 10, 20, 30, 40 min
		if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: reqID("r", i),
			Intent: ethTransfer(alice, a), Now: t0.Add(time.Duration(i) * 10 * time.Minute)}); d.Outcome != Allow {
			t.Fatal(d)
		}
	}
	now := t0.Add(45 * time.Minute)
	want(now, "31", "16")
	release(reqID("r", 1), reqID("r", 1), "no-such-request") // the 2 at 10 min: in 1h only
	want(now, "29", "16")
	release(reqID("r", 4)) // the 16 at 40 min: in both
	want(now, "13", "0")
	// Pruning up to 20 min (inside the 1h window: the contract says not to)
	// deletes the 1, the released 2 and the 4: the window sums what is left.
	prune(t0.Add(20*time.Minute), 10, 3)
	want(now, "8", "0")
	want(t0.Add(-time.Hour), "8", "8") // everything left is "after now" for a clock far back
	release(reqID("r", 0), reqID("r", 1), reqID("r", 4))
	want(now, "8", "0")
	// A clock 50 min back: recorded at 40 min (the newest row's at), so it
	// still counts in the 10m window at 45 min.
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "back", Intent: ethTransfer(alice, "32"), Now: now.Add(-50 * time.Minute)}); d.Outcome != Allow {
		t.Fatal(d)
	}
	want(now, "40", "32")
	want(t0.Add(50*time.Minute+time.Nanosecond), "40", "0") // 40 min + 10 min: the step-back row has left the 10m window
	prune(t0.Add(3*time.Hour), 100, 3)                      // everything
	want(now, "0", "0")
	if n := count(t, s, `SELECT COUNT(*) FROM policy_usage_released`); n != 0 {
		t.Fatalf("%d release entries after pruning every usage row", n)
	}
	// A new history starts its running total afresh.
	if d := evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "again", Intent: ethTransfer(alice, "5"), Now: now}); d.Outcome != Allow {
		t.Fatal(d)
	}
	want(now, "5", "5")
	var cum string
	if err := s.WriteTx(ctx, func(tx *store.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT cum FROM policy_usage WHERE request_id = 'again'`).Scan(&cum)
	}); err != nil || cum != "5" {
		t.Fatalf("cum after a full prune: %q, %v", cum, err)
	}
}

// TestCorruptUsageFailsClosed: a running total that is not a decimal, or
// that goes backwards, is an error, never a decision.
func TestCorruptUsageFailsClosed(t *testing.T) {
	for name, corrupt := range map[string]string{
		"not a decimal":       `UPDATE policy_usage SET cum = '12x' WHERE request_id = 'b'`,
		"negative":            `UPDATE policy_usage SET cum = '-1' WHERE request_id = 'b'`,
		"running total falls": `UPDATE policy_usage SET cum = '0' WHERE request_id = 'b'`,
	} {
		t.Run(name, func(t *testing.T) {
			s, _ := newStore(t)
			e := newEngine(t)
			addKey(t, s, "k")
			setRules(t, s, "k", Rules{Windows: []Window{{"ETH", "1h", "100"}}})
			evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "a", Intent: ethTransfer(alice, "3"), Now: t0.Add(-2 * time.Hour)})
			evaluate(t, s, e, Request{KeyID: "k", Principal: "p", RequestID: "b", Intent: ethTransfer(alice, "4"), Now: t0})
			ctx := context.Background()
			err := s.WriteTx(ctx, func(tx *store.Tx) error {
				if _, err := tx.ExecContext(ctx, corrupt); err != nil {
					return err
				}
				_, err := e.Evaluate(ctx, tx, Request{KeyID: "k", Principal: "p", RequestID: "c", Intent: ethTransfer(alice, "1"), Now: t0})
				return err
			})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Evaluate over corrupt usage: %v; want ErrCorrupt", err)
			}
		})
	}
}

// TestUsageMigratedFromSchema8: usage rows left by the schema-8 code (no
// running totals; a clock step back left rows out of time order) give the
// same window usage after store.Open has migrated them, and new usage is
// appended after them.
func TestUsageMigratedFromSchema8(t *testing.T) {
	s, path := newStore(t)
	ctx := context.Background()
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v != 11 {
		t.Fatalf("schema %d: this test turns a schema-11 database back into a schema-8 one; update it for the migrations after 11", v)
	}
	for _, k := range []string{"k1", "k2"} {
		addKey(t, s, k)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		// As 0007's Go step left the checkpoints' delete trigger, before 0011.
		`DROP TRIGGER audit_checkpoints_append_only_delete`,
		`CREATE TRIGGER audit_checkpoints_append_only_delete BEFORE DELETE ON audit_checkpoints
		BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END`,
		`DELETE FROM schema_migrations WHERE version = 11`,
		`DROP TABLE policy_usage_released`,
		`DROP TABLE policy_usage`,
		// As 0004_policy.sql created it.
		`CREATE TABLE policy_usage (
		    request_id TEXT    NOT NULL,
		    key_id     TEXT    NOT NULL,
		    asset      TEXT    NOT NULL,
		    amount     TEXT    NOT NULL,
		    at         INTEGER NOT NULL
		) STRICT`,
		`CREATE INDEX policy_usage_window ON policy_usage (key_id, asset, at, amount)`,
		`CREATE INDEX policy_usage_request ON policy_usage (request_id)`,
		`DELETE FROM schema_migrations WHERE version = 9`,
		// As 0007's Go step left the chain's delete trigger, before 0010.
		`DROP TRIGGER events_append_only_delete`,
		`DROP TABLE audit_archives`,
		`CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
		BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END`,
		`DELETE FROM schema_migrations WHERE version = 10`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	rng := rand.New(rand.NewPCG(9, 8))
	m := &usageModel{}
	token := strings.ToLower(usdc)
	at := t0
	first, last := at, at
	for i := range 3000 {
		switch c := rng.IntN(20); {
		case c == 0:
			at = at.Add(-time.Duration(rng.Int64N(int64(time.Hour)))) // the clock stepped back
		case c < 4: // the same instant
		default:
			at = at.Add(time.Duration(rng.Int64N(int64(2 * time.Minute))))
		}
		key, asset := []string{"k1", "k2"}[rng.IntN(2)], []string{"eth", token}[rng.IntN(2)]
		amount := randAmount(rng, 1+rng.IntN(256))
		id := fmt.Sprintf("old-%05d", i)
		if _, err := db.Exec(`INSERT INTO policy_usage (request_id, key_id, asset, amount, at) VALUES (?, ?, ?, ?, ?)`,
			id, key, asset, amount.String(), at.UnixNano()); err != nil {
			t.Fatal(err)
		}
		first, last = minTime(first, at), maxTime(last, at)
		// The schema-8 model: at is as recorded, unclamped.
		m.rows = append(m.rows, &modelRow{key: key, asset: asset, req: id, amount: amount, at: at.UnixNano(), rawAt: at.UnixNano()})
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path)
	if v, err := s.SchemaVersion(ctx); err != nil || v != 11 {
		t.Fatalf("schema %d after reopening (%v); want 11", v, err)
	}
	ws := []window{{d: time.Minute}, {d: 10 * time.Minute}, {d: time.Hour}, {d: 24 * time.Hour}, {d: 400 * 24 * time.Hour}}
	end := at
	err = s.WriteTx(ctx, func(tx *store.Tx) error {
		for i := range 400 {
			// Anywhere from an hour before the oldest row to an hour after the newest.
			now := first.Add(-time.Hour + time.Duration(rng.Int64N(int64(last.Sub(first)+2*time.Hour))))
			if i == 0 {
				now = end
			}
			for _, key := range []string{"k1", "k2", "k3"} {
				for _, asset := range []string{"eth", token} {
					used, _, err := windowUsage(ctx, tx, key, asset, now.UnixNano(), ws)
					if err != nil {
						return err
					}
					for j, w := range ws {
						if want := m.sum(key, asset, now.UnixNano(), w.d, false); used[j].Cmp(want) != 0 {
							return fmt.Errorf("%s %s %s at %v: %s after migrating, %s before", key, asset, w.d, now.Sub(t0), used[j], want)
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// New usage goes after the migrated rows, even with the clock behind them.
	e := newEngine(t)
	setRules(t, s, "k1", Rules{Windows: []Window{{"ETH", "1m", bigLimit()}}})
	d := evaluate(t, s, e, Request{KeyID: "k1", Principal: "p", RequestID: "new", Intent: ethTransfer(alice, "1"), Now: t0})
	if d.Outcome != Allow {
		t.Fatal(d)
	}
	m.record("k1", "eth", "new", big.NewInt(1), t0.UnixNano())
	err = s.WriteTx(ctx, func(tx *store.Tx) error {
		for _, now := range []time.Time{t0, end, end.Add(time.Minute)} {
			used, _, err := windowUsage(ctx, tx, "k1", "eth", now.UnixNano(), ws)
			if err != nil {
				return err
			}
			for j, w := range ws {
				if want := m.sum("k1", "eth", now.UnixNano(), w.d, false); used[j].Cmp(want) != 0 {
					return fmt.Errorf("after a new row, %s at %v: %s; want %s", w.d, now.Sub(t0), used[j], want)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// bigLimit is the largest limit with a round number: 10^77 (78 digits).
func bigLimit() string { return "1" + strings.Repeat("0", 77) }

// TestDryRunOnReadOnlyPool: a dry run through a read-only connection pool
// (its reads in one read transaction) sees the window usage.
func TestDryRunOnReadOnlyPool(t *testing.T) {
	s, path := newStore(t)
	e := newEngine(t)
	addKey(t, s, "k")
	setRules(t, s, "k", Rules{Windows: []Window{{"ETH", "1h", "10"}, {"ETH", "24h", "15"}}})
	seedUsage(t, s, "k", "eth", "4", []time.Time{t0.Add(-2 * time.Hour), t0.Add(-time.Minute), t0})
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	for _, c := range []struct {
		amount string
		want   Outcome
		rule   string
	}{{"2", Allow, ""}, {"3", Deny, "windows[0]"}, {"1", Allow, ""}} {
		d, err := e.DryRun(ctx, db, Request{KeyID: "k", Principal: "p", Intent: ethTransfer(alice, c.amount), Now: t0})
		if err != nil || d.Outcome != c.want || !strings.Contains(d.Rule, c.rule) {
			t.Fatalf("dry run of %s: %+v, %v; want %v %q", c.amount, d, err, c.want, c.rule)
		}
	}
	if n := count(t, s, usageRows); n != 3 {
		t.Fatalf("%d usage rows after dry runs; want 3", n)
	}
}
