// Package hsm is the only code in the appliance that speaks PKCS#11. It loads one
// PKCS#11 module, logs in to one token (found by label, never by slot id), keeps a
// bounded pool of sessions that share that login, generates non-extractable keys,
// signs with them (ECDSA on secp256k1 and P-256 with low-S normalisation, EdDSA on
// Ed25519), and rebuilds itself in the background after the token is lost.
//
// # One initialisation per process
//
// PKCS#11 state (C_Initialize/C_Finalize, logins, sessions) belongs to the loaded
// library, not to a handle on it: pkcs11.New on the same path returns the same
// dlopen'd library, and a C_Finalize from anyone ends everyone's sessions. So:
//
//   - At most one Module per PKCS#11 library may be open in a process. Open
//     refuses with ErrAlreadyInitialized if the library is already initialised.
//   - Module.Close finalises the library, after which another Open may follow.
//     Tests that use SoftHSM therefore run sequentially and Close every Module.
//   - InitToken initialises the library itself and finalises it afterwards. If the
//     library is already initialised (a Module is open) it works inside that
//     initialisation and leaves it alone; the open Module will only see the new
//     token after its next rebuild, because SoftHSM scans its token directory
//     only in C_Initialize.
//
// # Failure model
//
// When a PKCS#11 call reports that the session, login, token or library is gone
// (see isLost), the Module marks itself unhealthy, the failing call returns an
// error wrapping ErrUnavailable, and a single goroutine rebuilds everything
// (C_Finalize, C_Initialize, find token, login, refill pool, re-check pinned keys)
// with exponential backoff. While unhealthy every call fails fast with
// ErrUnavailable. Token loss is only noticed when a call fails, so the owner
// should call Probe periodically (the systemd watchdog does).
//
// # SoftHSM 2.6 behaviour this package works around (measured by the tests)
//
//   - If the token directory disappears, sessions and the login stay valid and
//     C_GetSessionInfo still succeeds, but searches return nothing, key handles
//     become invalid and C_GetTokenInfo fails with CKR_GENERAL_ERROR. The token
//     stays empty even after the directory returns, until the next
//     C_Initialize. So an empty key search is confirmed with C_GetTokenInfo,
//     and Probe calls it too.
//   - C_CloseAllSessions or C_Finalize while another thread is inside a call on
//     one of those sessions can crash SoftHSM (SIGSEGV). The rebuild and Close
//     therefore wait (up to AcquireTimeout) for borrowed sessions before
//     C_Finalize, and nothing else in the process may call PKCS#11 directly.
//   - The private half of an Ed25519 key stores CKA_EC_PARAMS as the
//     PrintableString "edwards25519" even when generated with the OID form;
//     both encodings are tried when searching.
//   - Slot ids are derived from token serials and change with C_InitToken;
//     tokens are always found by label.
//
// # Secrets
//
// The user PIN is held in a []byte for re-login after a rebuild and zeroed on
// Close. It never appears in errors or logs. The miekg/pkcs11 API takes the PIN
// as a Go string, so a transient immutable copy exists during each C_Login; that
// cannot be avoided without a different binding.
package hsm
