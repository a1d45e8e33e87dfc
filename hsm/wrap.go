package hsm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	decredecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
)

// Encrypted backup and restore of private keys.
//
// A key generated with KeyOptions.WrappedBackup may leave the token only as
// C_WrapKey output under a key the SO marked CKA_TRUSTED (the wrapping key).
// The wrapping key's value is derived by the caller from the officers' unseal
// secret, so after the loss of a token ProvisionWrappingKey recreates the same
// wrapping key on a fresh one and UnwrapKey restores each key from its blob.
//
// What this protects, as measured on SoftHSM 2.6.1: a wrapped blob is useless
// without the wrapping key value or a token holding it; a backup-able key
// cannot be read, nor wrapped under any key but a trusted one, by anyone. What
// it does not: a holder of the user PIN and of a blob can unwrap it with
// CKA_SENSITIVE=false and read the private key (SoftHSM does not enforce
// CKA_UNWRAP_TEMPLATE, and miekg/pkcs11 cannot set that array attribute), so
// blobs must be kept as secret as the PIN.

// wrapMechanism is AES key wrap with padding (RFC 5649, CKM_AES_KEY_WRAP_PAD):
// authenticated, deterministic, and able to wrap a PKCS#8 key of any length.
const wrapMechanism = pkcs11.CKM_AES_KEY_WRAP_PAD

// WrappingKeyLen is the length of the wrapping key value: AES-256.
const WrappingKeyLen = 32

// maxWrappedLen bounds the blobs UnwrapKey accepts: a wrapped PKCS#8 EC key is
// well under 200 bytes.
const maxWrappedLen = 4096

