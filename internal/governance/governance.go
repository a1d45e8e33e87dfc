// Package governance runs quorum proposals: actions no single person may
// take (unfreeze, create a key, grant a key, add or remove a principal or an
// officer). A proposal executes when a threshold of distinct officers have
// posted valid Ed25519 signatures over its digest. The digest binds a domain
// tag, the proposal id, its kind, its canonical parameters, its threshold and
// its expiry, so an approval cannot be replayed onto anything else.
package governance

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/store"
)

// DigestTag is the domain separation tag of proposal digests.
const DigestTag = "custodysigner/appliance/v1/proposal"

// Executor carries out an approved proposal inside tx. Work outside the
// database (an HSM key generation) happens before tx commits; a returned
// error rolls the transaction back and marks the proposal failed.
type Executor interface {
	Execute(ctx context.Context, tx *store.Tx, p store.Proposal) (result string, err error)
	// After runs once the execution committed (e.g. reload registries).
	After(ctx context.Context, p store.Proposal)
}

// Store is what governance persists through.
type Store interface {
	WriteTx(ctx context.Context, fn func(tx *store.Tx) error) error
	GetProposal(ctx context.Context, id string) (store.Proposal, error)
	ListProposals(ctx context.Context, state string, limit int) ([]store.Proposal, error)
	OfficerKey(ctx context.Context, name string) (ed25519.PublicKey, error)
	GetCeremony(ctx context.Context) (store.Ceremony, error)
}

// Service runs proposals.
type Service struct {
	st        Store
	exec      Executor
	ttl       time.Duration
	threshold int
	log       *zap.Logger
	now       func() time.Time
	mu        sync.Mutex // approvals and executions are serialised: a proposal executes once
}

// New returns a Service. threshold is the number of distinct officer
// approvals a proposal needs; 0 takes the unseal ceremony's threshold.
func New(ctx context.Context, st Store, exec Executor, threshold int, ttl time.Duration, log *zap.Logger) (*Service, error) {
	if st == nil || exec == nil || log == nil {
		return nil, errors.New("governance: store, executor and logger are required")
	}
	if threshold == 0 {
		c, err := st.GetCeremony(ctx)
		if err != nil {
			return nil, fmt.Errorf("governance: no threshold configured and no ceremony: %w", err)
		}
		threshold = c.Threshold
	}
	if threshold < 1 {
		return nil, errors.New("governance: threshold must be at least 1")
	}
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	return &Service{st: st, exec: exec, ttl: ttl, threshold: threshold, log: log, now: time.Now}, nil
}

// Digest computes the bytes officers sign for p.
func Digest(p store.Proposal) []byte {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(DigestTag), []byte(p.ID), []byte(p.Kind), p.Params} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	var tail [24]byte
	binary.BigEndian.PutUint64(tail[0:], uint64(p.Threshold))
	binary.BigEndian.PutUint64(tail[8:], uint64(p.CreatedAt.UnixNano()))
	binary.BigEndian.PutUint64(tail[16:], uint64(p.ExpiresAt.UnixNano()))
	h.Write(tail[:])
	return h.Sum(nil)
}

// Propose records a new proposal by an officer.
func (s *Service) Propose(ctx context.Context, proposer, kind string, params json.RawMessage) (store.Proposal, error) {
	canon, err := CanonicalParams(kind, params)
	if err != nil {
		return store.Proposal{}, apierr.Wrap(err, http.StatusBadRequest, apierr.CodeBadRequest, "%v", err)
	}
	now := s.now().UTC()
	p := store.Proposal{ID: "prop_" + strings.ToLower(rand.Text()), Kind: kind, Params: canon, Proposer: proposer,
		State: store.ProposalPending, Threshold: s.threshold, CreatedAt: now, ExpiresAt: now.Add(s.ttl)}
	p.Digest = Digest(p)
	err = s.st.WriteTx(ctx, func(tx *store.Tx) error {
		if err := store.InsertProposal(ctx, tx, p); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "proposal", proposer, p.ID+" "+kind+" "+string(canon))
	})
	if err != nil {
		return store.Proposal{}, apierr.Internal(err)
	}
	s.log.Info("proposal created", zap.String("proposal", p.ID), zap.String("kind", kind), zap.String("proposer", proposer))
	return p, nil
}

// Get returns a proposal, marking it expired when its time has passed.
func (s *Service) Get(ctx context.Context, id string) (store.Proposal, error) {
	p, err := s.st.GetProposal(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return p, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no proposal %q", id)
	}
	if err != nil {
		return p, apierr.Internal(err)
	}
	if p.State == store.ProposalPending && !s.now().Before(p.ExpiresAt) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.expire(ctx, &p); err != nil {
			return p, err
		}
	}
	return p, nil
}

// List returns proposals in a state ("" for all).
func (s *Service) List(ctx context.Context, state string) ([]store.Proposal, error) {
	ps, err := s.st.ListProposals(ctx, state, 200)
	if err != nil {
		return nil, apierr.Internal(err)
	}
	return ps, nil
}

