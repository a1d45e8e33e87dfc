package signing

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/governance"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/store"
)

// ApprovalTag is the domain separation tag of transaction approval digests.
const ApprovalTag = "custodysigner/appliance/v1/transaction-approval"

// approvalDigest binds what officers approve: the request id, the chain,
// network and key, the exact payload bytes, the decoded intent (every
// destination and amount, asset, fee, nonce) and the policy version, under a
// domain tag, so an approval cannot be replayed onto anything else.
func approvalDigest(id string, key *Key, payload, intent []byte, policyVersion int) []byte {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(ApprovalTag), []byte(id), []byte(key.Chain), []byte(key.Network), []byte(key.ID),
		payload, intent, []byte(strconv.Itoa(policyVersion))} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	return h.Sum(nil)
}

// pendingResult is the 202 answer for a request waiting for approvals.
func pendingResult(rec store.Request, required int) *Result {
	return &Result{RequestID: rec.ID, State: store.StatePendingApproval, Digest: hex.EncodeToString(rec.Digest), ApprovalsRequired: required}
}

// Officers lists the registered approval keys.
type Officers interface {
	OfficerKey(ctx context.Context, name string) (ed25519.PublicKey, error)
	PendingOf(ctx context.Context, id string) (store.Pending, []store.Approval, error)
	ListRequests(ctx context.Context, state string, limit int) ([]store.Request, error)
}

// Approve records an officer's Ed25519 signature over a pending request's
// digest. At the threshold the policy is checked again (limits may have
// moved since) and the transaction is signed. The requester cannot approve;
// an officer counts once; approvals end with the request's expiry.
func (s *Service) Approve(ctx context.Context, officer *access.Principal, id string, sig []byte) (store.Request, error) {
	s.approving.Lock()
	defer s.approving.Unlock()
	rec, err := s.pendingRecord(ctx, id)
	if err != nil {
		return rec, err
	}
	pend, approvals, err := s.officers.PendingOf(ctx, id)
	if err != nil {
		return rec, apierr.Internal(err)
	}
	if !s.now().Before(pend.ExpiresAt) {
		s.finish(ctx, rec, store.StateExpired, apierr.CodeExpired, "approvals did not arrive before the request expired")
		return rec, apierr.New(http.StatusConflict, apierr.CodeExpired, "request %s expired at %s", id, pend.ExpiresAt.Format(time.RFC3339))
	}
	if officer.Name == rec.Principal {
		return rec, apierr.New(http.StatusForbidden, apierr.CodeForbidden, "the requester cannot approve its own request")
	}
	pub, err := governance.OfficerKey(ctx, s.officers, officer.Name)
	if err != nil {
		return rec, err
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, rec.Digest, sig) {
		return rec, apierr.New(http.StatusUnprocessableEntity, apierr.CodeApprovalInvalid,
			"the signature does not verify with %s's approval key over request %s's digest", officer.Name, id)
	}
	err = s.store.WriteTx(ctx, func(tx *store.Tx) error {
		if err := store.AddRequestApprovalTx(ctx, tx, id, store.Approval{Officer: officer.Name, Signature: sig, At: s.now().UTC()}); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "request_approval", officer.Name, id)
	})
	if errors.Is(err, store.ErrConflict) {
		return rec, apierr.New(http.StatusConflict, apierr.CodeDuplicateApproval, "%s already approved %s", officer.Name, id)
	}
	if err != nil {
		return rec, recordError(err, "the approval could not be recorded (the database cannot be written); submit it again later")
	}
	if len(approvals)+1 < pend.ApprovalsRequired {
		return s.Get(ctx, id)
	}
	return s.signApproved(ctx, rec, len(approvals)+1)
}