// ProvisionWrappingKey puts the trusted AES-256 wrapping key with this label
// and value on the token labelled tokenLabel. Like InitToken it uses its own
// PKCS#11 context and finalises it afterwards unless the library was already
// initialised in this process; it is meant for init and restore, while no
// Module is open on that token (if one is, it refuses with
// ErrAlreadyInitialized rather than log the Module's sessions out). It refuses
// with ErrKeyExists if a secret key with this label is already there, and it
// does not modify or zero soPIN, userPIN or value.
//
// The construction follows what SoftHSM 2.6.1 enforces (measured with this
// package's tests and a throwaway experiment):
//
//   - Only the SO may set CKA_TRUSTED true: a user session gets
//     CKR_ATTRIBUTE_READ_ONLY both from C_CreateObject and C_SetAttributeValue.
//   - An SO session may only create public objects: CKA_PRIVATE=true gives
//     CKR_USER_NOT_LOGGED_IN.
//   - A public (CKA_PRIVATE=false) trusted key would work for wrapping from a
//     user session, but it is visible without login, and an unauthenticated
//     session can then C_UnwrapKey a blob into a non-sensitive session object
//     and read the private key. SoftHSM also stores byte-string attributes of
//     public token objects, CKA_VALUE included, unencrypted in its token
//     directory. So the key must not stay public.
//   - C_CopyObject by the user keeps CKA_TRUSTED and may change CKA_TOKEN and
//     CKA_PRIVATE. So the SO creates the key as a public session object (never
//     written to disk), logs out, the user logs in on the same session and
//     copies it into a private token object, and the session object is
//     destroyed. The trust still comes from the SO: the user can only copy a
//     key the SO made trusted, never make one.
//   - CKA_COPYABLE cannot be cleared (SoftHSM answers CKR_ATTRIBUTE_READ_ONLY
//     both in the copy template and afterwards), so the user could copy the
//     wrapping key again; a user could equally unwrap blobs directly, see above.
func ProvisionWrappingKey(modulePath, tokenLabel string, soPIN, userPIN []byte, label string, value []byte) error {
	if err := checkObjectLabel(label); err != nil {
		return err
	}
	if len(value) != WrappingKeyLen {
		return fmt.Errorf("hsm: wrapping key must be %d bytes, got %d: %w", WrappingKeyLen, len(value), ErrInvalidInput)
	}
	if len(soPIN) == 0 || len(userPIN) == 0 {
		return fmt.Errorf("hsm: provision wrapping key: %w", ErrNoPIN)
	}
	p, done, err := standalone(modulePath)
	if err != nil {
		return err
	}
	defer done()
	slot, err := findSlot(p, tokenLabel)
	if err != nil {
		return err
	}
	sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: C_OpenSession: %w", err)
	}
	// Closing the session also destroys the SO's session object if a step
	// below fails before it is destroyed explicitly.
	defer p.CloseSession(sh) //nolint:errcheck // best effort; C_Finalize cleans up too

	// 1. As the user (private objects are invisible to the SO): is the label free?
	if err := provisionLogin(p, sh, pkcs11.CKU_USER, userPIN, tokenLabel); err != nil {
		return err
	}
	existing, err := findAll(p, sh, secretKeyByLabel(label), 1)
	_ = p.Logout(sh)
	if err != nil {
		return fmt.Errorf("hsm: provision wrapping key: %w", err)
	}
	if len(existing) > 0 {
		return fmt.Errorf("hsm: wrapping key %q: %w", label, ErrKeyExists)
	}

	// 2. As the SO: create the trusted key as a public session object.
	if err := provisionLogin(p, sh, pkcs11.CKU_SO, soPIN, tokenLabel); err != nil {
		return err
	}
	tmp, err := p.CreateObject(sh, wrappingKeyTemplate(label, value))
	_ = p.Logout(sh) // public session objects survive the logout
	if err != nil {
		return fmt.Errorf("hsm: C_CreateObject of the trusted wrapping key as SO: %w", err)
	}

	// 3. As the user: copy it into a private token object, drop the original.
	if err := provisionLogin(p, sh, pkcs11.CKU_USER, userPIN, tokenLabel); err != nil {
		return err
	}
	defer p.Logout(sh) //nolint:errcheck // best effort; closing the session ends the login too
	objectsMu.Lock()
	h, err := p.CopyObject(sh, tmp, wrappingKeyCopyTemplate())
	objectsMu.Unlock()
	if derr := p.DestroyObject(sh, tmp); derr != nil && err == nil {
		_ = p.DestroyObject(sh, h)
		return fmt.Errorf("hsm: destroying the SO's copy of the wrapping key: %w", derr)
	}
	if err != nil {
		return fmt.Errorf("hsm: C_CopyObject of the wrapping key: %w", err)
	}

	// 4. Check what the token made of it, and that no one raced us to the label.
	if err := checkAttrs(p, sh, h, requiredWrappingAttrs); err != nil {
		_ = p.DestroyObject(sh, h)
		return fmt.Errorf("hsm: wrapping key %q: %w", label, err)
	}
	all, err := findAll(p, sh, secretKeyByLabel(label), 2)
	if err != nil {
		_ = p.DestroyObject(sh, h)
		return fmt.Errorf("hsm: provision wrapping key: %w", err)
	}
	if len(all) != 1 {
		_ = p.DestroyObject(sh, h)
		return fmt.Errorf("hsm: wrapping key %q: %w", label, ErrKeyExists)
	}
	return nil
}

// provisionLogin logs in as who, refusing to share a login with an open
// Module: logging out afterwards would end that Module's login too.
func provisionLogin(p Cryptoki, sh pkcs11.SessionHandle, who uint, pin []byte, tokenLabel string) error {
	role := "user"
	if who == pkcs11.CKU_SO {
		role = "SO"
	}
	err := p.Login(sh, who, string(pin))
	switch {
	case err == nil:
		return nil
	case isRV(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN), isRV(err, pkcs11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN):
		return fmt.Errorf("hsm: provision wrapping key: token %q is already logged in by this process (an open Module?): %w", tokenLabel, ErrAlreadyInitialized)
	case isRV(err, pkcs11.CKR_PIN_INCORRECT):
		// The error is a bare return value; it cannot carry the PIN.
		return fmt.Errorf("hsm: C_Login as %s: %w: %w", role, ErrPINIncorrect, err)
	default:
		return fmt.Errorf("hsm: C_Login as %s: %w", role, err)
	}
}

