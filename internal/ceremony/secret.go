package ceremony

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"sync"

	"golang.org/x/crypto/hkdf"

	"github.com/custodysigner/appliance/internal/secret"
)

// SecretSize is the length of the unseal secret: 256 bits.
const SecretSize = 32

// HKDF info labels. Distinct labels make the PIN and the verifier
// independent: the stored verifier reveals nothing about the PIN.
const (
	pinInfo      = "custodysigner/appliance/v1/hsm-user-pin"
	verifierInfo = "custodysigner/appliance/v1/verifier"
	// The backup labels derive without the ceremony id as salt: a re-share
	// (same secret, new ceremony) keeps backups restorable.
	backupRecipientInfo = "custodysigner/appliance/v1/backup-recipient"
	backupWrapInfo      = "custodysigner/appliance/v1/backup-wrapping-key"
)

// derivedSize is the length of the PIN key and of the verifier.
const derivedSize = 32

// Secret holds the unseal secret in a secret.Buffer: outside the Go heap,
// excluded from core dumps and locked into RAM where the platform allows,
// zeroed by Destroy. It never prints: every fmt verb gives "[redacted]".
//
// A Secret is safe for concurrent use. After Destroy, DerivePIN and
// Verifier return nil and Verify returns false.
type Secret struct {
	// The state sits behind a pointer so that even printing a copied
	// Secret value with a formatter-less path shows an address, not bytes.
	st *secretState
}

type secretState struct {
	mu         sync.Mutex
	ceremonyID [8]byte // HKDF salt, so two ceremonies never share a PIN
	mem        *secret.Buffer
	buf        []byte // mem.Bytes(); nil once destroyed
	// attached are heap copies of secret material made from this secret
	// (a ceremony's shares) that Destroy zeroes with it.
	attached [][]byte
}

// newSecret allocates a zeroed secret for the given ceremony. If the
// caller forgets Destroy, the buffer is zeroed and freed once unreachable.
func newSecret(ceremonyID [8]byte) *Secret {
	mem := secret.New(SecretSize)
	return &Secret{st: &secretState{ceremonyID: ceremonyID, mem: mem, buf: mem.Bytes()}}
}

// Destroy zeroes and frees the secret, and zeroes what was attached to it
// (a ceremony's shares). It is idempotent.
func (s *Secret) Destroy() {
	st := s.state()
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.buf == nil {
		return
	}
	st.buf = nil
	st.mem.Destroy()
	for _, b := range st.attached {
		secret.Wipe(b)
	}
	st.attached = nil
}

// Protected reports whether the secret lives outside the Go heap excluded
// from core dumps, and whether it is locked into RAM.
func (s *Secret) Protected() (dontDump, locked bool) {
	s.locked(func(st *secretState) { dontDump, locked = st.mem.Mapped() && st.mem.DontDump(), st.mem.Locked() })
	return dontDump, locked
}

// DerivePIN derives the HSM user PIN: HKDF-SHA256 over the secret with the
// ceremony id as salt and the "…/v1/hsm-user-pin" label, 32 bytes rendered
// as 64 lowercase hex characters (SoftHSM PINs are printable, at most 255).
// The caller zeroes the returned slice when done; nil after Destroy.
// PINBuffer gives the same PIN in a secret.Buffer.
func (s *Secret) DerivePIN() []byte {
	var pin []byte
	s.locked(func(st *secretState) {
		pin = make([]byte, 2*derivedSize)
		st.derivePIN(pin)
	})
	return pin
}

// PINBuffer is DerivePIN into a secret.Buffer, which the caller destroys;
// nil after Destroy.
func (s *Secret) PINBuffer() *secret.Buffer {
	var pin *secret.Buffer
	s.locked(func(st *secretState) {
		pin = secret.New(2 * derivedSize)
		st.derivePIN(pin.Bytes())
	})
	return pin
}

// derivePIN writes the PIN's 64 hex characters into dst; st.mu must be held.
func (st *secretState) derivePIN(dst []byte) {
	secret.Do(func() {
		var raw [derivedSize]byte
		st.deriveInto(raw[:], st.ceremonyID[:], pinInfo)
		for i, b := range raw {
			dst[2*i] = hexDigit(b >> 4)
			dst[2*i+1] = hexDigit(b & 0x0f)
		}
		secret.Wipe(raw[:])
	})
}

