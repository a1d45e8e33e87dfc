package crashtest

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	_ "github.com/mattn/go-sqlite3" // the driver the appliance uses

	"github.com/custodysigner/appliance/internal/loadgen"
)

// dbRequest is a row of the requests table.
type dbRequest struct {
	id, principal, key, keyID, state, txHash, psbt string
	signedTx                                       []byte
}

func readRequests(ctx context.Context, db *sql.DB) (map[string]dbRequest, error) {
	rows, err := db.QueryContext(ctx, `SELECT id, principal, idempotency_key, key_id, state, coalesce(signed_tx, x''), tx_hash, signed_psbt FROM requests`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]dbRequest{}
	for rows.Next() {
		var r dbRequest
		if err := rows.Scan(&r.id, &r.principal, &r.key, &r.keyID, &r.state, &r.signedTx, &r.txHash, &r.psbt); err != nil {
			return nil, err
		}
		if r.key == "" {
			return nil, fmt.Errorf("request %s has no idempotency key: the clients always send one", r.id)
		}
		out[r.key] = r
	}
	return out, rows.Err()
}

// compareRecord requires the record of an answered request to hold exactly
// what the client received.
func compareRecord(e *entry, r dbRequest) error {
	a := e.ans
	switch {
	case r.id != a.RequestID:
		return fmt.Errorf("key %s was answered as request %s but is recorded as request %s", e.key, a.RequestID, r.id)
	case r.state != "signed":
		return fmt.Errorf("request %s (key %s) was answered signed but is recorded %s", r.id, e.key, r.state)
	case r.txHash != a.hash():
		return fmt.Errorf("request %s (key %s): recorded tx hash %s, answered %s", r.id, e.key, r.txHash, a.hash())
	}
	tx := hex.EncodeToString(r.signedTx)
	if e.req.Chain == "ethereum" {
		tx = "0x" + tx
	} else if r.psbt != a.PSBT {
		return fmt.Errorf("request %s (key %s): recorded PSBT differs from the one answered", r.id, e.key)
	}
	if tx != a.SignedTx {
		return fmt.Errorf("request %s (key %s): recorded signed_tx %s differs from the one answered %s", r.id, e.key, tx, a.SignedTx)
	}
	return nil
}