// secretKeyByLabel selects any secret key with this label, whatever its type,
// so that ProvisionWrappingKey never adds a second key under a taken label.
func secretKeyByLabel(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

func checkObjectLabel(label string) error {
	if label == "" || len(label) > 128 {
		return fmt.Errorf("hsm: label must be 1..128 bytes: %w", ErrInvalidInput)
	}
	return nil
}

// confirmToken turns an empty search into a lost-token error when the token
// is gone; see findKey for why SoftHSM needs this.
func (m *Module) confirmToken(s *session) error {
	if _, err := m.p.GetTokenInfo(s.gen.slot); err != nil {
		return fmt.Errorf("C_GetTokenInfo after empty search: %w", err)
	}
	return nil
}

// findWrappingKey finds the wrapping key by label and checks its attributes.
func (m *Module) findWrappingKey(s *session, label string) (pkcs11.ObjectHandle, error) {
	if err := checkObjectLabel(label); err != nil {
		return 0, err
	}
	h, err := m.findOne(s, wrappingKeyFindTemplate(label))
	if errors.Is(err, ErrKeyNotFound) {
		if terr := m.confirmToken(s); terr != nil {
			return 0, terr
		}
	}
	if err != nil {
		return 0, fmt.Errorf("wrapping key %q: %w", label, err)
	}
	if err := checkAttrs(m.p, s.h, h, requiredWrappingAttrs); err != nil {
		return 0, fmt.Errorf("wrapping key %q: %w", label, err)
	}
	return h, nil
}

// HasWrappingKey reports whether the wrapping key with this label is on the
// token. A key under that label without the wrapping key's attributes is an
// error wrapping ErrKeyUnsafe, not "absent", so that it is never overwritten
// or used unnoticed.
func (m *Module) HasWrappingKey(ctx context.Context, label string) (bool, error) {
	found := false
	err := m.do(ctx, "find wrapping key", func(s *session) error {
		_, err := m.findWrappingKey(s, label)
		if errors.Is(err, ErrKeyNotFound) {
			return nil
		}
		found = err == nil
		return err
	})
	if err != nil {
		return false, err
	}
	return found, nil
}

// WrapKey exports the private key ref encrypted under the wrapping key with
// CKM_AES_KEY_WRAP_PAD. The blob is the PKCS#8 private key as SoftHSM encodes
// it, wrapped; it carries neither CKA_ID nor label, which UnwrapKey takes from
// the caller. The token refuses a key not generated with WrappedBackup, which
// is reported as ErrKeyNotWrappable; Ed25519 keys are refused with
// ErrUnsupported (see GenerateKeyWith).
func (m *Module) WrapKey(ctx context.Context, ref KeyRef, wrappingLabel string) ([]byte, error) {
	if _, err := specFor(ref.Algorithm); err != nil {
		return nil, err
	}
	if ref.Algorithm == Ed25519 {
		return nil, fmt.Errorf("hsm: wrap key %x: SoftHSM cannot wrap EdDSA private keys: %w", ref.ID, ErrUnsupported)
	}
	var blob []byte
	err := m.do(ctx, "wrap key", func(s *session) error {
		priv, err := m.findKey(s, pkcs11.CKO_PRIVATE_KEY, ref)
		if err != nil {
			return err
		}
		wk, err := m.findWrappingKey(s, wrappingLabel)
		if err != nil {
			return err
		}
		blob, err = m.p.WrapKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(wrapMechanism, nil)}, wk, priv)
		if isRV(err, pkcs11.CKR_KEY_UNEXTRACTABLE) || isRV(err, pkcs11.CKR_KEY_NOT_WRAPPABLE) {
			return fmt.Errorf("C_WrapKey key %x: the token refuses (not generated for wrapped backup?): %w: %w", ref.ID, ErrKeyNotWrappable, err)
		}
		if err != nil {
			return fmt.Errorf("C_WrapKey key %x: %w", ref.ID, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("key wrapped for backup", zap.String("key_id", hex.EncodeToString(ref.ID)),
		zap.String("algorithm", string(ref.Algorithm)), zap.String("wrapping_key", wrappingLabel))
	return blob, nil
}

// UnwrapKey restores a key from WrapKey's blob: it unwraps it under the
// wrapping key into a private key with CKA_ID id and CKA_LABEL label and the
// attributes of a WrappedBackup key (so it can be backed up again), creates
// the matching public key object, and proves the pair by signing a random
// digest with the new private key and verifying it under publicKey. On any
// failure after the unwrap both objects are destroyed; a pair that does not
// match publicKey gives ErrKeyMismatch. A blob that does not unwrap (another
// wrapping key, corrupted, tampered with) gives ErrWrappedKeyInvalid and
// creates nothing. It refuses with ErrKeyExists if any object has CKA_ID id.
// The restored key is then found by KeyRef{ID: id, Algorithm: alg,
// WrappedBackup: true}.
func (m *Module) UnwrapKey(ctx context.Context, wrapped []byte, wrappingLabel string, alg Algorithm, id []byte, label string, publicKey []byte) error {
	spec, err := specFor(alg)
	if err != nil {
		return err
	}
	if alg == Ed25519 {
		return fmt.Errorf("hsm: unwrap %s key: SoftHSM cannot wrap EdDSA private keys: %w", alg, ErrUnsupported)
	}
	if len(id) == 0 || len(id) > 64 {
		return fmt.Errorf("hsm: unwrap key: id must be 1..64 bytes: %w", ErrInvalidInput)
	}
	if err := checkObjectLabel(label); err != nil {
		return err
	}
	pub, err := decodePoint(alg, publicKey)
	if err != nil {
		return fmt.Errorf("hsm: unwrap key %x: public key: %w: %w", id, ErrInvalidInput, err)
	}
	// RFC 5649 output is whole 8-byte blocks, at least two.
	if len(wrapped) < 16 || len(wrapped)%8 != 0 || len(wrapped) > maxWrappedLen {
		return fmt.Errorf("hsm: unwrap key %x: %d bytes cannot be an AES-KWP blob: %w", id, len(wrapped), ErrWrappedKeyInvalid)
	}
	ref := KeyRef{ID: bytes.Clone(id), Algorithm: alg, WrappedBackup: true}
	err = m.do(ctx, "unwrap key", func(s *session) error {
		taken, err := findAll(m.p, s.h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, ref.ID)}, 1)
		if err != nil {
			return err
		}
		if len(taken) > 0 {
			return fmt.Errorf("key %x: %w", ref.ID, ErrKeyExists)
		}
		wk, err := m.findWrappingKey(s, wrappingLabel)
		if err != nil {
			return err
		}
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(wrapMechanism, nil)}
		objectsMu.Lock()
		privH, err := m.p.UnwrapKey(s.h, mech, wk, wrapped, privateKeyTemplate(spec, ref.ID, label, true))
		objectsMu.Unlock()
		if err != nil {
			return m.unwrapError(s, err)
		}
		var pubH pkcs11.ObjectHandle
		havePub := false
		undo := func(why error) error {
			// Best effort: if the session is lost these fail too, and the
			// orphans are refused by UnwrapKey (ErrKeyExists) until removed.
			if derr := m.p.DestroyObject(s.h, privH); derr != nil {
				m.log.Error("could not destroy a half-restored private key", zap.String("key_id", hex.EncodeToString(ref.ID)), zap.Error(derr))
			}
			if havePub {
				if derr := m.p.DestroyObject(s.h, pubH); derr != nil {
					m.log.Error("could not destroy a half-restored public key", zap.String("key_id", hex.EncodeToString(ref.ID)), zap.Error(derr))
				}
			}
			s.gen.dropHandle(cacheKey(ref))
			return why
		}
		if err := m.checkCurve(s, privH, spec); err != nil {
			return undo(fmt.Errorf("key %x: %w", ref.ID, err))
		}
		if err := m.checkPrivateAttrs(s, privH, true); err != nil {
			return undo(fmt.Errorf("restored key %x: %w", ref.ID, err))
		}
		point, err := asn1.Marshal(pub)
		if err != nil {
			return undo(fmt.Errorf("encoding CKA_EC_POINT: %w", err))
		}
		pubTmpl := append(publicKeyTemplate(spec, ref.ID, label), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point))
		objectsMu.Lock()
		pubH, err = m.p.CreateObject(s.h, pubTmpl)
		objectsMu.Unlock()
		if err != nil {
			return undo(fmt.Errorf("C_CreateObject of the public key: %w", err))
		}
		havePub = true
		if err := m.provePair(s, spec, alg, privH, pub); err != nil {
			return undo(fmt.Errorf("restored key %x: %w", ref.ID, err))
		}
		// The same lookup and checks as every later CheckKey.
		if err := m.checkKey(s, ref, pub); err != nil {
			return undo(err)
		}
		s.gen.setHandle(cacheKey(ref), privH)
		return nil
	})
	if err != nil {
		return err
	}
	m.log.Info("key restored from wrapped backup", zap.String("key_id", hex.EncodeToString(ref.ID)),
		zap.String("algorithm", string(alg)), zap.String("label", label), zap.String("wrapping_key", wrappingLabel))
	return nil
}

