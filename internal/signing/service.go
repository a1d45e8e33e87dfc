// Package signing carries a sign request from its decoded payload to a
// recorded signature: key and grant checks, chain decoding, network
// enforcement, the idempotent request record, the HSM signature, its
// verification against the key's pinned public key, and the final record.
//
// Invariant: nothing is signed that is not recorded. The request row is
// committed (state "signing") before the HSM is asked, and the signed
// transaction is committed before it is returned to anyone.
package signing

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/screening"
	"github.com/custodysigner/appliance/internal/store"
)

// Signer is the part of the HSM the service uses.
type Signer interface {
	Sign(ctx context.Context, ref hsm.KeyRef, data []byte) ([]byte, error)
	KeyError(id []byte) error
}

// Gate admits signers while the appliance is unsealed and not frozen. The
// returned context is cancelled when a freeze begins; release is called once
// the outcome is recorded. Refusal says why signing is refused now, if it is.
type Gate interface {
	Enter(ctx context.Context) (context.Context, func(), error)
	Refusal() error
}

// RecordObserver hears whether recording succeeds (the automatic freeze
// after repeated failures to record).
type RecordObserver interface {
	RecordFailed(err error)
	RecordOK()
}

type noObserver struct{}

func (noObserver) RecordFailed(error) {}
func (noObserver) RecordOK()          {}

// Store is the part of the store the service uses.
type Store interface {
	CreateRequest(ctx context.Context, r store.Request, hook func(*store.Tx, *store.Request) error) (store.Request, bool, error)
	CompleteRequestWith(ctx context.Context, id string, c store.Completion) error
	FailRequest(ctx context.Context, id, code, message string) error
	RestartRequest(ctx context.Context, id string) error
	GetRequest(ctx context.Context, id string) (store.Request, error)
	WriteTx(ctx context.Context, fn func(tx *store.Tx) error) error
}

// Request is a sign request as it arrives from the API.
type Request struct {
	KeyID          string
	Chain          string
	Network        string
	Payload        string
	IdempotencyKey string
	Expect         *Expect
}

// Result is a successful answer.
type Result struct {
	RequestID string
	State     string
	SignedTx  string // 0x-hex for Ethereum; hex for Bitcoin, empty until every input is final
	TxHash    string // Ethereum: 0x-hex
	TxID      string // Bitcoin
	PSBT      string // Bitcoin: base64 with the appliance's partial signatures
	// Pending approval: what officers sign, and how many must.
	Digest            string
	ApprovalsRequired int
}

// Screener checks a destination against the known-risk lists.
type Screener interface {
	Check(chain screening.Chain, addr string) (*screening.Hit, error)
}

// Service signs requests. It is safe for concurrent use.
type Service struct {
	store    Store
	gate     Gate
	hsm      func() Signer // the unsealed HSM, nil while sealed
	keys     *Keyring
	log      *zap.Logger
	inflight singleflight.Group
	records  RecordObserver
	screener Screener
	rules    *policy.Engine
	officers Officers
	// approvalTTL bounds how long a request waits for its approvals.
	approvalTTL time.Duration
	approving   sync.Mutex // approvals, rejections and the signing they trigger happen one at a time
	// rejectionsToEnd is how many officers' rejections end a pending request.
	rejectionsToEnd int
	now             func() time.Time
	// turns orders the principals' signatures into the HSM (FairHSM); nil: off.
	turns *fairGate
}

// New returns a Service. Every dependency is required; h returns the HSM
// while the appliance is unsealed.
func New(st Store, gate Gate, h func() Signer, keys *Keyring, log *zap.Logger) (*Service, error) {
	if st == nil || gate == nil || h == nil || keys == nil || log == nil {
		return nil, errors.New("signing: store, gate, hsm, keyring and logger are required")
	}
	return &Service{store: st, gate: gate, hsm: h, keys: keys, log: log, now: time.Now, records: noObserver{}}, nil
}

