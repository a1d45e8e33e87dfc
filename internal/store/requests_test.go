package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/audit"
)

func storeWithKey(t testing.TB) *Store {
	t.Helper()
	s, _ := openTest(t)
	if err := s.InsertKey(context.Background(), testKey("eth-dev", 1, time.Now())); err != nil {
		t.Fatal(err)
	}
	return s
}

func newReq(principal, idem string) Request {
	payload := []byte("payload-" + idem)
	h := sha256.Sum256(payload)
	return Request{
		Principal: principal, IdempotencyKey: idem, KeyID: "eth-dev", Chain: "ethereum", Network: "1337",
		Payload: payload, PayloadHash: h[:], Intent: []byte(`{"to":"0x01"}`), Digest: bytes.Repeat([]byte{7}, 32),
	}
}

func count(t *testing.T, s *Store, state string) int {
	t.Helper()
	n, err := s.CountRequests(context.Background(), state)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCreateRequest(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)

	in := newReq("spiffe://appliance.dev/client", "idem-1")
	r1, created, err := s.CreateRequest(ctx, in, nil)
	if err != nil || !created {
		t.Fatalf("CreateRequest = %v, created=%v", err, created)
	}
	if !regexp.MustCompile(`^req_[0-9a-hjkmnp-tv-z]{26}$`).MatchString(r1.ID) {
		t.Errorf("id %q is not req_ + 26 base32 chars", r1.ID)
	}
	if r1.State != StateSigning || r1.CreatedAt.IsZero() || !r1.CreatedAt.Equal(r1.UpdatedAt) {
		t.Errorf("defaults: state=%q created=%v updated=%v", r1.State, r1.CreatedAt, r1.UpdatedAt)
	}
	got, err := s.GetRequest(ctx, r1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", r1) {
		t.Errorf("GetRequest differs from CreateRequest's answer:\n got %+v\nwant %+v", got, r1)
	}
	if !bytes.Equal(got.Payload, in.Payload) || !bytes.Equal(got.PayloadHash, in.PayloadHash) ||
		!bytes.Equal(got.Intent, in.Intent) || !bytes.Equal(got.Digest, in.Digest) {
		t.Errorf("blobs did not round-trip: %+v", got)
	}

	// Same principal and key: the first request, nothing written.
	again := newReq("spiffe://appliance.dev/client", "idem-1")
	again.Payload = []byte("a different payload")
	r2, created, err := s.CreateRequest(ctx, again, func(*Tx, *Request) error { t.Error("hook ran on a replay"); return nil })
	if err != nil || created || r2.ID != r1.ID || !bytes.Equal(r2.Payload, in.Payload) {
		t.Fatalf("replay = %s created=%v err=%v; want %s, created=false, original payload", r2.ID, created, err, r1.ID)
	}
	// Another principal may use the same idempotency key.
	r3, created, err := s.CreateRequest(ctx, newReq("spiffe://appliance.dev/other", "idem-1"), nil)
	if err != nil || !created || r3.ID == r1.ID {
		t.Fatalf("other principal: id=%s created=%v err=%v", r3.ID, created, err)
	}
	// Without an idempotency key every call is a new request.
	a, _, errA := s.CreateRequest(ctx, newReq("p", ""), nil)
	b, _, errB := s.CreateRequest(ctx, newReq("p", ""), nil)
	if errA != nil || errB != nil || a.ID == b.ID {
		t.Fatalf("no idempotency key: %s/%v %s/%v", a.ID, errA, b.ID, errB)
	}
	if n := count(t, s, ""); n != 4 {
		t.Fatalf("%d requests, want 4", n)
	}
	if n := count(t, s, StateSigning); n != 4 {
		t.Fatalf("%d signing, want 4", n)
	}
}

