// Package apierr is the appliance's error currency at the API edge. An
// Error keeps three things apart: the HTTP status and stable code that
// clients program against, a message safe to show them, and the internal
// cause that only reaches the log.
package apierr

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Stable codes from ../shared/API.md. Clients match on these; never rename one.
const (
	CodeBadRequest          = "bad_request"
	CodeForbidden           = "forbidden"
	CodePolicyDenied        = "policy_denied"
	CodeLimitExceeded       = "limit_exceeded"
	CodeAddressDenied       = "address_denied"
	CodeNotFound            = "not_found"
	CodeMethodNotAllowed    = "method_not_allowed"
	CodeIdempotencyConflict = "idempotency_conflict"
	CodeTooLarge            = "too_large"
	CodeDecodeFailed        = "decode_failed"
	CodeAddressInvalid      = "address_invalid"
	CodeWrongNetwork        = "wrong_network"
	CodeUnsupported         = "unsupported"
	CodeRateLimited         = "rate_limited"
	CodeSealed              = "sealed"
	CodeFrozen              = "frozen"
	CodeHSMUnavailable      = "hsm_unavailable"
	CodeUnavailable         = "unavailable"
	CodeInternal            = "internal"
	// Added beyond ../shared/API.md for the quorum flows.
	CodeShareInvalid      = "share_invalid"      // 422: an unseal share was refused (format, checksum, ceremony, duplicate, combination)
	CodeApprovalInvalid   = "approval_invalid"   // 422: an approval signature does not verify for that officer and digest
	CodeDuplicateApproval = "duplicate_approval" // 409: this officer already approved
	CodeExpired           = "expired"            // 409: the proposal or request expired
	CodeConflict          = "conflict"           // 409: the target is not in a state that allows this
)

// Error is an API error.
type Error struct {
	Status  int    // HTTP status
	Code    string // stable machine-readable code
	Message string // for people; never contains secrets or internals
	Cause   error  // for the log only
	// RetryAfter, for rate_limited, is sent as the Retry-After header.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Cause)
	}
	return e.Code + ": " + e.Message
}

// Unwrap exposes the cause to errors.Is/As.
func (e *Error) Unwrap() error { return e.Cause }

// New makes an error with a formatted message.
func New(status int, code, format string, a ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, a...)}
}

// Wrap makes an error that carries cause for the log.
func Wrap(cause error, status int, code, format string, a ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, a...), Cause: cause}
}

// Internal hides cause behind a generic message.
func Internal(cause error) *Error {
	return &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error", Cause: cause}
}

// From returns err as an *Error, treating anything else as internal.
func From(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Internal(err)
}

// Body is the JSON error envelope of every non-2xx answer.
type Body struct {
	Error BodyError `json:"error"`
}

// BodyError is the inner object of Body.
type BodyError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Body returns the envelope for e.
func (e *Error) Body() Body { return Body{Error: BodyError{Code: e.Code, Message: e.Message}} }
