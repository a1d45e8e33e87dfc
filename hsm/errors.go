package hsm

import (
	"errors"

	"github.com/miekg/pkcs11"
)

// Errors callers are expected to compare with errors.Is. Every error returned by
// this package wraps at most these sentinels plus, where one exists, the
// underlying pkcs11.Error for the log.
var (
	// ErrUnavailable means the HSM cannot serve the call right now: the module is
	// unhealthy or rebuilding, closed, or no session became free in time.
	ErrUnavailable = errors.New("hsm unavailable")
	// ErrKeyNotFound means no object with the requested CKA_ID and algorithm exists.
	ErrKeyNotFound = errors.New("key not found on token")
	// ErrKeyMismatch means the key's public key differs from the pinned one.
	ErrKeyMismatch = errors.New("key does not match its pinned public key")
	// ErrKeyUnsafe means the private key is, or may once have been, extractable
	// or readable, or can be used for something other than signing.
	ErrKeyUnsafe = errors.New("key attributes are not safe")
	// ErrKeyAmbiguous means more than one object matches a CKA_ID; signing with
	// either would be a guess.
	ErrKeyAmbiguous = errors.New("more than one key object has this id")
	// ErrKeyNotPinned is returned by KeyError for an id that was never pinned.
	ErrKeyNotPinned = errors.New("key is not pinned")
	// ErrInvalidInput means the caller passed an argument the HSM must not see
	// (wrong digest length, unknown algorithm, bad label).
	ErrInvalidInput = errors.New("invalid input")
	// ErrTokenNotFound means no initialised token carries the configured label.
	ErrTokenNotFound = errors.New("token not found")
	// ErrTokenExists is returned by InitToken when the label is already in use.
	ErrTokenExists = errors.New("a token with this label already exists")
	// ErrAlreadyInitialized means the PKCS#11 library is already initialised in
	// this process, normally by another open Module (see the package doc).
	ErrAlreadyInitialized = errors.New("pkcs11 library already initialised in this process")
	// ErrNoPIN means neither a PIN nor a pin-source/pin-value was supplied.
	ErrNoPIN = errors.New("no PIN configured")
	// ErrUnsupported means the token cannot do what was asked for this kind of
	// key (e.g. SoftHSM 2.6 cannot wrap EdDSA private keys).
	ErrUnsupported = errors.New("not supported by the token")
	// ErrKeyExists means an object with the requested CKA_ID or label is already
	// on the token; nothing was created or replaced.
	ErrKeyExists = errors.New("an object with this id or label already exists")
	// ErrKeyNotWrappable means the token refused to wrap the key: it was not
	// generated for wrapped backup (it is non-extractable, or only a trusted key
	// may wrap it and the wrapping key is not trusted).
	ErrKeyNotWrappable = errors.New("key cannot be wrapped")
	// ErrWrappedKeyInvalid means a wrapped key did not unwrap: it was made under
	// a different wrapping key, or it has been corrupted or tampered with.
	ErrWrappedKeyInvalid = errors.New("wrapped key does not unwrap under this wrapping key")
	// ErrDataNotFound means no data object with the requested label exists.
	ErrDataNotFound = errors.New("data object not found on token")
	// ErrPINIncorrect means the token rejected the PIN given as the current one.
	ErrPINIncorrect = errors.New("PIN incorrect")
)

// isLost reports whether err says the session, login, token or library is gone,
// so that nothing built on the current initialisation can be trusted and the
// module must be rebuilt rather than the call merely failed.
func isLost(err error) bool {
	var pe pkcs11.Error
	if !errors.As(err, &pe) {
		return false
	}
	switch uint(pe) {
	case pkcs11.CKR_SESSION_HANDLE_INVALID,
		pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_DEVICE_ERROR,
		pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_GENERAL_ERROR,
		// An operation is active that this package did not leave active
		// (every search is ended, every C_Sign ends its operation, a session
		// whose C_SignInit failed is replaced): the token and the pool
		// disagree about the session, so it is rebuilt rather than left to
		// fail every call it serves.
		pkcs11.CKR_OPERATION_ACTIVE:
		return true
	}
	return false
}

// isRV reports whether err wraps the PKCS#11 return value rv.
func isRV(err error, rv uint) bool {
	var pe pkcs11.Error
	return errors.As(err, &pe) && uint(pe) == rv
}