// ObserveRecords reports every record success and failure to o. Call it
// before serving.
func (s *Service) ObserveRecords(o RecordObserver) { s.records = o }

// ScreenWith screens every destination with sc. Call it before serving.
func (s *Service) ScreenWith(sc Screener) { s.screener = sc }

// Sign decodes, records, signs and records again. Errors are *apierr.Error.
func (s *Service) Sign(ctx context.Context, p *access.Principal, req Request) (*Result, error) {
	if req.KeyID == "" || req.Chain == "" || req.Payload == "" {
		return nil, apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "key_id, chain and payload are required")
	}
	key, err := s.keys.Get(req.KeyID)
	if err != nil {
		return nil, err
	}
	if !p.Granted(key.ID) {
		return nil, apierr.New(http.StatusForbidden, apierr.CodeForbidden, "key %q is not granted to %s", key.ID, p.Name)
	}
	// The gate is held until the outcome is recorded: a freeze waits for
	// this request to finish, and no request enters after it.
	gctx, release, err := s.gate.Enter(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	ctx = gctx
	h := s.hsm()
	if h == nil {
		return nil, apierr.New(http.StatusServiceUnavailable, apierr.CodeSealed, "the appliance is sealed")
	}
	if err := s.keys.Usable(key, h); err != nil {
		return nil, err
	}
	if !strings.EqualFold(req.Chain, key.Chain) {
		return nil, apierr.New(http.StatusUnprocessableEntity, apierr.CodeWrongNetwork, "key %q signs for chain %q, not %q", key.ID, key.Chain, req.Chain)
	}
	prep, err := s.prepare(key, req)
	if err != nil {
		return nil, err
	}
	// Refusals after decoding are recorded: they are evidence.
	prep.refuse = s.refusal(prep, req)
	if req.IdempotencyKey == "" {
		return s.run(ctx, h, p, key, req, prep)
	}
	// Duplicates in flight in this process wait for the first and then
	// replay its recorded answer, so a request is never signed twice
	// concurrently.
	flight := p.Name + "\x00" + req.IdempotencyKey
	v, err, _ := s.inflight.Do(flight, func() (any, error) { return s.run(ctx, h, p, key, req, prep) })
	if err != nil {
		return nil, err
	}
	return v.(*Result), nil
}

func (s *Service) run(ctx context.Context, h Signer, p *access.Principal, key *Key, req Request, prep *prepared) (*Result, error) {
	state := store.StateSigning
	var code, message string
	if prep.refuse != nil {
		ae := apierr.From(prep.refuse)
		state, code, message = store.StateDenied, ae.Code, ae.Message
	}
	rec, created, err := s.store.CreateRequest(ctx, store.Request{
		Principal:      p.Name,
		IdempotencyKey: req.IdempotencyKey,
		KeyID:          key.ID,
		Chain:          key.Chain,
		Network:        key.Network,
		Payload:        prep.payload,
		PayloadHash:    prep.payloadHash,
		Intent:         prep.intent,
		Digest:         prep.digest,
		State:          state,
		ErrorCode:      code,
		ErrorMessage:   message,
	}, func(tx *store.Tx, r *store.Request) error {
		// Policy decides inside the request's own write transaction, with
		// its counter updates: concurrent requests cannot pass a limit together.
		if prep.refuse != nil || s.rules == nil {
			return nil
		}
		// Once started, the transaction's statements run to their end: it
		// may be shared with other requests (the store's group commit).
		ctx := context.WithoutCancel(ctx)
		d, err := s.rules.Evaluate(ctx, tx, policy.Request{KeyID: key.ID, Principal: p.Name, RequestID: r.ID, Intent: prep.policy})
		if err != nil {
			return err
		}
		if d.Outcome == policy.NeedsApproval && s.officers != nil {
			prep.pending = &store.Pending{Digest: approvalDigest(r.ID, key, prep.payload, prep.intent, d.Version),
				ApprovalsRequired: d.Approvals, ExpiresAt: s.now().Add(s.approvalTTL), PolicyVersion: d.Version}
			return store.PendRequestTx(ctx, tx, r, *prep.pending)
		}
		if prep.refuse = decisionError(d); prep.refuse != nil {
			ae := apierr.From(prep.refuse)
			code, message = ae.Code, ae.Message
			return store.DenyRequestTx(ctx, tx, r, ae.Code, ae.Message)
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			// Cancelled while waiting for the writer: by a freeze, or the
			// caller left. Not a failure to record.
			if refusal := s.gate.Refusal(); refusal != nil {
				return nil, refusal
			}
			return nil, apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeUnavailable, "request cancelled")
		}
		s.records.RecordFailed(err)
		return nil, recordError(fmt.Errorf("record request: %w", err), notRecorded)
	}
	if !created {
		return s.replay(ctx, h, rec, key, prep)
	}
	s.records.RecordOK()
	if prep.pending != nil {
		rec.Digest = prep.pending.Digest
		s.log.Info("request awaits officer approvals", zap.String("request_id", rec.ID), zap.Int("approvals_required", prep.pending.ApprovalsRequired))
		return pendingResult(rec, prep.pending.ApprovalsRequired), nil
	}
	if prep.refuse != nil {
		s.log.Warn("request denied", zap.String("request_id", rec.ID), zap.String("code", code), zap.String("reason", message))
		return nil, prep.refuse
	}
	return s.sign(ctx, h, rec, key, prep)
}

