package api

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/labstack/echo/v4"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/jsonstrict"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

type healthBody struct {
	Status string `json:"status"`
	Sealed bool   `json:"sealed"`
	Frozen bool   `json:"frozen"`
	Checks any    `json:"checks"`
}

// health answers any client whose certificate verified, registered or not.
func (s *Server) health(c echo.Context) error {
	r := s.deps.Health.Run(c.Request().Context())
	sealed, frozen := s.deps.Sealed()
	code := http.StatusOK
	if !r.Healthy() {
		code = http.StatusServiceUnavailable
	}
	return c.JSON(code, healthBody{Status: r.Status, Sealed: sealed, Frozen: frozen, Checks: r.Checks})
}

func (s *Server) status(c echo.Context) error {
	return c.JSON(http.StatusOK, s.deps.Status(c.Request().Context()))
}

// KeyBody is the JSON shape of a key.
type KeyBody struct {
	ID        string `json:"id"`
	Label     string `json:"label"`
	Algorithm string `json:"algorithm"`
	Chain     string `json:"chain"`
	Network   string `json:"network"`
	PublicKey string `json:"public_key"`
	Address   string `json:"address,omitempty"`
}

func keyBody(k *signing.Key) KeyBody {
	return KeyBody{ID: k.ID, Label: k.Label, Algorithm: k.Algorithm, Chain: k.Chain, Network: k.Network,
		PublicKey: hex.EncodeToString(k.PublicKey), Address: k.Address}
}

// visible: clients see the keys granted to them; officers and auditors see all.
func visible(p *access.Principal, k *signing.Key) bool {
	return p.HasAny(access.RoleOfficer, access.RoleAuditor) || p.Granted(k.ID)
}

func (s *Server) listKeys(c echo.Context) error {
	p := principalOf(c)
	out := []KeyBody{}
	for _, k := range s.deps.Keys.List() {
		if visible(p, k) {
			out = append(out, keyBody(k))
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"keys": out})
}

func (s *Server) getKey(c echo.Context) error {
	id := c.Param("id")
	c.Set("key_id", id)
	k, err := s.deps.Keys.Get(id)
	if err != nil || !visible(principalOf(c), k) {
		// Same answer for unknown and not visible: key ids are not an oracle.
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no key %q", id)
	}
	return c.JSON(http.StatusOK, keyBody(k))
}

// SignBody is the JSON of POST /v1/sign.
type SignBody struct {
	KeyID          string          `json:"key_id"`
	Chain          string          `json:"chain"`
	Network        string          `json:"network"`
	Payload        string          `json:"payload"`
	IdempotencyKey string          `json:"idempotency_key"`
	Expect         *signing.Expect `json:"expect,omitempty"`
}

// SignedBody is a 200 answer of POST /v1/sign.
type SignedBody struct {
	RequestID string `json:"request_id"`
	State     string `json:"state"`
	SignedTx  string `json:"signed_tx,omitempty"`
	TxHash    string `json:"tx_hash,omitempty"`
	TxID      string `json:"txid,omitempty"`
	PSBT      string `json:"psbt,omitempty"`
	// Pending approval (202).
	Digest            string   `json:"digest,omitempty"`
	ApprovalsRequired int      `json:"approvals_required,omitempty"`
	Approvals         []string `json:"approvals,omitempty"`
}

func (s *Server) sign(c echo.Context) error {
	var b SignBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	c.Set("key_id", b.KeyID)
	status, body, err := s.signOne(c.Request().Context(), principalOf(c), b)
	if err != nil {
		return err
	}
	c.Set("request_id", body.RequestID)
	return c.JSON(status, body)
}

// signOne is one sign request, answered: the status and body of POST
// /v1/sign, or its error. POST /v1/sign/batch calls it for each item.
func (s *Server) signOne(ctx context.Context, p *access.Principal, b SignBody) (int, SignedBody, error) {
	res, err := s.deps.Signer.Sign(ctx, p, signing.Request(b))
	if err != nil {
		return 0, SignedBody{}, err
	}
	if res.State == store.StatePendingApproval {
		return http.StatusAccepted, SignedBody{RequestID: res.RequestID, State: res.State, Digest: res.Digest,
			ApprovalsRequired: res.ApprovalsRequired, Approvals: []string{}}, nil
	}
	return http.StatusOK, SignedBody{RequestID: res.RequestID, State: res.State, SignedTx: res.SignedTx,
		TxHash: res.TxHash, TxID: res.TxID, PSBT: res.PSBT}, nil
}

