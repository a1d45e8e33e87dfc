package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/audit"
)

// auditAPI serves GET /v1/audit from the store.
type auditAPI struct{ a *App }

func (x auditAPI) Page(ctx context.Context, after int64, limit int) (api.AuditPage, error) {
	st := x.a.store
	p := api.AuditPage{Entries: []audit.Line{}, Checkpoints: []audit.Line{}}
	head, _, err := st.AuditHead(ctx)
	if err != nil {
		return p, err
	}
	p.HeadSeq, p.Next = head, after
	var first int64 // the page's first entry: after+1, or later on an archived chain
	err = st.AuditEntries(ctx, after, limit, func(e *audit.Entry) error {
		l, err := audit.EntryLine(e)
		if err != nil {
			return err
		}
		p.Entries = append(p.Entries, l)
		if first == 0 {
			first = e.Seq
		}
		p.Next = e.Seq
		return nil
	})
	if err != nil {
		return p, err
	}
	if first == 0 {
		return p, nil // no entries: no checkpoints either
	}
	// Only the page's: one query over the checkpoints' primary key, not
	// every checkpoint (one per audit.checkpoint_interval) per page.
	cps, err := st.CheckpointsIn(ctx, first-1, p.Next)
	if err != nil {
		return p, err
	}
	for i := range cps {
		p.Checkpoints = append(p.Checkpoints, audit.CheckpointLine(&cps[i]))
	}
	return p, nil
}

func (x auditAPI) PublicKeys(ctx context.Context) ([]api.AuditKey, error) {
	ks, err := x.a.store.AuditKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.AuditKey, 0, len(ks))
	for i, k := range ks {
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("audit key %s: %w", k.KeyID, err)
		}
		pemKey, err := audit.MarshalPublicKey(pub)
		if err != nil {
			return nil, err
		}
		out = append(out, api.AuditKey{KeyID: k.KeyID, PublicKey: string(pemKey),
			CreatedAt: k.CreatedAt.Format(time.RFC3339), Active: i == len(ks)-1})
	}
	return out, nil
}

// authAuditor audits authentication and authorisation failures, at most
// perMinute one by one; the rest are counted and summarised in one entry
// when the next minute starts, so a flood cannot fill the disk.
type authAuditor struct {
	a         *App
	perMinute int

	mu         sync.Mutex
	window     time.Time
	n          int
	suppressed int
}

func (x *authAuditor) failed(ctx context.Context, f api.AuthFailure) {
	now := time.Now()
	x.mu.Lock()
	var summary int
	if now.Sub(x.window) >= time.Minute {
		summary, x.suppressed = x.suppressed, 0
		x.window, x.n = now, 0
	}
	x.n++
	record := x.n <= x.perMinute
	if !record {
		x.suppressed++
	}
	x.mu.Unlock()
	if summary > 0 {
		x.record(ctx, audit.Record{Kind: "auth_failures_suppressed",
			Detail: fmt.Sprintf("%d further authentication/authorisation failures in the previous minute were not recorded one by one", summary),
			Fields: map[string]string{"count": fmt.Sprint(summary)}})
	}
	if !record {
		return
	}
	x.record(ctx, audit.Record{Kind: "auth_failure", Principal: f.Principal, Detail: f.Message,
		Fields:    map[string]string{"code": f.Code, "method": f.Method, "path": f.Path},
		Sensitive: map[string]string{"remote_addr": f.Remote}})
}

func (x *authAuditor) record(ctx context.Context, rec audit.Record) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := x.a.store.RecordAudit(ctx, rec); err != nil {
		x.a.log.Error("recording an authentication failure", zap.Error(err))
	}
}