// replay answers a repeated idempotency key.
func (s *Service) replay(ctx context.Context, h Signer, rec store.Request, key *Key, prep *prepared) (*Result, error) {
	if rec.KeyID != key.ID || string(rec.PayloadHash) != string(prep.payloadHash) {
		return nil, apierr.New(http.StatusConflict, apierr.CodeIdempotencyConflict,
			"idempotency key %q was used for a different request (%s)", rec.IdempotencyKey, rec.ID)
	}
	switch rec.State {
	case store.StateSigned:
		return resultOf(rec), nil
	case store.StateDenied:
		return nil, apierr.New(deniedStatus(rec.ErrorCode), rec.ErrorCode, "%s", rec.ErrorMessage)
	case store.StatePendingApproval:
		pend, _, err := s.officers.PendingOf(ctx, rec.ID)
		if err != nil {
			return nil, apierr.Internal(err)
		}
		return pendingResult(rec, pend.ApprovalsRequired), nil
	case store.StateFailed:
		if err := s.store.RestartRequest(ctx, rec.ID); err != nil {
			return nil, recordError(fmt.Errorf("restart request %s: %w", rec.ID, err), notRecorded)
		}
		return s.sign(ctx, h, rec, key, prep)
	case store.StateSigning:
		// Left behind by a process that stopped mid-sign: no signature was
		// ever returned for it, so signing it now is the first answer.
		return s.sign(ctx, h, rec, key, prep)
	default:
		return nil, apierr.New(http.StatusConflict, apierr.CodeIdempotencyConflict, "request %s is %s", rec.ID, rec.State)
	}
}

func (s *Service) sign(ctx context.Context, h Signer, rec store.Request, key *Key, prep *prepared) (*Result, error) {
	// Charged to the requester, also when an officer's approval triggers it.
	done, err := prep.signer.sign(ctx, s.fair(h, rec.Principal), key)
	if err != nil {
		ae := apierr.From(err)
		if ctx.Err() != nil {
			// Cancelled by a freeze (or the caller gave up): say which.
			if refusal := s.gate.Refusal(); refusal != nil {
				ae = apierr.From(refusal)
			}
		}
		// A fresh context: the caller's may be cancelled, the record must still say what happened.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if ferr := s.store.FailRequest(fctx, rec.ID, ae.Code, ae.Message); ferr != nil {
			s.log.Error("recording a failed request", zap.String("request_id", rec.ID), zap.Error(ferr))
		}
		return nil, ae
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.store.CompleteRequestWith(cctx, rec.ID, done); err != nil {
		// The signature is withheld: an unrecorded signature never leaves.
		s.records.RecordFailed(err)
		return nil, recordError(fmt.Errorf("record signature for %s: %w", rec.ID, err),
			"the signature could not be recorded (the database cannot be written) and was withheld; retry with the same idempotency key")
	}
	s.records.RecordOK()
	rec.State, rec.SignedTx, rec.TxHash, rec.SignedPSBT = store.StateSigned, done.SignedTx, done.TxHash, done.SignedPSBT
	return resultOf(rec), nil
}