func (s *Service) expire(ctx context.Context, p *store.Proposal) error {
	err := s.st.WriteTx(ctx, func(tx *store.Tx) error {
		if err := store.DecideProposal(ctx, tx, p.ID, store.ProposalExpired, "expired"); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "proposal_expired", "", p.ID)
	})
	if err != nil && !errors.Is(err, store.ErrConflict) {
		return apierr.Internal(err)
	}
	p.State, p.Result = store.ProposalExpired, "expired"
	return nil
}

// Approve verifies officer's signature over the proposal's digest and
// records it; at the threshold the proposal executes, once.
func (s *Service) Approve(ctx context.Context, officer, id string, sig []byte) (store.Proposal, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.st.GetProposal(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return p, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no proposal %q", id)
	}
	if err != nil {
		return p, apierr.Internal(err)
	}
	if p.State == store.ProposalPending && !s.now().Before(p.ExpiresAt) {
		if err := s.expire(ctx, &p); err != nil {
			return p, err
		}
	}
	if p.State != store.ProposalPending {
		code := apierr.CodeConflict
		if p.State == store.ProposalExpired {
			code = apierr.CodeExpired
		}
		return p, apierr.New(http.StatusConflict, code, "proposal %s is %s", id, p.State)
	}
	// The stored digest must be the one recomputed from the stored fields:
	// a tampered row cannot collect approvals for something else.
	if !bytes.Equal(Digest(p), p.Digest) {
		return p, apierr.Internal(fmt.Errorf("proposal %s: stored digest does not match its fields", id))
	}
	key, err := OfficerKey(ctx, s.st, officer)
	if err != nil {
		return p, err
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(key, p.Digest, sig) {
		s.log.Warn("approval signature refused", zap.String("proposal", id), zap.String("officer", officer))
		return p, apierr.New(http.StatusUnprocessableEntity, apierr.CodeApprovalInvalid,
			"the signature does not verify with %s's approval key over proposal %s's digest", officer, id)
	}
	for _, a := range p.Approvals {
		if a.Officer == officer {
			return p, apierr.New(http.StatusConflict, apierr.CodeDuplicateApproval, "%s already approved %s", officer, id)
		}
	}
	err = s.st.WriteTx(ctx, func(tx *store.Tx) error {
		if err := store.AddApproval(ctx, tx, id, store.Approval{Officer: officer, Signature: sig, At: s.now().UTC()}); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "proposal_approval", officer, id)
	})
	if errors.Is(err, store.ErrConflict) {
		return p, apierr.New(http.StatusConflict, apierr.CodeDuplicateApproval, "%s already approved %s", officer, id)
	}
	if err != nil {
		return p, apierr.Internal(err)
	}
	p.Approvals = append(p.Approvals, store.Approval{Officer: officer, Signature: sig})
	if len(p.Approvals) >= p.Threshold {
		s.execute(ctx, &p)
	}
	return s.st.GetProposal(ctx, id)
}

// OfficerKey returns an officer's approval key, mapping a missing one to the
// API's refusal. Proposals and transaction approvals share it.
func OfficerKey(ctx context.Context, st interface {
	OfficerKey(context.Context, string) (ed25519.PublicKey, error)
}, officer string) (ed25519.PublicKey, error) {
	k, err := st.OfficerKey(ctx, officer)
	if errors.Is(err, store.ErrNotFound) {
		return nil, apierr.New(http.StatusForbidden, apierr.CodeForbidden, "%s has no registered approval key", officer)
	}
	if err != nil {
		return nil, apierr.Internal(err)
	}
	return k, nil
}

// execute runs the proposal and records the outcome; s.mu is held.
func (s *Service) execute(ctx context.Context, p *store.Proposal) {
	var result string
	err := s.st.WriteTx(ctx, func(tx *store.Tx) error {
		r, err := s.exec.Execute(ctx, tx, *p)
		if err != nil {
			return err
		}
		result = r
		if err := store.DecideProposal(ctx, tx, p.ID, store.ProposalExecuted, r); err != nil {
			return err
		}
		return store.AppendEvent(ctx, tx, "proposal_executed", "", p.ID+": "+r)
	})
	if err != nil {
		s.log.Error("proposal failed", zap.String("proposal", p.ID), zap.String("kind", p.Kind), zap.Error(err))
		ferr := s.st.WriteTx(ctx, func(tx *store.Tx) error {
			if err := store.DecideProposal(ctx, tx, p.ID, store.ProposalFailed, err.Error()); err != nil {
				return err
			}
			return store.AppendEvent(ctx, tx, "proposal_failed", "", p.ID+": "+err.Error())
		})
		if ferr != nil {
			s.log.Error("recording a failed proposal", zap.Error(ferr))
		}
		return
	}
	s.log.Warn("proposal executed", zap.String("proposal", p.ID), zap.String("kind", p.Kind), zap.String("result", result))
	s.exec.After(ctx, *p)
}
