package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/seal"
	"github.com/custodysigner/appliance/internal/store"
)

// signOne signs a small transfer with eth-dev under idem.
func signOne(t *testing.T, e *env, nonce uint64, idem string) {
	t.Helper()
	to := common.HexToAddress("0x00000000000000000000000000000000000000a1")
	if a := e.must(e.client("client"), "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, nonce, to, big.NewInt(1)), idem)); a.status != http.StatusOK {
		t.Fatalf("sign %s: %d %s", idem, a.status, a.body)
	}
}

// auditPages reads the whole chain over GET /v1/audit as an auditor and
// returns it as an export.
func auditPages(t *testing.T, e *env) []byte {
	t.Helper()
	var out bytes.Buffer
	for after := int64(0); ; {
		a := e.must(e.client("auditor"), "GET", fmt.Sprintf("/v1/audit?after=%d&limit=7", after), nil)
		if a.status != http.StatusOK {
			t.Fatalf("audit page: %d %s", a.status, a.body)
		}
		var p struct {
			Entries, Checkpoints []audit.Line
			HeadSeq              int64 `json:"head_seq"`
			Next                 int64
		}
		if err := json.Unmarshal(a.body, &p); err != nil {
			t.Fatal(err)
		}
		bySeq := map[int64]audit.Line{}
		for _, c := range p.Checkpoints {
			if c.Seq < p.Entries[0].Seq {
				t.Fatalf("page after %d (from entry %d) carries checkpoint %d", after, p.Entries[0].Seq, c.Seq)
			}
			bySeq[c.Seq] = c
		}
		enc := json.NewEncoder(&out)
		for _, l := range p.Entries {
			_ = enc.Encode(l)
			if c, ok := bySeq[l.Seq]; ok {
				_ = enc.Encode(c)
			}
		}
		if p.Next == p.HeadSeq {
			return out.Bytes()
		}
		after = p.Next
	}
}

