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