// unwrapError classifies a C_UnwrapKey failure. SoftHSM 2.6.1 reports a blob
// that fails the RFC 5649 integrity check (wrong wrapping key, any flipped
// bit) as CKR_GENERAL_ERROR, which isLost would take for a lost token. So a
// CKR_GENERAL_ERROR is ErrWrappedKeyInvalid if the token still answers
// C_GetTokenInfo, and is kept (lost) otherwise; in the first case the pkcs11
// error is only formatted, not wrapped, so do does not rebuild the module.
func (m *Module) unwrapError(s *session, err error) error {
	switch {
	case isRV(err, pkcs11.CKR_GENERAL_ERROR):
		if _, terr := m.p.GetTokenInfo(s.gen.slot); terr != nil {
			return fmt.Errorf("C_UnwrapKey: %w (C_GetTokenInfo: %v)", err, terr)
		}
		return fmt.Errorf("C_UnwrapKey: %w (token answered %v)", ErrWrappedKeyInvalid, err)
	case isRV(err, pkcs11.CKR_WRAPPED_KEY_INVALID), isRV(err, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE),
		isRV(err, pkcs11.CKR_ENCRYPTED_DATA_INVALID), isRV(err, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE):
		return fmt.Errorf("C_UnwrapKey: %w: %w", ErrWrappedKeyInvalid, err)
	default:
		return fmt.Errorf("C_UnwrapKey: %w", err)
	}
}

