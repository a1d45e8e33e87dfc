package app

import (
	"context"
	"database/sql"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// countRows counts a table's rows, read beside the running appliance.
func countRows(t *testing.T, path, query string) int {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPruneUsageKeepsEveryPossibleWindow: policy usage is deleted only
// once it is older than the longest window rules may set (and a day), in
// an audited transaction; younger usage, which some rules could still
// count, is kept.
func TestPruneUsageKeepsEveryPossibleWindow(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 2)
	q.setPolicy(`{"windows":[{"asset":"ETH","duration":"24h","max":"1000"}]}`)
	c := q.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000e1")
	for i := range 3 {
		if a := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)), fmt.Sprint("p-", i))); a.status != 200 {
			t.Fatalf("sign %d: %d %s", i, a.status, a.body)
		}
	}
	path := q.cfg.Store.Path
	const usage, pruned = `SELECT count(*) FROM policy_usage`, `SELECT count(*) FROM events WHERE kind = 'usage_pruned'`
	if n := countRows(t, path, usage); n != 3 {
		t.Fatalf("%d usage rows after 3 signed requests", n)
	}
	ctx := context.Background()
	// 400 days on: a 400-day window could still count them.
	if n, err := q.app.pruneUsage(ctx, time.Now().Add(400*24*time.Hour)); err != nil || n != 0 {
		t.Fatalf("prune at 400 days: %d, %v", n, err)
	}
	if countRows(t, path, usage) != 3 || countRows(t, path, pruned) != 0 {
		t.Fatal("usage that a window could still count was pruned, or an empty prune was audited")
	}
	// Past every window and the day's margin.
	if n, err := q.app.pruneUsage(ctx, time.Now().Add(usageRetention+time.Minute)); err != nil || n != 3 {
		t.Fatalf("prune past the retention: %d, %v", n, err)
	}
	if countRows(t, path, usage) != 0 || countRows(t, path, pruned) != 1 {
		t.Fatalf("after the prune: %d usage rows, %d usage_pruned entries", countRows(t, path, usage), countRows(t, path, pruned))
	}
	// The window goes on from what is left.
	if a := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 3, to, big.NewInt(1)), "p-3")); a.status != 200 {
		t.Fatalf("sign after the prune: %d %s", a.status, a.body)
	}
}

// TestPruneRequestsByRetention: with retention.requests set, requests that
// finished longer ago are deleted in an audited transaction (their own
// audit entries stay); the answer for a pruned id is 404, and its
// idempotency key signs anew. Without the setting nothing is deleted.
func TestPruneRequestsByRetention(t *testing.T) {
	e := newEnvWith(t, "retention: {requests: 48h}\n")
	e.start()
	c := e.client("client")
	to := common.HexToAddress("0x00000000000000000000000000000000000000e1")
	var ids []string
	for i := range 3 {
		a := e.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, uint64(i), to, big.NewInt(1)), fmt.Sprint("r-", i)))
		if a.status != 200 {
			t.Fatalf("sign %d: %d %s", i, a.status, a.body)
		}
		ids = append(ids, a.json(t)["request_id"].(string))
	}
	path := e.cfg.Store.Path
	const requests, pruned = `SELECT count(*) FROM requests`, `SELECT count(*) FROM events WHERE kind = 'requests_pruned'`
	signedEntries := countRows(t, path, `SELECT count(*) FROM events WHERE kind = 'request_signed'`)
	ctx := context.Background()
	// Two days less a minute on: kept.
	if n, err := e.app.pruneRequests(ctx, time.Now().Add(47*time.Hour)); err != nil || n != 0 {
		t.Fatalf("prune inside the retention: %d, %v", n, err)
	}
	if countRows(t, path, requests) != 3 || countRows(t, path, pruned) != 0 {
		t.Fatal("a request inside the retention was pruned, or an empty prune was audited")
	}
	// Past it: all three go, in one audited batch.
	e.app.maintainOnce(ctx, time.Now().Add(49*time.Hour))
	if countRows(t, path, requests) != 0 || countRows(t, path, pruned) != 1 {
		t.Fatalf("after the prune: %d requests, %d requests_pruned entries", countRows(t, path, requests), countRows(t, path, pruned))
	}
	if v := retentionMetric(t, e.app, "appliance_retention_deleted_total", "requests"); v != 3 {
		t.Fatalf("retention_deleted_total{what=requests} = %v, want 3", v)
	}
	if v := retentionMetric(t, e.app, "appliance_retention_last_success_timestamp_seconds", "requests"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("retention_last_success_timestamp_seconds{what=requests} = %v", v)
	}
	if n := countRows(t, path, `SELECT count(*) FROM events WHERE kind = 'request_signed'`); n != signedEntries {
		t.Fatalf("%d request_signed entries after the prune, %d before", n, signedEntries)
	}
	if a := e.must(c, "GET", "/v1/requests/"+ids[0], nil); a.status != 404 {
		t.Fatalf("a pruned request: %d %s", a.status, a.body)
	}
	// The key is forgotten: the same request signs again, under a new id.
	a := e.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "r-0"))
	if a.status != 200 || a.json(t)["request_id"] == ids[0] {
		t.Fatalf("the pruned request's key: %d %s", a.status, a.body)
	}
	if _, err := CheckIntegrity(ctx, path, false); err != nil {
		t.Fatalf("database and audit chain after the prune: %v", err)
	}
}

// TestPruneRequestsOffByDefault: without retention.requests, maintenance
// keeps every request however old.
func TestPruneRequestsOffByDefault(t *testing.T) {
	e := newEnv(t)
	e.start()
	to := common.HexToAddress("0x00000000000000000000000000000000000000e1")
	if a := e.must(e.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "k-0")); a.status != 200 {
		t.Fatalf("sign: %d %s", a.status, a.body)
	}
	e.app.maintainOnce(context.Background(), time.Now().Add(10*365*24*time.Hour))
	if n := countRows(t, e.cfg.Store.Path, `SELECT count(*) FROM requests`); n != 1 {
		t.Fatalf("%d requests after maintenance with no retention", n)
	}
}

// retentionMetric reads one retention metric of the running appliance by
// its "what" label (-1 when absent).
func retentionMetric(t *testing.T, a *App, name, what string) float64 {
	t.Helper()
	fams, err := a.obs.metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "what" && l.GetValue() == what {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// TestMaintainSkipsWhatIsOff: a step whose retention is off leaves no
// trace in the metrics; policy usage pruning always runs.
func TestMaintainSkipsWhatIsOff(t *testing.T) {
	e := newEnv(t)
	e.start()
	e.app.maintainOnce(context.Background(), time.Now())
	if v := retentionMetric(t, e.app, "appliance_retention_last_success_timestamp_seconds", "policy_usage"); v <= 0 {
		t.Fatalf("policy usage pass not recorded: %v", v)
	}
	for _, what := range []string{"requests", "audit_entries", "audit_checkpoints"} {
		if v := retentionMetric(t, e.app, "appliance_retention_last_success_timestamp_seconds", what); v != -1 {
			t.Fatalf("%s: a pass recorded with retention off: %v", what, v)
		}
	}
}