// signApproved re-checks the policy and signs a request that reached its quorum.
func (s *Service) signApproved(ctx context.Context, rec store.Request, approvals int) (store.Request, error) {
	key, err := s.keys.Get(rec.KeyID)
	if err != nil {
		return rec, err
	}
	prep, err := s.prepare(key, requestOf(rec))
	if err != nil {
		return rec, err
	}
	if !samePayload(rec, prep) {
		return rec, apierr.Internal(fmt.Errorf("request %s: recorded payload does not re-prepare to its hash", rec.ID))
	}
	// Release the usage counted while pending and evaluate again, in one
	// transaction: limits may have been used up elsewhere meanwhile.
	var refusal error
	err = s.store.WriteTx(ctx, func(tx *store.Tx) error {
		if err := s.rules.Release(ctx, tx, rec.ID); err != nil {
			return err
		}
		d, err := s.rules.Evaluate(ctx, tx, policy.Request{KeyID: key.ID, Principal: rec.Principal, RequestID: rec.ID, Intent: prep.policy})
		if err != nil {
			return err
		}
		if d.Outcome == policy.NeedsApproval && d.Approvals <= approvals {
			d.Outcome = policy.Allow
		}
		if refusal = decisionError(d); refusal != nil {
			ae := apierr.From(refusal)
			return store.MoveRequestTx(ctx, tx, rec.ID, store.StatePendingApproval, store.StateDenied, ae.Code, ae.Message)
		}
		return store.MoveRequestTx(ctx, tx, rec.ID, store.StatePendingApproval, store.StateSigning, "", "")
	})
	if err != nil {
		return rec, recordError(err, "the approved request could not be recorded (the database cannot be written); nothing was signed")
	}
	if refusal != nil {
		s.log.Warn("approved request denied on re-check", zap.String("request_id", rec.ID), zap.Error(refusal))
		return s.Get(ctx, rec.ID)
	}
	gctx, release, err := s.gate.Enter(ctx)
	if err != nil {
		// Sealed or frozen: the request stays "signing" and signs when the
		// requester retries with its idempotency key.
		return rec, err
	}
	defer release()
	h := s.hsm()
	if h == nil {
		return rec, apierr.New(http.StatusServiceUnavailable, apierr.CodeSealed, "the appliance is sealed")
	}
	if _, err := s.sign(gctx, h, rec, key, prep); err != nil {
		return rec, err
	}
	return s.Get(ctx, rec.ID)
}

// Reject records an officer's rejection; the configured number of them
// (one by default) ends the request.
func (s *Service) Reject(ctx context.Context, officer *access.Principal, id, reason string) (store.Request, error) {
	s.approving.Lock()
	defer s.approving.Unlock()
	rec, err := s.pendingRecord(ctx, id)
	if err != nil {
		return rec, err
	}
	var n int
	err = s.store.WriteTx(ctx, func(tx *store.Tx) error {
		var err error
		if n, err = store.AddRequestRejectionTx(ctx, tx, id, officer.Name, reason); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "request_rejection", officer.Name, id+": "+reason)
	})
	if errors.Is(err, store.ErrConflict) {
		return rec, apierr.New(http.StatusConflict, apierr.CodeConflict, "%s already rejected %s", officer.Name, id)
	}
	if err != nil {
		return rec, recordError(err, "the rejection could not be recorded (the database cannot be written); submit it again later")
	}
	if n >= max(s.rejectionsToEnd, 1) {
		s.finish(ctx, rec, store.StateRejected, "rejected", fmt.Sprintf("rejected by %s: %s", officer.Name, reason))
	}
	return s.Get(ctx, id)
}

// pendingRecord reads a request that must be waiting for approvals.
func (s *Service) pendingRecord(ctx context.Context, id string) (store.Request, error) {
	rec, err := s.Get(ctx, id)
	if err == nil && rec.State != store.StatePendingApproval {
		err = apierr.New(http.StatusConflict, apierr.CodeConflict, "request %s is %s, not pending approval", id, rec.State)
	}
	return rec, err
}

// finish moves a pending request to a final state and releases its usage.
func (s *Service) finish(ctx context.Context, rec store.Request, state, code, message string) {
	err := s.store.WriteTx(ctx, func(tx *store.Tx) error {
		if err := store.MoveRequestTx(ctx, tx, rec.ID, store.StatePendingApproval, state, code, message); err != nil {
			return err
		}
		if s.rules != nil {
			return s.rules.Release(ctx, tx, rec.ID)
		}
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrConflict) {
		s.log.Error("finishing a pending request", zap.String("request_id", rec.ID), zap.Error(err))
	}
}

// List returns requests in a state.
func (s *Service) List(ctx context.Context, state string) ([]store.Request, error) {
	if s.officers == nil {
		return nil, nil
	}
	rs, err := s.officers.ListRequests(ctx, state, 200)
	if err != nil {
		return nil, apierr.Internal(err)
	}
	return rs, nil
}

// Approvals returns how many approvals a request needs and who gave them.
func (s *Service) Approvals(ctx context.Context, id string) (int, []string, error) {
	if s.officers == nil {
		return 0, nil, nil
	}
	p, as, err := s.officers.PendingOf(ctx, id)
	if err != nil {
		return 0, nil, err
	}
	names := make([]string, 0, len(as))
	for _, a := range as {
		names = append(names, a.Officer)
	}
	return p.ApprovalsRequired, names, nil
}

// requestOf rebuilds the sign request from its record, for re-preparation.
func requestOf(rec store.Request) Request {
	payload := string(rec.Payload)
	if rec.Chain == "ethereum" {
		payload = "0x" + hex.EncodeToString(rec.Payload)
	}
	return Request{KeyID: rec.KeyID, Chain: rec.Chain, Network: rec.Network, Payload: payload}
}

// samePayload reports whether a re-prepared request still matches its record.
func samePayload(rec store.Request, p *prepared) bool {
	return bytes.Equal(rec.PayloadHash, p.payloadHash)
}