// TestCreateRequestReplayFirst: a replay is recognised before anything else
// about the new request is checked, and writes nothing: not a row, not an
// audit entry. Only a new request's id clash or unknown key is an error.
func TestCreateRequestReplayFirst(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	first, created, err := s.CreateRequest(ctx, newReq("p", "idem"), nil)
	if err != nil || !created {
		t.Fatal(err)
	}
	head, _, err := s.AuditHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unknownKey := newReq("p", "idem")
	unknownKey.KeyID = "no-such-key"
	sameID := newReq("p", "idem")
	sameID.ID = first.ID
	for name, r := range map[string]Request{"unregistered key": unknownKey, "same id": sameID, "plain": newReq("p", "idem")} {
		got, created, err := s.CreateRequest(ctx, r, nil)
		if err != nil || created || got.ID != first.ID {
			t.Errorf("%s: replay = %s created=%v %v; want %s", name, got.ID, created, err, first.ID)
		}
	}
	if after, _, _ := s.AuditHead(ctx); after != head {
		t.Errorf("replays appended audit entries: head %d → %d", head, after)
	}
	// A new idempotency key under an id already taken: a conflict, not a replay.
	clash := newReq("p", "other")
	clash.ID = first.ID
	if _, _, err := s.CreateRequest(ctx, clash, nil); !errors.Is(err, ErrConflict) {
		t.Errorf("id clash = %v, want ErrConflict", err)
	}
	if n := count(t, s, ""); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestCreateRequestRejects(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	unknownKey := newReq("p", "k")
	unknownKey.KeyID = "no-such-key"
	dupID := newReq("p", "")
	dupID.ID = "req_fixed"
	if _, _, err := s.CreateRequest(ctx, dupID, nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		r    Request
		want error
	}{
		{"unregistered key", unknownKey, ErrNotFound},
		{"no principal", newReq("", "k"), ErrInvalid},
		{"no key id", func() Request { r := newReq("p", "k"); r.KeyID = ""; return r }(), ErrInvalid},
		{"duplicate id", dupID, ErrConflict},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := s.CreateRequest(ctx, tt.r, nil); !errors.Is(err, tt.want) {
				t.Fatalf("CreateRequest = %v, want %v", err, tt.want)
			}
		})
	}
	if n := count(t, s, ""); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestCreateRequestHook(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	denied := errors.New("policy says no")

	// A hook that writes and then fails: neither the request nor the hook's
	// write survives, and the idempotency key stays free.
	_, created, err := s.CreateRequest(ctx, newReq("p", "idem"), func(tx *Tx, r *Request) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO health (id, probed_at, probes) VALUES (1, 0, 0)`); err != nil {
			return err
		}
		return fmt.Errorf("evaluate %s: %w", r.ID, denied)
	})
	if !errors.Is(err, denied) || created {
		t.Fatalf("CreateRequest = created %v, %v; want the hook's error", created, err)
	}
	var health int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM health`).Scan(&health); err != nil || health != 0 {
		t.Fatalf("hook's write survived: %d rows (%v)", health, err)
	}
	if n := count(t, s, ""); n != 0 {
		t.Fatalf("%d requests after a failed hook, want 0", n)
	}

	// A panicking hook leaves nothing either.
	func() {
		defer func() { _ = recover() }()
		_, _, _ = s.CreateRequest(ctx, newReq("p", "idem"), func(*Tx, *Request) error { panic("bug") })
	}()
	if n := count(t, s, ""); n != 0 {
		t.Fatalf("%d requests after a panicking hook, want 0", n)
	}

	// A hook that changes the state: the answer shows what committed.
	r, created, err := s.CreateRequest(ctx, newReq("p", "idem"), func(tx *Tx, r *Request) error {
		return PendRequestTx(ctx, tx, r, Pending{Digest: []byte{7}, ApprovalsRequired: 2, ExpiresAt: time.Now().Add(time.Hour)})
	})
	if err != nil || !created || r.State != "pending_approval" {
		t.Fatalf("CreateRequest = %+v created=%v err=%v; want state pending_approval", r, created, err)
	}
}

// TestCreateRequestReturnsWhatCommits: CreateRequest no longer reads the
// row back inside the writer, so what it returns must equal what a reader
// sees afterwards, field for field, whether the hook left the request
// signing, made it pending or denied it, and with empty and nil fields.
func TestCreateRequestReturnsWhatCommits(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	for name, c := range map[string]struct {
		mod  func(*Request)
		hook func(tx *Tx, r *Request) error
	}{
		"signing":       {},
		"empty fields":  {mod: func(r *Request) { r.Payload, r.PayloadHash, r.Intent, r.Digest = nil, nil, nil, nil }},
		"empty non-nil": {mod: func(r *Request) { r.Payload, r.Intent, r.Digest = []byte{}, []byte{}, []byte{} }},
		"pending": {hook: func(tx *Tx, r *Request) error {
			return PendRequestTx(ctx, tx, r, Pending{Digest: []byte{9, 9}, ApprovalsRequired: 2, ExpiresAt: time.Now().Add(time.Hour), PolicyVersion: 3})
		}},
		"denied":      {hook: func(tx *Tx, r *Request) error { return DenyRequestTx(ctx, tx, r, "over_limit", "over the daily limit") }},
		"given state": {mod: func(r *Request) { r.State, r.ErrorCode, r.ErrorMessage = StateDenied, "screened", "on a list" }},
	} {
		t.Run(name, func(t *testing.T) {
			req := newReq("p", "idem-"+name)
			req.Intent, req.Digest = []byte(`{"kind":"transfer"}`), []byte{1, 2, 3}
			if c.mod != nil {
				c.mod(&req)
			}
			got, created, err := s.CreateRequest(ctx, req, c.hook)
			if err != nil || !created {
				t.Fatalf("created=%v err=%v", created, err)
			}
			want, err := s.GetRequest(ctx, got.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("CreateRequest returned\n%#v\nthe database holds\n%#v", got, want)
			}
		})
	}
}