func openDB(path string, readOnly bool) (*sql.DB, error) {
	dsn := "file:" + path + "?_busy_timeout=10000"
	if readOnly {
		dsn += "&mode=ro"
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// parallel runs fn over items on n goroutines; fn gets its goroutine's index.
func parallel[T any](n int, items []T, fn func(w int, it T)) {
	ch := make(chan T)
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range ch {
				fn(w, it)
			}
		}()
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
}

// apiLimited says a 429 comes from the API's per-principal rate limit,
// (code throttled), which refuses before any work and records nothing (the
// policy's rate_limited refusal is recorded, as a denied request).
func apiLimited(raw []byte) bool {
	return strings.Contains(string(raw), `"code":"throttled"`)
}

// verifyResult is what one verification did.
type verifyResult struct {
	retried, signedOnReplay, recoveredOnReplay, neverRecorded, neverSent int
	replayed, checked, throttled                                         int
}

const verifyWorkers = 4

// verify runs with the appliance up, unsealed and idle, after a restart:
//
//  1. every key without an answer is sent again: the answer must be a
//     valid signature of the requested transaction by the key, and a second
//     replay must return it byte for byte (a request the kill left in state
//     signing is signed now, once);
//  2. answered keys are replayed (a sample; all of them when final): each
//     answer must be byte-identical to the first;
//  3. every answer not checked yet: GET /v1/requests/{id} (as the auditor)
//     must show it signed with the same transaction, and the chains'
//     reference libraries must accept its signature;
//  4. the audit chain, read on through GET /v1/audit, must link and hold
//     exactly one sign_request and, for signed requests, exactly one
//     request_signed entry per request (none for others);
//  5. the database (read-only, beside the running appliance): one record
//     per answered key and no other, each holding what was answered; one
//     window usage row per record with the transaction's amount and
//     consistent running totals; rate buckets holding exactly burst − records.
func (h *harness) verify(final bool) verifyResult {
	t := h.t
	ctx := context.Background()
	var res verifyResult
	var mu sync.Mutex
	db, err := openDB(h.db, true)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	conns := make([]*loadgen.Conn, verifyWorkers)
	for i := range conns {
		if conns[i], err = loadgen.NewConn(h.addr, "/v1/sign", h.files("client"), 30*time.Second); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
	}
	post := func(w int, e *entry) (fresh bool, ok bool) {
		status, raw, err := conns[w].Post(e.body)
		// The API's per-principal rate limit (http.rate_per_principal)
		// answers before any work: wait and send again.
		for try := 0; err == nil && status == 429 && apiLimited(raw) && try < 100; try++ {
			mu.Lock()
			res.throttled++
			mu.Unlock()
			time.Sleep(100 * time.Millisecond)
			status, raw, err = conns[w].Post(e.body)
		}
		if err != nil {
			h.violation("replay of key %s: %v", e.key, err)
			return false, false
		}
		if status != 200 {
			h.violation("replay of key %s (%s): HTTP %d %s", e.key, e.req.Chain, status, raw)
			return false, false
		}
		fresh, first, err := h.ledger.answer(e, raw, 0, true)
		switch {
		case err != nil:
			h.violation("replay of key %s: %v", e.key, err)
			return false, false
		case first != nil:
			h.violation("replay of key %s returned a DIFFERENT signed transaction: first %s, now %s", e.key, first, raw)
			return false, false
		}
		return fresh, true
	}

	// 1. Keys without an answer.
	open := h.ledger.unanswered()
	parallel(verifyWorkers, open, func(w int, e *entry) {
		var prior string
		err := db.QueryRowContext(ctx, `SELECT state FROM requests WHERE principal = ? AND idempotency_key = ?`, clientName, e.key).Scan(&prior)
		if err != nil && err != sql.ErrNoRows {
			h.violation("state of key %s: %v", e.key, err)
			return
		}
		if _, ok := post(w, e); !ok {
			return
		}
		_, a := h.ledger.answerOf(e)
		if err := h.verifySignature(e, a); err != nil {
			h.violation("key %s, answered on replay (request %s, recorded %q before): %v", e.key, a.RequestID, prior, err)
		}
		post(w, e) // stable from now on
		mu.Lock()
		defer mu.Unlock()
		res.retried++
		switch {
		case prior == "signing":
			res.signedOnReplay++
		case prior == "signed":
			res.recoveredOnReplay++
		case prior != "":
			h.violation("key %s was recorded in state %q by the kill; want signing or signed", e.key, prior)
		case e.sends > 0:
			res.neverRecorded++
		default:
			res.neverSent++
		}
	})

	// 2. Answered keys again.
	answered := h.ledger.answeredEntries()
	sample := answered
	if !final && len(sample) > 64 {
		sample = make([]*entry, 64)
		for i := range sample {
			sample[i] = answered[h.rng.IntN(len(answered))]
		}
	}
	parallel(verifyWorkers, sample, func(w int, e *entry) { post(w, e) })
	res.replayed = len(sample) + 2*len(open)

	// 3. New answers through the API, and their signatures.
	var unchecked []*entry
	for _, e := range answered {
		if !e.checked {
			unchecked = append(unchecked, e)
		}
	}
	parallel(verifyWorkers, unchecked, func(_ int, e *entry) {
		var r struct {
			State     string `json:"state"`
			KeyID     string `json:"key_id"`
			Principal string `json:"principal"`
			SignedTx  string `json:"signed_tx"`
			TxHash    string `json:"tx_hash"`
			TxID      string `json:"txid"`
			PSBT      string `json:"psbt"`
		}
		if err := h.asAuditor.Do(ctx, "GET", "/v1/requests/"+e.ans.RequestID, nil, &r); err != nil {
			h.violation("GET /v1/requests/%s (key %s, answered): %v", e.ans.RequestID, e.key, err)
			return
		}
		if r.State != "signed" || r.KeyID != e.req.KeyID || r.Principal != clientName || r.SignedTx != e.ans.SignedTx ||
			r.TxHash != e.ans.TxHash || r.TxID != e.ans.TxID || r.PSBT != e.ans.PSBT {
			h.violation("GET /v1/requests/%s does not show what key %s was answered:\n  record %+v\n  answer %s", e.ans.RequestID, e.key, r, e.raw)
			return
		}
		if err := h.verifySignature(e, e.ans); err != nil {
			h.violation("key %s (request %s): %v", e.key, e.ans.RequestID, err)
			return
		}
		mu.Lock()
		e.checked = true
		res.checked++
		mu.Unlock()
	})

	// 4. The audit chain through the API.
	if err := h.apiAudit.readAPI(ctx, h.asAuditor); err != nil {
		h.violation("%v", err)
	}
	for _, e := range answered {
		if err := h.apiAudit.checkAnswered(e); err != nil {
			h.violation("%v", err)
		}
	}

	// 5. The database.
	rows, err := readRequests(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	h.checkRecords(rows, answered, h.apiAudit, true)
	h.checkCounters(ctx, db, rows)
	return res
}

// checkRecords compares the records with the answers and the audit chain.
// complete: after the replays, so every record must be answered.
func (h *harness) checkRecords(rows map[string]dbRequest, answered []*entry, ax *auditIndex, complete bool) {
	for _, e := range answered {
		r, ok := rows[e.key]
		if !ok {
			h.violation("key %s was answered (request %s, %s) but has NO RECORD in the %s", e.key, e.ans.RequestID, e.raw, ax.name)
			continue
		}
		if err := compareRecord(e, r); err != nil {
			h.violation("%s: %v", ax.name, err)
		}
	}
	for key, r := range rows {
		e := h.ledger.get(key)
		switch {
		case e == nil:
			h.violation("%s: request %s has idempotency key %q, which no client sent", ax.name, r.id, key)
			continue
		case r.principal != clientName || r.keyID != e.req.KeyID:
			h.violation("%s: request %s is recorded for %s/%s, sent by %s for %s", ax.name, r.id, r.principal, r.keyID, clientName, e.req.KeyID)
		case complete && r.state != "signed":
			h.violation("%s: request %s (key %s) is %s after every key was replayed", ax.name, r.id, key, r.state)
		case complete && e.raw == nil:
			h.violation("%s: request %s (key %s) has no answer after every key was replayed", ax.name, r.id, key)
		}
		a := ax.reqs[r.id]
		wantSigned := 0
		if r.state == "signed" {
			wantSigned = 1
		}
		if a == nil || a.created != 1 || a.signed != wantSigned {
			var got reqAudit
			if a != nil {
				got = *a
			}
			h.violation("%s: request %s (key %s, %s) has %d sign_request and %d request_signed entries in the audit chain, want 1 and %d",
				ax.name, r.id, key, r.state, got.created, got.signed, wantSigned)
		}
	}
	if complete && len(rows) != len(answered) {
		h.violation("%s: %d request records, %d answered keys", ax.name, len(rows), len(answered))
	}
	ids := make(map[string]bool, len(rows))
	for _, r := range rows {
		ids[r.id] = true
	}
	for id, a := range ax.reqs {
		if !ids[id] && a.created > 0 {
			h.violation("%s: the audit chain records request %s, which has no record", ax.name, id)
		}
		if a.failed > 0 {
			h.violation("%s: request %s failed %d times (no failure is expected)", ax.name, id, a.failed)
		}
	}
}

// checkCounters compares the policy's counters with the records: one window
// usage row per request with the transaction's amount and running totals
// that add up, nothing released, and rate buckets that lost exactly one
// token per request.
func (h *harness) checkCounters(ctx context.Context, db *sql.DB, rows map[string]dbRequest) {
	byID := make(map[string]dbRequest, len(rows))
	perKey := map[string]int{}
	for _, r := range rows {
		byID[r.id] = r
		perKey[r.keyID]++
	}
	want := map[string]struct {
		asset  string
		amount *big.Int
	}{
		ethKey: {"eth", loadgen.EthValue()},
		btcKey: {"btc", big.NewInt(loadgen.BTCPayment)},
	}
	q, err := db.QueryContext(ctx, `SELECT seq, request_id, key_id, asset, amount, cum FROM policy_usage ORDER BY seq`)
	if err != nil {
		h.t.Fatal(err)
	}
	seen := map[string]int{}
	cum := map[string]*big.Int{}
	for q.Next() {
		var (
			seq                           int64
			id, keyID, asset, amt, cumStr string
		)
		if err := q.Scan(&seq, &id, &keyID, &asset, &amt, &cumStr); err != nil {
			h.t.Fatal(err)
		}
		seen[id]++
		r, ok := byID[id]
		w := want[keyID]
		amount, ok1 := new(big.Int).SetString(amt, 10)
		c, ok2 := new(big.Int).SetString(cumStr, 10)
		switch {
		case !ok:
			h.violation("policy_usage row %d counts request %s, which has no record", seq, id)
		case r.keyID != keyID || w.asset != asset:
			h.violation("policy_usage row %d: %s %s for request %s of key %s", seq, keyID, asset, id, r.keyID)
		case !ok1 || !ok2 || amount.Cmp(w.amount) != 0:
			h.violation("policy_usage row %d: amount %s (running total %s) for request %s, want %s", seq, amt, cumStr, id, w.amount)
		}
		k := keyID + "/" + asset
		prev := cum[k]
		if prev == nil {
			prev = new(big.Int)
		}
		if ok1 && ok2 && new(big.Int).Add(prev, amount).Cmp(c) != 0 {
			h.violation("policy_usage row %d: running total %s, want %s + %s", seq, c, prev, amount)
		}
		if ok2 {
			cum[k] = c
		}
	}
	if err := q.Err(); err != nil {
		h.t.Fatal(err)
	}
	q.Close()
	for id, r := range byID {
		if seen[id] != 1 {
			h.violation("request %s (key %s, %s) counts %d times against its windows, want once", id, r.key, r.state, seen[id])
		}
	}
	var released int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM policy_usage_released`).Scan(&released); err != nil {
		h.t.Fatal(err)
	}
	if released != 0 {
		h.violation("%d window usage rows were released; nothing should be", released)
	}
	// The buckets: burst − records, plus what ratePerSecond refilled since
	// the policy was set (well under one token).
	slack := ratePerSecond*time.Since(h.began).Seconds() + 1e-6
	for _, key := range []string{ethKey, btcKey} {
		n := perKey[key]
		if n == 0 {
			continue
		}
		for _, b := range []struct{ scope, principal string }{{"client", clientName}, {"key", ""}} {
			var tokens float64
			err := db.QueryRowContext(ctx, `SELECT tokens FROM policy_buckets WHERE scope = ? AND key_id = ? AND principal = ?`,
				b.scope, key, b.principal).Scan(&tokens)
			if err != nil {
				h.violation("rate bucket %s of %s: %v", b.scope, key, err)
				continue
			}
			spent := float64(rateBurst) - tokens
			if spent < float64(n)-slack || spent > float64(n)+1e-6 {
				h.violation("rate bucket %s of %s holds %.6f tokens: %.6f spent for %d recorded requests", b.scope, key, tokens, spent, n)
			}
		}
	}
}

// offline checks the database as the kill left it, before the appliance
// opens it again (or after the final clean stop), on a copy of the file and
// its write-ahead log:
//
//   - PRAGMA integrity_check is ok and foreign_key_check finds nothing;
//   - every answer any client has received so far is in it, signed, with the
//     same transaction, and the audit chain in it (read on from the previous
//     kill) holds its sign_request and request_signed entries; no request
//     is signed more than once on the record;
//   - `appliance audit verify` with the audit public key the auditor took
//     at the first start, anchored at the heads read before (through the API
//     and from the previous copy), passes; so does `appliance check --full`.
func (h *harness) offline(final bool) (states map[string]int) {
	t := h.t
	ctx := context.Background()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(h.snapDB + suffix); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	for _, suffix := range []string{"", "-wal"} {
		if err := copyFile(h.db+suffix, h.snapDB+suffix); err != nil {
			if os.IsNotExist(err) && suffix != "" {
				continue
			}
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(h.snapDB + "-wal"); err == nil {
		h.stats.walBytes = max(h.stats.walBytes, fi.Size())
	}
	db, err := openDB(h.snapDB, false)
	if err != nil {
		t.Fatal(err)
	}
	var report []string
	q, err := db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		t.Fatal(err)
	}
	for q.Next() {
		var s string
		if err := q.Scan(&s); err != nil {
			t.Fatal(err)
		}
		report = append(report, s)
	}
	q.Close()
	if len(report) != 1 || report[0] != "ok" {
		h.violation("PRAGMA integrity_check of the database the kill left: %s", strings.Join(report, "; "))
	}
	var fk int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pragma_foreign_key_check`).Scan(&fk); err != nil {
		t.Fatal(err)
	}
	if fk != 0 {
		h.violation("PRAGMA foreign_key_check: %d rows", fk)
	}
	anchors := []string{}
	for _, x := range []*auditIndex{h.apiAudit, h.fileAudit} {
		if x.seq > 0 {
			anchors = append(anchors, "--anchor", fmt.Sprintf("%d:%s", x.seq, x.hash))
		}
	}
	if err := h.fileAudit.readDB(ctx, db); err != nil {
		h.violation("%v", err)
	}
	rows, err := readRequests(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	h.checkRecords(rows, h.ledger.answeredEntries(), h.fileAudit, final)
	for _, e := range h.ledger.answeredEntries() {
		if err := h.fileAudit.checkAnswered(e); err != nil {
			h.violation("%v", err)
		}
	}
	states = map[string]int{}
	for _, r := range rows {
		states[r.state]++
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(h.snapDB); err == nil {
		h.stats.dbBytes = fi.Size()
	}

	out, err := h.cliErr(nil, append([]string{"audit", "verify", "--db", h.snapDB, "--pubkey", h.auditPub}, anchors...)...)
	if err != nil {
		h.violation("appliance audit verify of the database the kill left: %v", err)
	} else {
		_, js, _ := strings.Cut(out, "\n")
		var rep struct {
			Entries           int64 `json:"entries"`
			Checkpoints       int   `json:"checkpoints"`
			LastCheckpointSeq int64 `json:"last_checkpoint_seq"`
			Unprotected       int64 `json:"unprotected"`
		}
		if err := json.Unmarshal([]byte(js), &rep); err != nil {
			h.violation("appliance audit verify: %v: %s", err, out)
		}
		h.stats.auditEntries, h.stats.checkpoints = rep.Entries, rep.Checkpoints
		h.stats.maxUnprotected = max(h.stats.maxUnprotected, rep.Unprotected)
		if final && rep.Unprotected != 0 {
			h.violation("after the clean stop, %d audit entries are not covered by a checkpoint: %s", rep.Unprotected, out)
		}
		if rep.Entries != h.fileAudit.entries {
			h.violation("appliance audit verify read %d entries, the events table holds %d", rep.Entries, h.fileAudit.entries)
		}
	}
	// The shipped check, every fifth kill (it runs the same integrity_check
	// again, which a long soak's database makes slow).
	if final || h.stats.kills%5 == 0 {
		if out, err := h.cliErr(nil, "check", "--config", h.cfgSnap, "--full"); err != nil || !strings.Contains(out, "integrity_check ok") {
			h.violation("appliance check --full of the database the kill left: %v %s", err, out)
		}
		h.stats.fullChecks++
	}
	return states
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// stateSummary renders the records per state.
func stateSummary(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
