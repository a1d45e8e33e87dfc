package api

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/store"
)

type unsealBody struct {
	Share string `json:"share"`
}

// unseal takes one officer's share. The share never reaches a log line:
// the request logger records method, path and outcome only.
func (s *Server) unseal(c echo.Context) error {
	var b unsealBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	if b.Share == "" {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "share is required")
	}
	p, err := s.deps.Seal.SubmitShare(c.Request().Context(), principalOf(c).Name, b.Share)
	b.Share = ""
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

type freezeBody struct {
	Reason string `json:"reason"`
}

// freeze stops all signing. When it answers, no further signature is produced.
func (s *Server) freeze(c echo.Context) error {
	var b freezeBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	if b.Reason == "" {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "reason is required")
	}
	if err := s.deps.Seal.Freeze(c.Request().Context(), principalOf(c).Name, b.Reason); err != nil {
		return apierr.Internal(err)
	}
	return c.JSON(http.StatusOK, s.deps.Seal.State())
}

type proposeBody struct {
	Kind   string          `json:"kind"`
	Params json.RawMessage `json:"params"`
}

// ProposalBody is the JSON of a proposal.
type ProposalBody struct {
	ID                string          `json:"proposal_id"`
	Kind              string          `json:"kind"`
	Params            json.RawMessage `json:"params"`
	State             string          `json:"state"`
	Proposer          string          `json:"proposer"`
	Digest            string          `json:"digest"`
	ApprovalsRequired int             `json:"approvals_required"`
	Approvals         []ApprovalBody  `json:"approvals"`
	CreatedAt         time.Time       `json:"created_at"`
	ExpiresAt         time.Time       `json:"expires_at"`
	Result            string          `json:"result,omitempty"`
}

// ApprovalBody is one recorded approval.
type ApprovalBody struct {
	Officer string    `json:"officer"`
	At      time.Time `json:"at"`
}

func proposalBody(p store.Proposal) ProposalBody {
	b := ProposalBody{ID: p.ID, Kind: p.Kind, Params: p.Params, State: p.State, Proposer: p.Proposer,
		Digest: hex.EncodeToString(p.Digest), ApprovalsRequired: p.Threshold, Approvals: []ApprovalBody{},
		CreatedAt: p.CreatedAt, ExpiresAt: p.ExpiresAt, Result: p.Result}
	for _, a := range p.Approvals {
		b.Approvals = append(b.Approvals, ApprovalBody{Officer: a.Officer, At: a.At})
	}
	return b
}

func (s *Server) governance() (Governance, error) {
	if s.deps.Governance == nil {
		return nil, apierr.New(http.StatusConflict, apierr.CodeConflict, "this appliance has no officer ceremony: governance is unavailable")
	}
	return s.deps.Governance, nil
}

func (s *Server) propose(c echo.Context) error {
	g, err := s.governance()
	if err != nil {
		return err
	}
	var b proposeBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	p, err := g.Propose(c.Request().Context(), principalOf(c).Name, b.Kind, b.Params)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusAccepted, proposalBody(p))
}

func (s *Server) listProposals(c echo.Context) error {
	g, err := s.governance()
	if err != nil {
		return err
	}
	ps, err := g.List(c.Request().Context(), c.QueryParam("state"))
	if err != nil {
		return err
	}
	out := make([]ProposalBody, 0, len(ps))
	for _, p := range ps {
		out = append(out, proposalBody(p))
	}
	return c.JSON(http.StatusOK, map[string]any{"proposals": out})
}

func (s *Server) getProposal(c echo.Context) error {
	g, err := s.governance()
	if err != nil {
		return err
	}
	p, err := g.Get(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, proposalBody(p))
}

type approvalBody struct {
	Signature string `json:"signature"`
}

// decodeSignature reads an approval body: a base64 Ed25519 signature.
func decodeSignature(c echo.Context) ([]byte, error) {
	var b approvalBody
	if err := decodeJSON(c, &b); err != nil {
		return nil, err
	}
	sig, err := base64.StdEncoding.DecodeString(b.Signature)
	if err != nil {
		return nil, apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "signature must be base64")
	}
	return sig, nil
}

func (s *Server) approveProposal(c echo.Context) error {
	g, err := s.governance()
	if err != nil {
		return err
	}
	sig, err := decodeSignature(c)
	if err != nil {
		return err
	}
	p, err := g.Approve(c.Request().Context(), principalOf(c).Name, c.Param("id"), sig)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, proposalBody(p))
}