// evaluate answers what /v1/sign would decide, recording nothing.
func (s *Server) evaluate(c echo.Context) error {
	var b SignBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	c.Set("key_id", b.KeyID)
	ev, err := s.deps.Signer.Evaluate(c.Request().Context(), principalOf(c), signing.Request(b))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, ev)
}

type allowlistBody struct {
	KeyID   string `json:"key_id"`
	Address string `json:"address"`
}

// addAllowlist: one officer adds a destination, effective after the time lock.
func (s *Server) addAllowlist(c echo.Context) error {
	var b allowlistBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	if b.KeyID == "" || b.Address == "" {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "key_id and address are required")
	}
	c.Set("key_id", b.KeyID)
	res, err := s.deps.Signer.AddAllowlist(c.Request().Context(), principalOf(c), b.KeyID, b.Address)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, res)
}

// RequestBody is the JSON of GET /v1/requests/{id}.
type RequestBody struct {
	ID        string            `json:"request_id"`
	State     string            `json:"state"`
	KeyID     string            `json:"key_id"`
	Chain     string            `json:"chain"`
	Network   string            `json:"network"`
	Principal string            `json:"principal"`
	Intent    json.RawMessage   `json:"intent,omitempty"`
	Digest    string            `json:"digest"`
	SignedTx  string            `json:"signed_tx,omitempty"`
	TxHash    string            `json:"tx_hash,omitempty"`
	TxID      string            `json:"txid,omitempty"`
	PSBT      string            `json:"psbt,omitempty"`
	Error     *apierr.BodyError `json:"error,omitempty"`
	// Requests sent to officers' approval.
	ApprovalsRequired int      `json:"approvals_required,omitempty"`
	Approvals         []string `json:"approvals,omitempty"`
	CreatedAt         string   `json:"created_at"`
	UpdatedAt         string   `json:"updated_at"`
}

// maxWait bounds GET /v1/requests/{id}?wait=.
const maxWait = 60 * time.Second

// allowWait gives a long poll's answer its full http.write_timeout after
// the wait: the server counts that timeout from when it read the request,
// so a wait beyond it would otherwise end in a connection closed
// unanswered. Only this response's deadline moves; net/http sets the
// next request's own. (The read timeout needs nothing: net/http clears the
// read deadline once a request's body has been read.)
func (s *Server) allowWait(c echo.Context, wait time.Duration) {
	wt := s.deps.HTTP.WriteTimeout.D()
	if wait <= 0 || wt <= 0 {
		return
	}
	err := http.NewResponseController(c.Response()).SetWriteDeadline(time.Now().Add(wait + wt))
	if err != nil && !errors.Is(err, http.ErrNotSupported) {
		logOf(c).Warn("long poll: the write deadline could not be extended", zap.Error(err))
	}
}

func (s *Server) getRequest(c echo.Context) error {
	id := c.Param("id")
	var wait time.Duration
	if w := c.QueryParam("wait"); w != "" {
		d, err := time.ParseDuration(w)
		if err != nil || d < 0 {
			return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "wait must be a duration like 30s")
		}
		wait = min(d, maxWait)
	}
	r, err := s.deps.Signer.Get(c.Request().Context(), id)
	if err != nil {
		return err
	}
	// Long-poll: wait for a final state, bounded, and only for a caller who
	// may see the request.
	s.allowWait(c, wait)
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
poll:
	for wait > 0 && (r.State == store.StatePendingApproval || r.State == store.StateSigning) && time.Now().Before(deadline) && s.mayRead(c, r) {
		select {
		case <-c.Request().Context().Done():
			return c.Request().Context().Err()
		case <-s.draining:
			// Shutting down: answer with the state read last, now.
			break poll
		case <-tick.C:
		}
		if r, err = s.deps.Signer.Get(c.Request().Context(), id); err != nil {
			return err
		}
	}
	if !s.mayRead(c, r) {
		return apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no request %q", id)
	}
	c.Set("request_id", r.ID)
	c.Set("key_id", r.KeyID)
	return c.JSON(http.StatusOK, s.requestBodyWithApprovals(c, r))
}