// checkCurve makes sure an unwrapped key is on the curve the caller named: the
// curve comes from inside the blob, not from the unwrap template (SoftHSM
// refuses CKA_EC_PARAMS there as read-only).
func (m *Module) checkCurve(s *session, h pkcs11.ObjectHandle, spec algSpec) error {
	got, err := m.p.GetAttributeValue(s.h, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
	})
	if err != nil {
		return fmt.Errorf("reading CKA_KEY_TYPE, CKA_EC_PARAMS: %w", err)
	}
	// Compared in the encoding the binding itself uses for a CK_ULONG.
	if want := pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, spec.keyType).Value; !bytes.Equal(got[0].Value, want) {
		return fmt.Errorf("wrapped key has key type %x: %w", got[0].Value, ErrKeyMismatch)
	}
	for _, params := range append([][]byte{spec.params}, spec.altParams...) {
		if bytes.Equal(got[1].Value, params) {
			return nil
		}
	}
	return fmt.Errorf("wrapped key is on another curve (CKA_EC_PARAMS %x): %w", got[1].Value, ErrKeyMismatch)
}

// provePair signs a random digest with privH and verifies it under pub, so a
// restored private key is never paired with someone else's public key.
func (m *Module) provePair(s *session, spec algSpec, alg Algorithm, privH pkcs11.ObjectHandle, pub []byte) error {
	digest := make([]byte, 32)
	if _, err := rand.Read(digest); err != nil {
		return fmt.Errorf("random digest: %w", err)
	}
	if err := m.p.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(spec.signMech, nil)}, privH); err != nil {
		return fmt.Errorf("C_SignInit: %w", err)
	}
	sig, err := m.p.Sign(s.h, digest)
	if err != nil {
		return fmt.Errorf("C_Sign: %w", err)
	}
	if sig, err = normalizeECDSA(sig, spec.order); err != nil {
		return err
	}
	if !verifyECDSA(alg, pub, digest, sig) {
		return fmt.Errorf("test signature does not verify under the given public key: %w", ErrKeyMismatch)
	}
	return nil
}

// verifyECDSA verifies a 64-byte r||s signature over a 32-byte digest with an
// independent implementation (Go's for P-256, decred's for secp256k1).
func verifyECDSA(alg Algorithm, pub, digest, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	switch alg {
	case P256:
		pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pub)
		if err != nil {
			return false
		}
		return ecdsa.Verify(pk, digest, new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	case Secp256k1:
		pk, err := secp256k1.ParsePubKey(pub)
		if err != nil {
			return false
		}
		var r, s secp256k1.ModNScalar
		if r.SetByteSlice(sig[:32]) || s.SetByteSlice(sig[32:]) {
			return false
		}
		return decredecdsa.NewSignature(&r, &s).Verify(digest, pk)
	default:
		return false
	}
}
