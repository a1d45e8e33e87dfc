package hsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
)

// KeyRef names a key pair on the token by its CKA_ID and algorithm.
type KeyRef struct {
	ID        []byte
	Algorithm Algorithm
}

// GeneratedKey describes a key pair created by GenerateKey.
type GeneratedKey struct {
	ID        []byte // CKA_ID shared by the private and public objects
	Label     string
	Algorithm Algorithm
	PublicKey []byte // 65-byte uncompressed SEC1 for EC, 32 bytes for Ed25519
}

// PinnedKey is a key whose public key is known out of band (recorded when it was
// generated). It is re-checked after every rebuild.
type PinnedKey struct {
	Ref       KeyRef
	PublicKey []byte
}

// idLen is the CKA_ID length: 128 random bits make collisions on one token
// negligible without a lookup before each generation.
const idLen = 16

func cacheKey(ref KeyRef) string { return string(ref.Algorithm) + "\x00" + string(ref.ID) }

// findOne returns the single object matching tmpl, ErrKeyNotFound if there is
// none and ErrKeyAmbiguous if there are several.
func (m *Module) findOne(s *session, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if err := m.p.FindObjectsInit(s.h, tmpl); err != nil {
		return 0, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	objs, _, err := m.p.FindObjects(s.h, 2)
	// Always finish the search: an open search blocks every other operation on
	// the session with CKR_OPERATION_ACTIVE.
	if ferr := m.p.FindObjectsFinal(s.h); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return 0, fmt.Errorf("C_FindObjects: %w", err)
	}
	switch len(objs) {
	case 0:
		return 0, ErrKeyNotFound
	case 1:
		return objs[0], nil
	default:
		return 0, ErrKeyAmbiguous
	}
}

func (m *Module) findKey(s *session, class uint, ref KeyRef) (pkcs11.ObjectHandle, error) {
	spec, err := specFor(ref.Algorithm)
	if err != nil {
		return 0, err
	}
	if len(ref.ID) == 0 {
		return 0, fmt.Errorf("empty key id: %w", ErrInvalidInput)
	}
	var h pkcs11.ObjectHandle
	for _, tmpl := range findTemplates(class, spec, ref.ID) {
		if h, err = m.findOne(s, tmpl); !errors.Is(err, ErrKeyNotFound) {
			break
		}
	}
	if errors.Is(err, ErrKeyNotFound) {
		// SoftHSM answers an empty search, not an error, once its token
		// directory has vanished; only C_GetTokenInfo notices (CKR_GENERAL_ERROR).
		// Confirm the token is still there so a lost token is reported as lost.
		if _, terr := m.p.GetTokenInfo(s.gen.slot); terr != nil {
			return 0, fmt.Errorf("C_GetTokenInfo after empty search: %w", terr)
		}
	}
	if err != nil {
		kind := "private"
		if class == pkcs11.CKO_PUBLIC_KEY {
			kind = "public"
		}
		return 0, fmt.Errorf("%s %s key %x: %w", kind, ref.Algorithm, ref.ID, err)
	}
	return h, nil
}

// checkPrivateAttrs enforces requiredPrivateAttrs on a private key object.
func (m *Module) checkPrivateAttrs(s *session, h pkcs11.ObjectHandle) error {
	tmpl := make([]*pkcs11.Attribute, len(requiredPrivateAttrs))
	for i, r := range requiredPrivateAttrs {
		tmpl[i] = pkcs11.NewAttribute(r.attr, nil)
	}
	got, err := m.p.GetAttributeValue(s.h, h, tmpl)
	if err != nil {
		if isLost(err) {
			return fmt.Errorf("C_GetAttributeValue: %w", err)
		}
		// A token that will not even report these attributes cannot be trusted with them.
		return fmt.Errorf("reading key attributes: %w: %w", ErrKeyUnsafe, err)
	}
	for i, r := range requiredPrivateAttrs {
		v := got[i].Value
		if len(v) != 1 || (v[0] != 0) != r.want {
			return fmt.Errorf("%s is not %t: %w", r.name, r.want, ErrKeyUnsafe)
		}
	}
	return nil
}

func (m *Module) readPublic(s *session, ref KeyRef) ([]byte, error) {
	h, err := m.findKey(s, pkcs11.CKO_PUBLIC_KEY, ref)
	if err != nil {
		return nil, err
	}
	got, err := m.p.GetAttributeValue(s.h, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("reading CKA_EC_POINT: %w", err)
	}
	return decodePoint(ref.Algorithm, got[0].Value)
}

// checkKey is CheckKey on a given session; the rebuild uses it before the new
// generation is published.
func (m *Module) checkKey(s *session, ref KeyRef, pinned []byte) error {
	priv, err := m.findKey(s, pkcs11.CKO_PRIVATE_KEY, ref)
	if err != nil {
		return err
	}
	if err := m.checkPrivateAttrs(s, priv); err != nil {
		return fmt.Errorf("key %x: %w", ref.ID, err)
	}
	pub, err := m.readPublic(s, ref)
	if err != nil {
		return err
	}
	if !bytes.Equal(pub, pinned) {
		return fmt.Errorf("key %x: %w", ref.ID, ErrKeyMismatch)
	}
	return nil
}