// mayRead: a request is visible to its requester, officers and auditors.
func (s *Server) mayRead(c echo.Context, r store.Request) bool {
	p := principalOf(c)
	return r.Principal == p.Name || p.HasAny(access.RoleOfficer, access.RoleAuditor)
}

func (s *Server) requestBodyWithApprovals(c echo.Context, r store.Request) RequestBody {
	b := requestBody(r)
	if req, officers, err := s.deps.Signer.Approvals(c.Request().Context(), r.ID); err == nil && req > 0 {
		b.ApprovalsRequired, b.Approvals = req, officers
	}
	return b
}

// listRequests serves officers and auditors, e.g. ?state=pending_approval.
func (s *Server) listRequests(c echo.Context) error {
	state := c.QueryParam("state")
	if state == "" {
		state = store.StatePendingApproval
	}
	rs, err := s.deps.Signer.List(c.Request().Context(), state)
	if err != nil {
		return err
	}
	out := make([]RequestBody, 0, len(rs))
	for _, r := range rs {
		out = append(out, s.requestBodyWithApprovals(c, r))
	}
	return c.JSON(http.StatusOK, map[string]any{"requests": out})
}

func (s *Server) approveRequest(c echo.Context) error {
	sig, err := decodeSignature(c)
	if err != nil {
		return err
	}
	c.Set("request_id", c.Param("id"))
	r, err := s.deps.Signer.Approve(c.Request().Context(), principalOf(c), c.Param("id"), sig)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, s.requestBodyWithApprovals(c, r))
}

type rejectionBody struct {
	Reason string `json:"reason"`
}

func (s *Server) rejectRequest(c echo.Context) error {
	var b rejectionBody
	if err := decodeJSON(c, &b); err != nil {
		return err
	}
	if b.Reason == "" {
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "reason is required")
	}
	c.Set("request_id", c.Param("id"))
	r, err := s.deps.Signer.Reject(c.Request().Context(), principalOf(c), c.Param("id"), b.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, s.requestBodyWithApprovals(c, r))
}

func requestBody(r store.Request) RequestBody {
	b := RequestBody{ID: r.ID, State: r.State, KeyID: r.KeyID, Chain: r.Chain, Network: r.Network, Principal: r.Principal,
		Intent: r.Intent, Digest: hex.EncodeToString(r.Digest), TxHash: r.TxHash,
		CreatedAt: r.CreatedAt.UTC().Format("2006-01-02T15:04:05.000Z07:00"), UpdatedAt: r.UpdatedAt.UTC().Format("2006-01-02T15:04:05.000Z07:00")}
	switch {
	case r.Chain == "bitcoin":
		b.TxHash, b.TxID, b.PSBT = "", r.TxHash, r.SignedPSBT
		if len(r.SignedTx) > 0 {
			b.SignedTx = hex.EncodeToString(r.SignedTx)
		}
	case len(r.SignedTx) > 0:
		b.SignedTx = "0x" + hex.EncodeToString(r.SignedTx)
	}
	if r.ErrorCode != "" {
		b.Error = &apierr.BodyError{Code: r.ErrorCode, Message: r.ErrorMessage}
	}
	return b
}

// decodeJSON strictly decodes one JSON object: unknown fields and trailing
// data are errors, so a typo in a field name is never silently ignored.
func decodeJSON(c echo.Context, v any) error { return decodeStrict(c.Request().Body, v) }

// decodeStrict is decodeJSON over any reader (a batch's items). Beyond
// encoding/json's own checks, a member name must be exactly a field's name
// and may appear only once per object (see package jsonstrict): a proxy or
// policy layer in front of the appliance that reads the first "key_id", or
// only the exact one, must never see another request than the one signed.
func decodeStrict(r io.Reader, v any) error {
	err := jsonstrict.Decode(r, v)
	var he *echo.HTTPError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jsonstrict.ErrTrailingData):
		// Whatever stopped the read after the value (even the body limit).
		return apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "malformed JSON: trailing data after the object")
	case errors.As(err, &he):
		return he // body limit
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The connection's read deadline (http.read_timeout) passed
		// while the body was still arriving: a slow body.
		return apierr.Wrap(err, http.StatusRequestTimeout, CodeRequestTimeout, "the request body did not arrive within the read timeout")
	}
	// encoding/json's refusal, or a *jsonstrict.MemberError.
	return apierr.Wrap(err, http.StatusBadRequest, apierr.CodeBadRequest, "malformed JSON: %v", err)
}