// notRecorded is the message of a request the database refused to record.
const notRecorded = "the request could not be recorded (the database cannot be written); nothing was signed; retry with the same idempotency key"

// recordError answers a write the store refused: 503 unavailable when the
// database cannot be written right now (disk full, read-only, failing: the
// same request may succeed later), an internal error otherwise.
func recordError(err error, message string) *apierr.Error {
	if store.Unavailable(err) {
		return apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeUnavailable, "%s", message)
	}
	return apierr.Internal(err)
}

// resultOf renders a signed record in its chain's conventions.
func resultOf(rec store.Request) *Result {
	r := &Result{RequestID: rec.ID, State: rec.State}
	switch rec.Chain {
	case "bitcoin":
		r.TxID, r.PSBT = rec.TxHash, rec.SignedPSBT
		if len(rec.SignedTx) > 0 {
			r.SignedTx = hex.EncodeToString(rec.SignedTx)
		}
	default:
		r.SignedTx, r.TxHash = "0x"+hex.EncodeToString(rec.SignedTx), rec.TxHash
	}
	return r
}

// EnforcePolicy evaluates every request against its key's policy rules;
// requests the rules send to a quorum wait for officers (registered in o)
// for at most ttl. Call it before serving.
func (s *Service) EnforcePolicy(e *policy.Engine, o Officers, ttl time.Duration, rejectionsToEnd int) {
	s.rules, s.officers, s.approvalTTL, s.rejectionsToEnd = e, o, ttl, rejectionsToEnd
}

// decisionError turns a policy decision into the API's refusal, or nil. A
// needs-approval decision reaching it (no officers registered, or a re-check
// at quorum that now wants more approvals than were given) is refused: fail
// closed, never signed without its approvals.
func decisionError(d policy.Decision) error {
	switch d.Outcome {
	case policy.Allow:
		return nil
	case policy.NeedsApproval:
		return apierr.New(http.StatusForbidden, apierr.CodePolicyDenied,
			"%s: needs %d officer approvals (policy version %d)", d.Rule, d.Approvals, d.Version)
	}
	status := http.StatusForbidden
	if d.Code == apierr.CodeRateLimited {
		status = http.StatusTooManyRequests
	}
	return &apierr.Error{Status: status, Code: d.Code, Message: fmt.Sprintf("%s (policy version %d)", d.Message, d.Version), RetryAfter: d.RetryAfter}
}

// deniedStatus is the HTTP status a recorded refusal is replayed with.
func deniedStatus(code string) int {
	switch code {
	case apierr.CodeAddressInvalid:
		return http.StatusUnprocessableEntity
	case apierr.CodeRateLimited:
		return http.StatusTooManyRequests
	}
	return http.StatusForbidden
}

// refusal applies the checks that follow decoding: the chain's default
// policy, the caller's expectation, and known-risk screening.
func (s *Service) refusal(p *prepared, req Request) error {
	if s.rules == nil && p.unpoliced != nil {
		return p.unpoliced
	}
	if req.Expect != nil {
		if err := p.expect(*req.Expect); err != nil {
			return err
		}
	}
	return s.screen(p)
}

// Get returns a recorded request; callers check who may see it.
func (s *Service) Get(ctx context.Context, id string) (store.Request, error) {
	r, err := s.store.GetRequest(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return r, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no request %q", id)
	}
	if err != nil {
		return r, apierr.Internal(err)
	}
	return r, nil
}