// GenerateKey creates a key pair inside the token with the attributes in
// templates.go, verifies the token applied them, and returns its public key.
// A key that comes back unsafe is destroyed and ErrKeyUnsafe returned.
func (m *Module) GenerateKey(ctx context.Context, alg Algorithm, label string) (*GeneratedKey, error) {
	spec, err := specFor(alg)
	if err != nil {
		return nil, err
	}
	if label == "" || len(label) > 128 {
		return nil, fmt.Errorf("hsm: key label must be 1..128 bytes: %w", ErrInvalidInput)
	}
	id := make([]byte, idLen)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("hsm: key id: %w", err)
	}
	ref := KeyRef{ID: id, Algorithm: alg}
	var gk *GeneratedKey
	err = m.do(ctx, "generate key", func(s *session) error {
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(spec.genMech, nil)}
		pubH, privH, err := m.p.GenerateKeyPair(s.h, mech, publicKeyTemplate(spec, id, label), privateKeyTemplate(spec, id, label))
		if err != nil {
			return fmt.Errorf("C_GenerateKeyPair %s: %w", alg, err)
		}
		if err := m.checkPrivateAttrs(s, privH); err != nil {
			if isLost(err) {
				return err
			}
			// Best effort: if destruction fails too the key is at least never
			// returned, and CheckKey would refuse it on any later use.
			_ = m.p.DestroyObject(s.h, privH)
			_ = m.p.DestroyObject(s.h, pubH)
			m.log.Error("generated key failed attribute check; destroyed", zap.String("key_id", hex.EncodeToString(id)), zap.Error(err))
			return err
		}
		pub, err := m.readPublic(s, ref)
		if err != nil {
			return err
		}
		gk = &GeneratedKey{ID: id, Label: label, Algorithm: alg, PublicKey: pub}
		s.gen.setHandle(cacheKey(ref), privH)
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("key generated", zap.String("algorithm", string(alg)), zap.String("key_id", hex.EncodeToString(id)), zap.String("label", label))
	return gk, nil
}

// PublicKey reads a key's public key from the token.
func (m *Module) PublicKey(ctx context.Context, ref KeyRef) ([]byte, error) {
	var pub []byte
	err := m.do(ctx, "public key", func(s *session) error {
		var err error
		pub, err = m.readPublic(s, ref)
		return err
	})
	return pub, err
}

// CheckKey verifies that the private key exists, is sensitive and was never
// extractable, and that its public key equals pinned. It returns errors
// wrapping ErrKeyNotFound, ErrKeyUnsafe or ErrKeyMismatch.
func (m *Module) CheckKey(ctx context.Context, ref KeyRef, pinned []byte) error {
	return m.do(ctx, "check key", func(s *session) error { return m.checkKey(s, ref, pinned) })
}

// SetPinnedKeys replaces the set of pinned keys and checks each one now; they
// are checked again after every rebuild. Sign refuses a pinned key whose last
// check failed. Results are read with KeyError.
func (m *Module) SetPinnedKeys(keys []PinnedKey) {
	cp := make([]PinnedKey, len(keys))
	for i, k := range keys {
		cp[i] = PinnedKey{Ref: KeyRef{ID: bytes.Clone(k.Ref.ID), Algorithm: k.Ref.Algorithm}, PublicKey: bytes.Clone(k.PublicKey)}
	}
	m.pinMu.Lock()
	m.pinVersion++
	m.pins = cp
	m.keyErrs = map[string]error{}
	for _, k := range cp {
		m.keyErrs[string(k.Ref.ID)] = fmt.Errorf("hsm: pinned key %x not checked yet: %w", k.Ref.ID, ErrUnavailable)
	}
	m.pinMu.Unlock()
	// A lost token here is fine: the rebuild re-checks every pin.
	_ = m.do(context.Background(), "check pinned keys", m.recheckPins)
}

// recheckPins checks every pinned key on s and records the results. It returns
// only errors that mean the session is lost, so the rebuild can retry; a key
// that fails is recorded in KeyError and does not stop the others.
func (m *Module) recheckPins(s *session) error {
	m.pinMu.Lock()
	pins, version := m.pins, m.pinVersion
	m.pinMu.Unlock()
	results := make(map[string]error, len(pins))
	for _, k := range pins {
		err := m.checkKey(s, k.Ref, k.PublicKey)
		if err != nil && isLost(err) {
			return err
		}
		if err != nil {
			err = fmt.Errorf("hsm: pinned key: %w", err)
			m.log.Error("pinned key failed its check", zap.String("key_id", hex.EncodeToString(k.Ref.ID)),
				zap.String("algorithm", string(k.Ref.Algorithm)), zap.Error(err))
		}
		results[string(k.Ref.ID)] = err
	}
	m.pinMu.Lock()
	defer m.pinMu.Unlock()
	if m.pinVersion == version { // a concurrent SetPinnedKeys wins
		m.keyErrs = results
	}
	return nil
}

// KeyError returns nil if the pinned key with this CKA_ID passed its last check,
// the reason it is refused otherwise, and ErrKeyNotPinned if it is not pinned.
func (m *Module) KeyError(id []byte) error {
	m.pinMu.Lock()
	defer m.pinMu.Unlock()
	err, ok := m.keyErrs[string(id)]
	if !ok {
		return fmt.Errorf("hsm: key %x: %w", id, ErrKeyNotPinned)
	}
	return err
}

// pinnedKeyError is KeyError for Sign: nil for keys that are not pinned.
func (m *Module) pinnedKeyError(id []byte) error {
	m.pinMu.Lock()
	defer m.pinMu.Unlock()
	return m.keyErrs[string(id)]
}
