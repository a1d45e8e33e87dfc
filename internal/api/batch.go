package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/config"
)

// POST /v1/sign/batch carries many sign requests in one call, for upstream
// systems that sign many at once. Each request is handled exactly as its
// own POST /v1/sign by the same principal (grants, idempotency, checks,
// policy, records and audit) and answered on its own; one request's failure
// never touches another. Only the batch's own shape can refuse the whole
// call, and then nothing is recorded.

const (
	batchPath = "/v1/sign/batch"
	// defaultSignBatchMax stands in when Deps.HTTP carries no
	// sign_batch_max (the configuration's default is the same).
	defaultSignBatchMax = 64
	// batchBytesPerRequest is the body a batch may carry per request it is
	// allowed to hold. Ethereum requests are well under 1 KiB; a 10-input
	// PSBT with its previous transactions is a few KiB.
	batchBytesPerRequest = 64 << 10
)

// SignBatchBody is the JSON of POST /v1/sign/batch: each element is the
// body POST /v1/sign takes.
type SignBatchBody struct {
	Requests []json.RawMessage `json:"requests"`
}

// BatchBody is the 200 answer of POST /v1/sign/batch: one result per
// request, in request order.
type BatchBody struct {
	Results []BatchResult `json:"results"`
}

// BatchResult is one request's answer. Status is the HTTP status POST
// /v1/sign would have answered; Result is then its body (200 signed, 202
// pending approval), or Error its error object.
type BatchResult struct {
	Index  int               `json:"index"`
	Status int               `json:"status"`
	Result json.RawMessage   `json:"result,omitempty"`
	Error  *apierr.BodyError `json:"error,omitempty"`
	// RetryAfter, for rate_limited, is the Retry-After POST /v1/sign would
	// have sent, in seconds.
	RetryAfter int `json:"retry_after,omitempty"`
}

// batchItem is one request of a batch: decoded, or refused on its own
// before it reaches the signer (malformed, too large).
type batchItem struct {
	body SignBody
	err  *apierr.Error
}

// signBatchMax is http.sign_batch_max.
func signBatchMax(h config.HTTP) int {
	if h.SignBatchMax > 0 {
		return h.SignBatchMax
	}
	return defaultSignBatchMax
}

// batchBodyLimit is the body limit of POST /v1/sign/batch: the per-request
// allowance times the most requests a batch may hold, and never less than
// a single POST /v1/sign may send.
func batchBodyLimit(h config.HTTP) int64 {
	return max(h.MaxBodyBytes, int64(signBatchMax(h))*batchBytesPerRequest)
}

// limitBody bounds every request body: http.max_body_bytes, or the batch
// limit for POST /v1/sign/batch. Echo runs it after routing, so c.Path() is
// the matched route.
func (s *Server) limitBody() echo.MiddlewareFunc {
	single := middleware.BodyLimit(bodyLimit(s.deps.HTTP.MaxBodyBytes))
	batch := middleware.BodyLimit(bodyLimit(batchBodyLimit(s.deps.HTTP)))
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		one, many := single(next), batch(next)
		return func(c echo.Context) error {
			if c.Path() == batchPath {
				return many(c)
			}
			return one(c)
		}
	}
}

// decodeSignBatch strictly decodes a batch. The batch itself is refused
// (400 bad_request, or 413 too_large beyond maxItems requests) when it is
// not a JSON object with 1..maxItems requests; a request that is malformed
// or over itemMax bytes is refused on its own, as POST /v1/sign would refuse
// it, and the others stand.
func decodeSignBatch(r io.Reader, maxItems int, itemMax int64) ([]batchItem, error) {
	var b SignBatchBody
	if err := decodeStrict(r, &b); err != nil {
		return nil, err
	}
	switch {
	case len(b.Requests) == 0:
		return nil, apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "requests must hold at least one sign request")
	case len(b.Requests) > maxItems:
		return nil, apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge,
			"%d sign requests in one batch; at most %d", len(b.Requests), maxItems)
	}
	items := make([]batchItem, len(b.Requests))
	for i, raw := range b.Requests {
		if int64(len(raw)) > itemMax {
			items[i].err = apierr.New(http.StatusRequestEntityTooLarge, apierr.CodeTooLarge, "request body is too large")
			continue
		}
		if err := decodeStrict(bytes.NewReader(raw), &items[i].body); err != nil {
			items[i].err = apierr.From(err)
		}
	}
	return items, nil
}

// batchGroups orders the work: requests sharing an idempotency key run one
// after another in request order (the first is the request, the others its
// replays or conflicts, as if sent later), every other request on its own.
func batchGroups(items []batchItem) [][]int {
	var groups [][]int
	byKey := map[string]int{}
	for i, it := range items {
		if it.err != nil {
			continue
		}
		k := it.body.IdempotencyKey
		if k == "" {
			groups = append(groups, []int{i})
			continue
		}
		if g, ok := byKey[k]; ok {
			groups[g] = append(groups[g], i)
			continue
		}
		byKey[k] = len(groups)
		groups = append(groups, []int{i})
	}
	return groups
}

