package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestPruneRequests: only requests that reached a final state before the
// cutoff go, with their approvals and rejections; requests still signing or
// waiting for officers stay however old, and so does one created long ago
// but finished recently; the batch limit holds; a pruned
// request's idempotency key makes a new request; the audit chain is
// untouched.
func TestPruneRequests(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	old := time.Now().Add(-72 * time.Hour)
	s.now = func() time.Time { return old }

	create := func(idem string, hook func(tx *Tx, r *Request) error) Request {
		t.Helper()
		r, created, err := s.CreateRequest(ctx, newReq("svc", idem), hook)
		if err != nil || !created {
			t.Fatalf("create %s: %v, %v", idem, created, err)
		}
		return r
	}
	byState := map[string]string{} // id -> state, as made below
	for i := range 3 {
		r := create(fmt.Sprint("signed-", i), nil)
		if err := s.CompleteRequest(ctx, r.ID, []byte{1}, "0x01"); err != nil {
			t.Fatal(err)
		}
		byState[r.ID] = StateSigned
	}
	failed := create("failed", nil)
	if err := s.FailRequest(ctx, failed.ID, "hsm_unavailable", "down"); err != nil {
		t.Fatal(err)
	}
	byState[failed.ID] = StateFailed
	denied := create("denied", func(tx *Tx, r *Request) error { return DenyRequestTx(ctx, tx, r, "policy_denied", "no") })
	byState[denied.ID] = StateDenied
	signing := create("signing", nil)
	byState[signing.ID] = StateSigning
	pend := func(tx *Tx, r *Request) error {
		return PendRequestTx(ctx, tx, r, Pending{Digest: make([]byte, 32), ApprovalsRequired: 2, ExpiresAt: old.Add(time.Hour)})
	}
	waiting := create("waiting", pend)
	byState[waiting.ID] = StatePendingApproval
	rejected := create("rejected", pend)
	byState[rejected.ID] = StateRejected
	// Officers' rows on a waiting and on a rejected request.
	if err := s.WriteTx(ctx, func(tx *Tx) error {
		for _, id := range []string{waiting.ID, rejected.ID} {
			if err := AddRequestApprovalTx(ctx, tx, id, Approval{Officer: "alice", Signature: []byte{1}, At: old}); err != nil {
				return err
			}
		}
		if _, err := AddRequestRejectionTx(ctx, tx, rejected.ID, "bob", "unknown destination"); err != nil {
			return err
		}
		return MoveRequestTx(ctx, tx, rejected.ID, StatePendingApproval, StateRejected, "rejected", "rejected by officers")
	}); err != nil {
		t.Fatal(err)
	}
	// A request finished today.
	s.now = time.Now
	recent := create("recent", nil)
	if err := s.CompleteRequest(ctx, recent.ID, []byte{1}, "0x02"); err != nil {
		t.Fatal(err)
	}
	byState[recent.ID] = StateSigned

	headSeq, headHash, err := s.AuditHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	prune := func(cutoff time.Time, limit int) int64 {
		t.Helper()
		var n int64
		if err := s.WriteTx(ctx, func(tx *Tx) error {
			var err error
			n, err = PruneRequestsTx(ctx, tx, cutoff, limit)
			return err
		}); err != nil {
			t.Fatalf("prune: %v", err)
		}
		return n
	}
	if err := s.WriteTx(ctx, func(tx *Tx) error {
		_, err := PruneRequestsTx(ctx, tx, time.Now(), 0)
		return err
	}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("limit 0: %v, want ErrInvalid", err)
	}
	// A cutoff before everything: nothing goes.
	if n := prune(old.Add(-time.Hour), 100); n != 0 {
		t.Fatalf("pruned %d before the oldest request", n)
	}
	// A day ago: the five requests finished three days ago go, two at a
	// time. The rejected one was created then but rejected now (officers
	// act on the wall clock): it stays.
	cutoff := time.Now().Add(-24 * time.Hour)
	var total int64
	for range 10 {
		n := prune(cutoff, 2)
		if n > 2 {
			t.Fatalf("batch of %d with limit 2", n)
		}
		if total += n; n == 0 {
			break
		}
	}
	if total != 5 {
		t.Fatalf("pruned %d requests, want the 5 finished days ago", total)
	}
	for id, state := range byState {
		_, err := s.GetRequest(ctx, id)
		kept := id == signing.ID || id == waiting.ID || id == recent.ID || id == rejected.ID
		switch {
		case kept && err != nil:
			t.Errorf("%s request %s was pruned: %v", state, id, err)
		case !kept && !errors.Is(err, ErrNotFound):
			t.Errorf("old %s request %s kept: %v", state, id, err)
		}
	}
	officers := func(approvals, rejections int) {
		t.Helper()
		var a, r int
		if err := s.r.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM request_approvals), (SELECT count(*) FROM request_rejections)`).Scan(&a, &r); err != nil {
			t.Fatal(err)
		}
		if a != approvals || r != rejections {
			t.Fatalf("%d approvals and %d rejections left, want %d and %d", a, r, approvals, rejections)
		}
	}
	officers(2, 1)
	// The chain is as it was: pruning requests writes no entry here (the
	// caller audits it) and deletes none.
	if seq, h, err := s.AuditHead(ctx); err != nil || seq != headSeq || string(h) != string(headHash) {
		t.Fatalf("audit head moved: %d, %v", seq, err)
	}
	// A pruned request's idempotency key is forgotten: a new request; a kept
	// one still replays.
	if r, created, err := s.CreateRequest(ctx, newReq("svc", "signed-0"), nil); err != nil || !created || byState[r.ID] != "" {
		t.Fatalf("key of a pruned request: created %v, %v", created, err)
	}
	if r, created, err := s.CreateRequest(ctx, newReq("svc", "recent"), nil); err != nil || created || r.ID != recent.ID {
		t.Fatalf("key of a kept request: created %v, id %s, %v", created, r.ID, err)
	}
	// An hour from now: every finished request goes, with the rejected
	// one's officer rows; the unfinished ones and the waiting request's
	// approval stay.
	if n := prune(time.Now().Add(time.Hour), 100); n != 2 {
		t.Fatalf("pruned %d, want the rejected and the recent request", n)
	}
	for _, id := range []string{signing.ID, waiting.ID} {
		if _, err := s.GetRequest(ctx, id); err != nil {
			t.Errorf("unfinished request %s pruned: %v", id, err)
		}
	}
	officers(1, 0)
	if _, approvals, err := s.PendingOf(ctx, waiting.ID); err != nil || len(approvals) != 1 {
		t.Fatalf("the waiting request's approvals: %d, %v", len(approvals), err)
	}
}