// Verifier derives the value stored at init to recognise the secret at
// unseal: HKDF-SHA256 with the "…/v1/verifier" label, 32 bytes. It is
// safe to store; nil after Destroy.
func (s *Secret) Verifier() []byte {
	var v []byte
	s.locked(func(st *secretState) { v = st.derive(verifierInfo) })
	return v
}

// Verify reports, in constant time, whether verifier belongs to this secret.
func (s *Secret) Verify(verifier []byte) bool {
	ok := false
	s.locked(func(st *secretState) {
		own := st.derive(verifierInfo)
		defer clear(own)
		ok = subtle.ConstantTimeCompare(own, verifier) == 1
	})
	return ok
}

// BackupRecipientSeed derives the 32-byte seed of the key pair backups are
// encrypted to: the appliance keeps only the public half, so it can write
// backups that only a quorum can read. nil after Destroy; the caller zeroes it.
func (s *Secret) BackupRecipientSeed() []byte {
	var v []byte
	s.locked(func(st *secretState) { v = st.deriveStable(backupRecipientInfo) })
	return v
}

// BackupWrappingKey derives the 32-byte value of the HSM's trusted AES key
// under which backup-able private keys are wrapped: a fresh token given the
// same quorum gets the same wrapping key, and can unwrap. nil after
// Destroy; the caller zeroes it.
func (s *Secret) BackupWrappingKey() []byte {
	var v []byte
	s.locked(func(st *secretState) { v = st.deriveStable(backupWrapInfo) })
	return v
}

// Rebind returns a copy of the secret bound to another ceremony id (the
// HKDF salt of the PIN and the verifier): a restore checks shares of a
// re-shared ceremony against a backup's older verifier this way. The
// caller destroys both.
func (s *Secret) Rebind(ceremonyID [8]byte) *Secret {
	out := newSecret(ceremonyID)
	ok := false
	s.locked(func(st *secretState) { copy(out.st.buf, st.buf); ok = true })
	if !ok {
		out.Destroy()
	}
	return out
}

// locked runs fn with the live secret locked; it does nothing for a nil,
// zero or destroyed Secret.
func (s *Secret) locked(fn func(st *secretState)) {
	st := s.state()
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.buf == nil {
		return
	}
	fn(st)
}

// state returns the shared state, nil for a nil or zero Secret, which
// then behaves as destroyed.
func (s *Secret) state() *secretState {
	if s == nil {
		return nil
	}
	return s.st
}

// derive expands the secret under label with the ceremony id as salt;
// st.mu must be held.
func (st *secretState) derive(label string) []byte {
	out := make([]byte, derivedSize)
	st.deriveInto(out, st.ceremonyID[:], label)
	return out
}

// deriveStable is derive without the ceremony id: for keys that must
// outlive a re-share. st.mu must be held.
func (st *secretState) deriveStable(label string) []byte {
	out := make([]byte, derivedSize)
	st.deriveInto(out, nil, label)
	return out
}

// deriveInto fills out with HKDF-SHA256(secret, salt, label). The HKDF and
// HMAC state (the PRK, keyed pads) lives on the heap where this code cannot
// zero it; secret.Do erases it when built with GOEXPERIMENT=runtimesecret.
func (st *secretState) deriveInto(out, salt []byte, label string) {
	secret.Do(func() {
		r := hkdf.New(sha256.New, st.buf, salt, []byte(label))
		if _, err := io.ReadFull(r, out); err != nil {
			// HKDF-SHA256 yields up to 8160 bytes; 32 cannot fail.
			panic("ceremony: hkdf: " + err.Error())
		}
	})
}

// hexDigit renders a nibble as lowercase hex without a lookup table or a
// branch, so the PIN's characters do not leak through cache or timing.
func hexDigit(v byte) byte {
	// (9 − v) >> 8 is all ones exactly when v > 9; then skip from ':' to 'a'.
	over := byte((9 - int(v)) >> 8)
	return '0' + v + (over & ('a' - '0' - 10))
}

// String never reveals the secret. String, GoString and Format have value
// receivers so that Secret and *Secret both redact under every verb.
func (Secret) String() string { return "[redacted]" }

// GoString never reveals the secret.
func (Secret) GoString() string { return "[redacted]" }

// Format makes every fmt verb print "[redacted]".
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, "[redacted]") }