// TestAuditArchiveRetention: with retention.audit set, a pass run as if two
// days had gone by archives the entries up to the newest checkpoint into
// retention.archive_dir and deletes them but that checkpointed entry. The
// archive verifies with the audit key; `appliance check` passes on the
// database, which starts at that entry and records the archive; the
// appliance goes on signing, serves its chain to auditors page by page, and
// backs up. After a restart a pass runs sealed (no checkpoint needed) up to
// the stop's checkpoint, the token's head, and the unseal finds that head as
// the database's first entry; exports verify from it. The backup of the
// archived database restores in mode "database" and signs again.
func TestAuditArchiveRetention(t *testing.T) {
	q := signedAndCheckpointed(t, "retention: {audit: 48h}\n", "before-")
	ctx := context.Background()
	signOne(t, q.env, 3, "after-the-checkpoint")
	keys := q.auditKeys(t)

	// Inside the retention: nothing.
	if res, err := q.app.archiveAudit(ctx, time.Now().Add(47*time.Hour)); err != nil || res != (ArchiveResult{}) {
		t.Fatalf("inside the retention: %+v %v", res, err)
	}
	res, err := q.app.archiveAudit(ctx, time.Now().Add(49*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(q.dir, "audit-archive")
	if res.From != 1 || res.Through < 10 || res.Deleted != res.Through-1 ||
		res.File != filepath.Join(dir, fmt.Sprintf("audit-%012d-%012d.jsonl", 1, res.Through)) {
		t.Fatalf("archive pass: %+v", res)
	}
	f, err := os.Open(res.File)
	if err != nil {
		t.Fatal(err)
	}
	seg, err := audit.VerifyExport(f, keys, nil)
	f.Close()
	if err != nil || seg.FirstSeq != 1 || seg.HeadSeq != res.Through || seg.Unprotected != 0 {
		t.Fatalf("the archive: %+v %v", seg, err)
	}
	rep, err := CheckIntegrity(ctx, q.cfg.Store.Path, false)
	if err != nil || rep.Audit.FirstSeq != res.Through {
		t.Fatalf("appliance check after archiving: %+v %v", rep, err)
	}
	// What the unseal checks: the token's head (the newest checkpoint, so
	// the archive's last entry unless the checkpointer signed since) is in
	// the database and the entries after it chain.
	m, _ := q.app.currentAudit()
	if err := q.app.checkAuditHead(ctx, m); err != nil {
		t.Fatalf("the token's audit head against the archived database: %v", err)
	}
	signOne(t, q.env, 4, "after-the-archive")
	if r, err := audit.VerifyExport(bytes.NewReader(auditPages(t, q.env)), keys, nil); err != nil || r.FirstSeq != res.Through || r.LastCheckpointSeq < res.Through {
		t.Fatalf("the chain read over GET /v1/audit: %+v %v", r, err)
	}
	b := q.must(q.client("operator"), "POST", "/v1/backups", map[string]string{})
	if b.status != http.StatusCreated {
		t.Fatalf("backup: %d %s", b.status, b.body)
	}
	backupFile := b.json(t)["path"].(string)
	q.stop()

	// Sealed, a second pass archives from where the first ended through
	// the checkpoint of the stop, which is the token's head: the unseal
	// finds it as the database's first entry.
	q.start()
	res2, err := q.app.archiveAudit(ctx, time.Now().Add(49*time.Hour))
	if err != nil || res2.From != res.Through || res2.Through <= res.Through || res2.Deleted != res2.Through-res.Through {
		t.Fatalf("sealed pass: %+v %v", res2, err)
	}
	q.unseal(1, 2)
	signOne(t, q.env, 5, "after-the-restart")
	q.stop()
	r, err := verifyDB(t, q.cfg.Store.Path, keys)
	if err != nil || r.FirstSeq != res2.Through || r.Unprotected != 0 {
		t.Fatalf("after the restart: %+v %v", r, err)
	}
	if !strings.Contains(" "+strings.Join(auditKinds(t, q.cfg.Store.Path), " ")+" ", " audit_archived ") {
		t.Fatal("no audit_archived entry in the chain")
	}
	var exp bytes.Buffer
	if err := auditCLIExport(ctx, q.cfg.Store.Path, &exp, 1); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(exp.Bytes(), []byte(fmt.Sprintf(`{"type":"entry","seq":%d,`, res2.Through))) {
		t.Fatalf("export after 1 starts with %.80s", exp.Bytes())
	}
	if r, err := audit.VerifyExport(bytes.NewReader(exp.Bytes()), keys, nil); err != nil || r.FirstSeq != res2.Through {
		t.Fatalf("export after 1: %+v %v", r, err)
	}

	// The database is lost; the backup of the archived one comes back.
	for _, s := range []string{"", "-wal", "-shm"} {
		_ = os.Rename(q.cfg.Store.Path+s, q.cfg.Store.Path+s+".lost")
	}
	if _, err := RestoreWith(ctx, q.cfg, q.log, RestoreDatabase, backupFile, q.shares[:2], nil); err != nil {
		t.Fatal(err)
	}
	q.start()
	q.unseal(1, 2)
	signOne(t, q.env, 6, "after-the-restore")
	q.stop()
	if r, err := verifyDB(t, q.cfg.Store.Path, keys); err != nil || r.FirstSeq != res.Through {
		t.Fatalf("after the restore: %+v %v", r, err)
	}
}

// auditCLIExport is `appliance audit export --after N`: the offline export.
func auditCLIExport(ctx context.Context, path string, w *bytes.Buffer, after int64) error {
	f, err := store.OpenAuditFile(ctx, path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Export(ctx, w, after)
	return err
}

// TestAuditArchiveOffByDefault: without retention.audit nothing is
// archived, however old the checkpoints.
func TestAuditArchiveOffByDefault(t *testing.T) {
	e := newEnv(t)
	e.start()
	signOne(t, e, 0, "kept")
	ctx := context.Background()
	if err := e.app.audit.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := e.app.archiveAudit(ctx, time.Now().Add(10*365*24*time.Hour)); err != nil || res != (ArchiveResult{}) {
		t.Fatalf("retention off: %+v %v", res, err)
	}
	if _, err := os.Stat(e.cfg.AuditArchiveDir()); !os.IsNotExist(err) {
		t.Fatalf("archive directory: %v", err)
	}
	if rep, err := CheckIntegrity(ctx, e.cfg.Store.Path, false); err != nil || rep.Audit.FirstSeq != 1 {
		t.Fatalf("%+v %v", rep, err)
	}
}

// TestUnsealWithArchivedTokenHead: when writing checkpoints to the token
// failed for longer than retention.audit, the token's head can name an
// entry that was archived since. The unseal then compares it with the
// database's signed checkpoint of that entry and checks the chain held;
// a head that no checkpoint of the database matches is still refused.
func TestUnsealWithArchivedTokenHead(t *testing.T) {
	q := newQuorumEnv(t, "retention: {audit: 48h}\n")
	ctx := context.Background()
	q.start()
	q.unseal(1, 2)
	signOne(t, q.env, 0, "first")
	if err := q.app.audit.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	m, _ := q.app.currentAudit()
	stale, err := m.ReadData(ctx, auditHeadLabel) // the head a failing token would keep
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 4; i++ {
		signOne(t, q.env, uint64(i), fmt.Sprint("later-", i))
	}
	if err := q.app.audit.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := q.app.archiveAudit(ctx, time.Now().Add(49*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	old, err := decodeHead(stale)
	if err != nil || old.Seq >= res.Through {
		t.Fatalf("the stale head (entry %d) is not archived (through %d): %v", old.Seq, res.Through, err)
	}
	if err := m.WriteData(ctx, auditHeadLabel, stale); err != nil {
		t.Fatal(err)
	}
	if err := q.app.checkAuditHead(ctx, m); err != nil {
		t.Fatalf("an archived token head, matched by the database's checkpoint: %v", err)
	}
	// A head signed by the audit key for an archived entry, but with a hash
	// that the database's checkpoint of it does not hold: another history.
	_, signer := q.app.currentAudit()
	forged := audit.Checkpoint{Seq: old.Seq, Hash: bytes.Repeat([]byte{0xee}, len(old.Hash)), At: old.At, KeyID: signer.id}
	if forged.Signature, err = m.Sign(ctx, signer.ref, forged.Digest()); err != nil {
		t.Fatal(err)
	}
	raw, err := encodeHead(forged)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WriteData(ctx, auditHeadLabel, raw); err != nil {
		t.Fatal(err)
	}
	var ie *seal.IntegrityError
	if err := q.app.checkAuditHead(ctx, m); !errors.As(err, &ie) || !strings.Contains(ie.Report, "differs from the token's last checkpoint") {
		t.Fatalf("a token head of another history: %v", err)
	}
	if err := m.WriteData(ctx, auditHeadLabel, stale); err != nil {
		t.Fatal(err)
	}
	// The restart unseals with the stale head on the token, and signs.
	q.stop()
	q.start()
	q.unseal(1, 2)
	signOne(t, q.env, 4, "after")
}

// TestMaintainArchivesAudit: the hourly pass runs the audit step after the
// others, counts what it deleted, and keeps the chain verifiable.
func TestMaintainArchivesAudit(t *testing.T) {
	q := signedAndCheckpointed(t, "retention: {audit: 48h, requests: 48h}\n", "m-")
	ctx := context.Background()
	before := countRows(t, q.cfg.Store.Path, `SELECT count(*) FROM events`)
	q.app.maintainOnce(ctx, time.Now().Add(49*time.Hour))
	deleted := retentionMetric(t, q.app, "appliance_retention_deleted_total", "audit_entries")
	after := countRows(t, q.cfg.Store.Path, `SELECT count(*) FROM events`)
	// The pass appended its own entries (requests_pruned, audit_archived)
	// after the checkpoint, so fewer were deleted than were there.
	if deleted < 10 || after > before-int(deleted)+2 {
		t.Fatalf("audit entries: %d before, %d after, metric %v", before, after, deleted)
	}
	if v := retentionMetric(t, q.app, "appliance_retention_deleted_total", "requests"); v != 3 {
		t.Fatalf("requests deleted %v, want 3", v)
	}
	if v := retentionMetric(t, q.app, "appliance_retention_errors_total", "audit_entries"); v != 0 {
		t.Fatalf("audit step errors %v", v)
	}
	rep, err := CheckIntegrity(ctx, q.cfg.Store.Path, false)
	if err != nil || rep.Audit.FirstSeq < 2 {
		t.Fatalf("after maintenance: %+v %v", rep, err)
	}
}

// signedAndCheckpointed starts an unsealed quorum appliance with extraYAML,
// signs three transfers (idempotency keys prefix0..2) and checkpoints the
// chain.
func signedAndCheckpointed(t *testing.T, extraYAML, prefix string) *quorumEnv {
	t.Helper()
	q := newQuorumEnv(t, extraYAML)
	q.start()
	q.unseal(1, 2)
	for i := range 3 {
		signOne(t, q.env, uint64(i), fmt.Sprint(prefix, i))
	}
	if err := q.app.audit.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	return q
}

// TestMaintainArchivesInBoundedFiles: with more to archive than one file
// holds, the hourly step writes file after file until it has caught up.
func TestMaintainArchivesInBoundedFiles(t *testing.T) {
	q := newQuorumEnv(t, "retention: {audit: 48h}\n")
	ctx := context.Background()
	q.start()
	q.unseal(1, 2)
	var checkpoints int
	for i := range 4 {
		signOne(t, q.env, uint64(i), fmt.Sprint("b-", i))
		if err := q.app.audit.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		checkpoints++
	}
	q.app.store.SetArchiveBounds(store.ArchiveBounds{Entries: 1000, Checkpoints: 1})
	q.app.maintainOnce(ctx, time.Now().Add(49*time.Hour))
	files, err := filepath.Glob(filepath.Join(q.dir, "audit-archive", "audit-*.jsonl"))
	if err != nil || len(files) < checkpoints {
		t.Fatalf("%d archive files for %d checkpoints, one each: %v", len(files), checkpoints, err)
	}
	keys := q.auditKeys(t)
	var next int64 = 1
	for _, f := range files { // names sort by their first entry
		r, err := func() (audit.Report, error) {
			fh, err := os.Open(f)
			if err != nil {
				return audit.Report{}, err
			}
			defer fh.Close()
			return audit.VerifyExport(fh, keys, nil)
		}()
		if err != nil || r.FirstSeq != next {
			t.Fatalf("%s: %+v %v; want it to start at %d", filepath.Base(f), r, err, next)
		}
		next = r.HeadSeq
	}
	if rep, err := CheckIntegrity(ctx, q.cfg.Store.Path, false); err != nil || rep.Audit.FirstSeq != next {
		t.Fatalf("the database after %d files: %+v %v", len(files), rep, err)
	}
}

// TestMaintainPrunesArchivedCheckpoints: once entries are archived, the
// hourly pass deletes their signed checkpoints, but the one the token's
// audit head names (here a stale head: writes to the token had failed), so
// the next unseal still matches it. Sealed, the step does not run: it reads
// the head from the token.
func TestMaintainPrunesArchivedCheckpoints(t *testing.T) {
	q := newQuorumEnv(t, "retention: {audit: 48h}\n")
	ctx := context.Background()
	q.start()
	q.unseal(1, 2)
	var stale []byte
	for i := range 4 {
		signOne(t, q.env, uint64(i), fmt.Sprint("c-", i))
		if err := q.app.audit.Checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			m, _ := q.app.currentAudit()
			var err error
			if stale, err = m.ReadData(ctx, auditHeadLabel); err != nil {
				t.Fatal(err)
			}
		}
	}
	m, _ := q.app.currentAudit()
	if err := m.WriteData(ctx, auditHeadLabel, stale); err != nil {
		t.Fatal(err)
	}
	head, err := decodeHead(stale)
	if err != nil {
		t.Fatal(err)
	}
	path := q.cfg.Store.Path
	q.app.maintainOnce(ctx, time.Now().Add(49*time.Hour))
	first := int64(countRows(t, path, `SELECT min(seq) FROM events`))
	if first <= head.Seq {
		t.Fatalf("the stale head (entry %d) was not archived: the chain starts at %d", head.Seq, first)
	}
	older := countRows(t, path, fmt.Sprintf(`SELECT count(*) FROM audit_checkpoints WHERE seq < %d`, first))
	kept := countRows(t, path, fmt.Sprintf(`SELECT count(*) FROM audit_checkpoints WHERE seq = %d`, head.Seq))
	if older != 1 || kept != 1 {
		t.Fatalf("checkpoints before the first entry: %d, the token head's: %d; want only it", older, kept)
	}
	if v := retentionMetric(t, q.app, "appliance_retention_deleted_total", "audit_checkpoints"); v < 2 {
		t.Fatalf("checkpoints deleted %v, want at least 2", v)
	}
	if n := countRows(t, path, `SELECT count(*) FROM events WHERE kind = 'checkpoints_pruned'`); n != 1 {
		t.Fatalf("%d checkpoints_pruned entries", n)
	}
	if rep, err := CheckIntegrity(ctx, path, false); err != nil || rep.Audit.FirstSeq != first {
		t.Fatalf("after pruning: %+v %v", rep, err)
	}
	if err := q.app.checkAuditHead(ctx, m); err != nil {
		t.Fatalf("the stale token head after pruning: %v", err)
	}
	// Restarted (the stop writes a new head to the token): sealed, the step
	// does not run; unsealed, it lets the old head's checkpoint go too.
	q.stop()
	q.start()
	q.app.maintainOnce(ctx, time.Now().Add(49*time.Hour))
	if v := retentionMetric(t, q.app, "appliance_retention_last_success_timestamp_seconds", "audit_checkpoints"); v != -1 {
		t.Fatalf("a sealed pass was recorded: %v", v)
	}
	q.unseal(1, 2)
	signOne(t, q.env, 4, "c-after")
	q.app.maintainOnce(ctx, time.Now().Add(49*time.Hour))
	if v := retentionMetric(t, q.app, "appliance_retention_errors_total", "audit_checkpoints"); v != 0 {
		t.Fatalf("checkpoint pruning errors: %v", v)
	}
	if kept := countRows(t, path, fmt.Sprintf(`SELECT count(*) FROM audit_checkpoints WHERE seq = %d`, head.Seq)); kept != 0 {
		t.Fatal("the old head's checkpoint was kept after the token moved on")
	}
	m, _ = q.app.currentAudit()
	if err := q.app.checkAuditHead(ctx, m); err != nil {
		t.Fatalf("the token's head after pruning: %v", err)
	}
}

// TestRetentionFailureRaisesAlert: a retention step whose pass fails (here
// the archive directory's path is a file) makes /v1/health degraded with
// the step and the error, and raises the retention alert; its next
// successful pass clears both.
func TestRetentionFailureRaisesAlert(t *testing.T) {
	q := signedAndCheckpointed(t, "retention: {audit: 48h}\n", "f-")
	ctx := context.Background()
	if r := q.app.checker.Fresh(ctx); !r.Checks[alertRetention].OK {
		t.Fatalf("before any pass: %+v", r.Checks[alertRetention])
	}
	dir := q.cfg.AuditArchiveDir()
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	q.app.maintainOnce(ctx, time.Now().Add(49*time.Hour))
	r := q.app.checker.Fresh(ctx)
	chk := r.Checks[alertRetention]
	if chk.OK || r.Status != health.StatusDegraded || !strings.Contains(chk.Detail, "pruning archived audit entries failed at ") ||
		!strings.Contains(chk.Detail, filepath.Base(dir)) {
		t.Fatalf("after a failed archive pass: %s %+v", r.Status, chk)
	}
	if v := retentionMetric(t, q.app, "appliance_retention_errors_total", "audit_entries"); v != 1 {
		t.Fatalf("audit step errors %v", v)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	q.app.maintainOnce(ctx, time.Now().Add(49*time.Hour))
	if r := q.app.checker.Fresh(ctx); !r.Checks[alertRetention].OK || r.Status == health.StatusDegraded {
		t.Fatalf("after a pass that succeeded: %s %+v", r.Status, r.Checks[alertRetention])
	}
	if n := q.logs.FilterMessage("alert raised").FilterField(zap.String("alert", alertRetention)).Len(); n != 1 {
		t.Fatalf("%d 'alert raised' lines for retention", n)
	}
}