// TestCreateRequestAuditChain: the request's audit entry links to the
// entry before it whatever the hook appended in between, alone and with
// concurrent requests sharing a commit.
func TestCreateRequestAuditChain(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if err := s.InsertKey(ctx, testKey("eth-dev", 1, time.Now())); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			r, created, err := s.CreateRequest(ctx, newReq("p", fmt.Sprint("idem-", i)), func(tx *Tx, r *Request) error {
				for range i % 3 {
					if err := AppendEvent(ctx, tx, "hook", "p", r.ID); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil || !created {
				t.Errorf("request %d: %v", i, err)
				return
			}
			if err := s.CompleteRequest(ctx, r.ID, []byte{2}, "0xabc"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	v, err := audit.NewVerifier(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AuditEntries(ctx, 0, 0, v.Add); err != nil {
		t.Fatal(err)
	}
	rep, err := v.Finish()
	if err != nil {
		t.Fatal(err)
	}
	// The key's entry, then per request its entry, the hook's and the completion's.
	if want := int64(1 + 24*2 + (8*0 + 8*1 + 8*2)); rep.HeadSeq != want {
		t.Fatalf("%d entries, want %d", rep.HeadSeq, want)
	}
}

func TestCreateRequestConcurrentIdempotency(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	const n = 64
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		ids     = map[string]int{}
		created int
		errs    []error
	)
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			r, c, err := s.CreateRequest(ctx, newReq("spiffe://appliance.dev/client", "same"), nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			ids[r.ID]++
			if c {
				created++
			}
		})
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	if created != 1 || len(ids) != 1 {
		t.Fatalf("created=%d distinct ids=%d (%v); want exactly one request", created, len(ids), ids)
	}
	if c := count(t, s, ""); c != 1 {
		t.Fatalf("%d rows, want 1", c)
	}
}

func TestRequestTransitions(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	type step struct {
		op    string // complete | fail | restart
		want  error
		state string // state afterwards
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"sign", []step{{"complete", nil, StateSigned}}},
		{"sign twice", []step{{"complete", nil, StateSigned}, {"complete", ErrConflict, StateSigned}}},
		{"fail after signed", []step{{"complete", nil, StateSigned}, {"fail", ErrConflict, StateSigned}}},
		{"restart signed", []step{{"complete", nil, StateSigned}, {"restart", ErrConflict, StateSigned}}},
		{"restart signing", []step{{"restart", ErrConflict, StateSigning}}},
		{"fail twice", []step{{"fail", nil, StateFailed}, {"fail", ErrConflict, StateFailed}}},
		{"complete failed", []step{{"fail", nil, StateFailed}, {"complete", ErrConflict, StateFailed}}},
		{"retry after outage", []step{{"fail", nil, StateFailed}, {"restart", nil, StateSigning}, {"complete", nil, StateSigned}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _, err := s.CreateRequest(ctx, newReq("p", ""), nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, st := range tt.steps {
				switch st.op {
				case "complete":
					err = s.CompleteRequest(ctx, r.ID, []byte{0x02, 0xf8}, "0xabc")
				case "fail":
					err = s.FailRequest(ctx, r.ID, "hsm_unavailable", "token removed")
				case "restart":
					err = s.RestartRequest(ctx, r.ID)
				}
				if !errors.Is(err, st.want) || (st.want == nil && err != nil) {
					t.Fatalf("step %d %s: %v, want %v", i, st.op, err, st.want)
				}
				got, err := s.GetRequest(ctx, r.ID)
				if err != nil {
					t.Fatal(err)
				}
				if got.State != st.state {
					t.Fatalf("step %d %s: state %s, want %s", i, st.op, got.State, st.state)
				}
			}
		})
	}

	r, _, _ := s.CreateRequest(ctx, newReq("p", ""), nil)
	if err := s.FailRequest(ctx, r.ID, "hsm_unavailable", "token removed"); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetRequest(ctx, r.ID)
	if got.ErrorCode != "hsm_unavailable" || got.ErrorMessage != "token removed" || got.UpdatedAt.Before(got.CreatedAt) {
		t.Fatalf("failed request: %+v", got)
	}
	if err := s.RestartRequest(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.CompleteRequest(ctx, r.ID, []byte{1, 2}, "0xfeed"); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetRequest(ctx, r.ID)
	if got.State != StateSigned || !bytes.Equal(got.SignedTx, []byte{1, 2}) || got.TxHash != "0xfeed" || got.ErrorCode != "" || got.ErrorMessage != "" {
		t.Fatalf("completed request: %+v", got)
	}

	for name, op := range map[string]func() error{
		"complete": func() error { return s.CompleteRequest(ctx, "req_missing", nil, "") },
		"fail":     func() error { return s.FailRequest(ctx, "req_missing", "c", "m") },
		"restart":  func() error { return s.RestartRequest(ctx, "req_missing") },
		"get":      func() error { _, err := s.GetRequest(ctx, "req_missing"); return err },
	} {
		if err := op(); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s on unknown id: %v, want ErrNotFound", name, err)
		}
	}
}

// Two goroutines racing to record a result: exactly one wins, because the
// state is checked in the UPDATE itself.
func TestCompleteRequestRace(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	r, _, err := s.CreateRequest(ctx, newReq("p", ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	results := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if i%2 == 0 {
				results <- s.CompleteRequest(ctx, r.ID, []byte{byte(i)}, "0x")
			} else {
				results <- s.FailRequest(ctx, r.ID, "x", "y")
			}
		})
	}
	wg.Wait()
	close(results)
	ok := 0
	for err := range results {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrConflict):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d transitions succeeded, want 1", ok)
	}
}

func TestCreateRequestTimesAreUTC(t *testing.T) {
	ctx := context.Background()
	s := storeWithKey(t)
	fixed := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.FixedZone("X", 3600))
	s.now = func() time.Time { return fixed }
	r, _, err := s.CreateRequest(ctx, newReq("p", ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetRequest(ctx, r.ID)
	if !got.CreatedAt.Equal(fixed) || got.CreatedAt.Location() != time.UTC {
		t.Fatalf("CreatedAt %v, want %v in UTC with nanoseconds", got.CreatedAt, fixed)
	}
}

func BenchmarkCreateAndCompleteRequest(b *testing.B) {
	ctx := context.Background()
	s := storeWithKey(b)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r, _, err := s.CreateRequest(ctx, newReq("p", fmt.Sprint("idem-", i)), nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.CompleteRequest(ctx, r.ID, []byte{0x02}, "0xabc"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateAndCompleteRequestParallel is the same from 8 concurrent
// callers per core, as the signing path runs it under load: the
// transactions that queue behind a commit share the next one (group
// commit). ns/op is per request; commits/req says how many fsyncing
// commits each request cost.
func BenchmarkCreateAndCompleteRequestParallel(b *testing.B) {
	ctx := context.Background()
	s := storeWithKey(b)
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(8)
	b0, j0 := s.GroupCommitStats()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, _, err := s.CreateRequest(ctx, newReq("p", fmt.Sprint("idem-", n.Add(1))), nil)
			if err != nil {
				b.Error(err)
				return
			}
			if err := s.CompleteRequest(ctx, r.ID, []byte{0x02}, "0xabc"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b1, j1 := s.GroupCommitStats()
	b.ReportMetric(float64(b1-b0)/float64(b.N), "commits/req")
	b.ReportMetric(float64(j1-j0)/float64(b1-b0), "writes/commit")
}

// Request ids: "req_" and 26 digits of the sortable alphabet; ids of later
// milliseconds sort after earlier ones (so they share index pages), and the
// 80 random bits differ every time and use every digit in every position.
func TestRequestIDs(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 4, 0, 0, 0, time.UTC)
	const n = 4000
	seen := map[string]bool{}
	digits := [16]map[byte]bool{}
	for i := range digits {
		digits[i] = map[byte]bool{}
	}
	prev := ""
	for i := range n {
		id := newRequestID(t0.Add(time.Duration(i/4) * time.Millisecond))
		if len(id) != 30 || id[:4] != "req_" || strings.Trim(id[4:], idAlphabet) != "" {
			t.Fatalf("malformed id %q", id)
		}
		if seen[id] {
			t.Fatalf("id %q twice", id)
		}
		seen[id] = true
		if i%4 == 0 && id[:14] <= prev {
			t.Fatalf("id %q of a later millisecond does not sort after %q", id, prev)
		}
		prev = id[:14]
		for j := range 16 {
			digits[j][id[14+j]] = true
		}
	}
	for j, d := range digits {
		if len(d) != 32 {
			t.Errorf("random digit %d took %d values in %d ids, want all 32", j, len(d), n)
		}
	}
	// The time part reads back as the millisecond it encodes.
	id := newRequestID(t0)
	var ms int64
	for _, c := range []byte(id[4:14]) {
		ms = ms<<5 | int64(strings.IndexByte(idAlphabet, c))
	}
	if ms != t0.UnixMilli() {
		t.Fatalf("time part of %q is %d, want %d", id, ms, t0.UnixMilli())
	}
	if a, b := NewRequestID(), NewRequestID(); a == b {
		t.Fatalf("two ids now: %q, %q", a, b)
	}
}