// batchInFlight bounds how many requests of one batch are in flight at
// once. More in flight keeps the HSM session pool busy and gives the
// store's group commit more requests to share each commit; 64 is what a
// client with 64 connections to POST /v1/sign could already ask for, so a
// batch never asks more of the appliance at once than that, however large
// http.sign_batch_max is. (Tried on a 2-core machine: with 4 in flight,
// 2×GOMAXPROCS there, a batch of 64 was slower than the same 64 requests
// sent concurrently, with 16 about as fast, with 64 faster;
// docs/BENCHMARKS.md.)
const batchInFlight = 64

func batchWorkers(groups int) int { return max(1, min(groups, batchInFlight)) }

// signBatch serves POST /v1/sign/batch.
func (s *Server) signBatch(c echo.Context) error {
	items, err := decodeSignBatch(c.Request().Body, signBatchMax(s.deps.HTTP), s.deps.HTTP.MaxBodyBytes)
	if err != nil {
		return err
	}
	ctx, p := c.Request().Context(), principalOf(c)
	results := make([]BatchResult, len(items))
	for i, it := range items {
		if it.err != nil {
			results[i] = s.batchResult(c, p, i, it.body, 0, SignedBody{}, it.err, 0)
		}
	}
	groups := batchGroups(items)
	work := make(chan []int)
	var wg sync.WaitGroup
	for range batchWorkers(len(groups)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := range work {
				for _, i := range g {
					start := time.Now()
					status, body, err := s.signRecovered(ctx, p, items[i].body)
					results[i] = s.batchResult(c, p, i, items[i].body, status, body, err, time.Since(start))
				}
			}
		}()
	}
	for _, g := range groups {
		work <- g
	}
	close(work)
	wg.Wait()
	return c.JSON(http.StatusOK, BatchBody{Results: results})
}

// signRecovered is signOne with a panic turned into that request's 500: the
// handler's recoverer does not reach the batch's goroutines.
func (s *Server) signRecovered(ctx context.Context, p *access.Principal, b SignBody) (status int, body SignedBody, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.deps.Log.Error("panic in a batch request", zap.Any("panic", r), zap.Stack("stack"))
			status, body, err = 0, SignedBody{}, apierr.Internal(fmt.Errorf("panic: %v", r))
		}
	}()
	return s.signOne(ctx, p, b)
}

// batchResult renders one request's answer and does for it what the
// middleware does for a POST /v1/sign: the log line, the outcome the
// metrics and the health window hear, and for a 403 the denial counter of
// the automatic freeze and, for forbidden, the audited authorisation
// failure.
func (s *Server) batchResult(c echo.Context, p *access.Principal, i int, b SignBody, status int, body SignedBody, err error, took time.Duration) BatchResult {
	r := BatchResult{Index: i}
	lf := []zap.Field{zap.Int("index", i), zap.String("key_id", b.KeyID), zap.Duration("took", took)}
	if err == nil {
		raw, merr := json.Marshal(body)
		if merr != nil {
			err = apierr.Internal(fmt.Errorf("encode answer of request %s: %w", body.RequestID, merr))
		} else {
			r.Status, r.Result = status, raw
			lf = append(lf, zap.String("request_id", body.RequestID))
		}
	}
	if err != nil {
		ae := toAPIError(err)
		r.Status, r.Error = ae.Status, &apierr.BodyError{Code: ae.Code, Message: ae.Message}
		if ae.Code == apierr.CodeRateLimited {
			r.RetryAfter = max(int(math.Ceil(ae.RetryAfter.Seconds())), 1)
		}
		lf = append(lf, zap.String("code", ae.Code))
		if ae.Cause != nil {
			lf = append(lf, zap.NamedError("cause", ae.Cause))
		}
		s.batchRefused(c, p, i, ae)
	}
	lf = append(lf, zap.Int("status", r.Status))
	if s.deps.Observe != nil {
		o := Outcome{Route: http.MethodPost + " " + batchPath, Code: "ok", Status: r.Status, Chain: s.chainOf(b.KeyID), Took: took, BatchItem: true}
		if r.Error != nil {
			o.Code = r.Error.Code
		}
		s.deps.Observe(o)
	}
	log := logOf(c)
	switch {
	case r.Status >= 500:
		log.Error("batch request", lf...)
	case r.Status >= 400:
		log.Warn("batch request", lf...)
	default:
		log.Info("batch request", lf...)
	}
	return r
}

func (s *Server) batchRefused(c echo.Context, p *access.Principal, i int, ae *apierr.Error) {
	if ae.Status == http.StatusForbidden && p != nil && s.deps.OnDenied != nil {
		s.deps.OnDenied(p.Name, ae.Code)
	}
	if ae.Code == apierr.CodeForbidden && s.deps.OnAuthFailure != nil {
		req := c.Request()
		f := AuthFailure{Remote: req.RemoteAddr, Method: req.Method, Path: req.URL.Path, Code: ae.Code,
			Message: fmt.Sprintf("batch request %d: %s", i, ae.Message)}
		if p != nil {
			f.Principal = p.Name
		}
		s.deps.OnAuthFailure(req.Context(), f)
	}
}
