package hsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
)

// KeyRef names a key pair on the token by its CKA_ID and algorithm.
//
// WrappedBackup says which attributes CheckKey demands of the private key: it
// must be the mode the key was generated with (KeyOptions.WrappedBackup, as
// recorded by the caller), never something read off the key, so that a key
// with the wrong attributes is refused rather than silently accepted in the
// other mode. It plays no part in finding the key or in Sign.
type KeyRef struct {
	ID            []byte
	Algorithm     Algorithm
	WrappedBackup bool
}

// KeyOptions are the choices GenerateKeyWith offers beyond algorithm and label.
type KeyOptions struct {
	// WrappedBackup makes the private key backup-able: sensitive, but
	// extractable under CKA_WRAP_WITH_TRUSTED, so that WrapKey can export it
	// encrypted under the SO-trusted wrapping key and nothing else can export
	// it at all. Without it the key is never extractable, not even wrapped.
	WrappedBackup bool
}

// GeneratedKey describes a key pair created by GenerateKey or GenerateKeyWith.
type GeneratedKey struct {
	ID            []byte // CKA_ID shared by the private and public objects
	Label         string
	Algorithm     Algorithm
	PublicKey     []byte // 65-byte uncompressed SEC1 for EC, 32 bytes for Ed25519
	WrappedBackup bool   // read back from the token: extractable only wrapped under a trusted key
}

// PinnedKey is a key whose public key is known out of band (recorded when it was
// generated). It is re-checked after every rebuild.
//
// Backup marks the key as generated with KeyOptions.WrappedBackup, exactly like
// Ref.WrappedBackup; either one set is enough. A key checked in the wrong mode
// fails its check in both directions, so this cannot let a key through.
type PinnedKey struct {
	Ref       KeyRef
	PublicKey []byte
	Backup    bool
}

// idLen is the CKA_ID length: 128 random bits make collisions on one token
// negligible without a lookup before each generation.
const idLen = 16

func cacheKey(ref KeyRef) string { return string(ref.Algorithm) + "\x00" + string(ref.ID) }

// objectsMu works around a race in SoftHSM 2.6.1 (file object store), measured
// while writing WriteData: creating a token object (C_CreateObject,
// C_GenerateKeyPair, C_UnwrapKey, C_CopyObject) while another thread of the
// process is searching (C_FindObjectsInit..C_FindObjectsFinal) fails with
// CKR_GENERAL_ERROR in roughly one case in ten, and isLost takes that for a
// lost token. Searches therefore hold objectsMu shared and creations hold it
// exclusively. Destroying objects, reading attributes, signing and concurrent
// creations were measured not to race with searches; WriteData still destroys
// under it, so that ReadData, which holds it shared from its search until it
// has read what it found, never sees an object vanish half-way (SoftHSM then
// answers CKR_ATTRIBUTE_VALUE_INVALID). It is package-wide because every
// Module and context in the process shares the one library.
var objectsMu sync.RWMutex

// CountPrivateKeys counts the private keys stored on the token (CKA_TOKEN
// true), whatever their type or label: signing keys, the audit key, keys of
// another application. Init uses it to refuse a token that is not new.
func (m *Module) CountPrivateKeys(ctx context.Context) (int, error) {
	var n int
	err := m.do(ctx, "count private keys", func(s *session) error {
		objs, err := m.findEvery(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		})
		n = len(objs)
		return err
	})
	return n, err
}

// findOne returns the single object matching tmpl, ErrKeyNotFound if there is
// none and ErrKeyAmbiguous if there are several.
func (m *Module) findOne(s *session, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	objs, err := findAll(m.p, s.h, tmpl, 2)
	if err != nil {
		return 0, err
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

// findAll returns the objects matching tmpl, at most max of them.
func findAll(p Cryptoki, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	objectsMu.RLock()
	defer objectsMu.RUnlock()
	return findAllLocked(p, sh, tmpl, max)
}

// findAllLocked is findAll for a caller already holding objectsMu.
func findAllLocked(p Cryptoki, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		// A search the token started though it answered an error would
		// block the session: end it (an error here means there was none).
		_ = p.FindObjectsFinal(sh)
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	var (
		out []pkcs11.ObjectHandle
		err error
	)
	for len(out) < max {
		var objs []pkcs11.ObjectHandle
		// The binding allocates room for as many handles as asked for.
		if objs, _, err = p.FindObjects(sh, min(max-len(out), 4096)); err != nil || len(objs) == 0 {
			break
		}
		out = append(out, objs...)
	}
	// Always finish the search: an open search blocks every other operation
	// on the session with CKR_OPERATION_ACTIVE.
	if ferr := p.FindObjectsFinal(sh); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return nil, fmt.Errorf("C_FindObjects: %w", err)
	}
	return out, nil
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
		// A session that is no longer logged in (someone called C_Logout)
		// sees no private objects: the login is lost, not the key.
		if err := m.checkLoggedIn(s); err != nil {
			return 0, fmt.Errorf("after empty search: %w", err)
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

// checkAttrs reads the boolean attributes in rules from object h and returns
// an error wrapping ErrKeyUnsafe unless each has its wanted value. It is a
// function on a bare context so ProvisionWrappingKey can use it without a Module.
func checkAttrs(p Cryptoki, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, rules []attrRule) error {
	tmpl := make([]*pkcs11.Attribute, len(rules))
	for i, r := range rules {
		tmpl[i] = pkcs11.NewAttribute(r.attr, nil)
	}
	got, err := p.GetAttributeValue(sh, h, tmpl)
	if err != nil {
		if isLost(err) {
			return fmt.Errorf("C_GetAttributeValue: %w", err)
		}
		// A token that will not even report these attributes cannot be trusted with them.
		return fmt.Errorf("reading key attributes: %w: %w", ErrKeyUnsafe, err)
	}
	for i, r := range rules {
		if err := r.check(got[i].Value); err != nil {
			return err
		}
	}
	return nil
}

// check refuses v unless it is the CK_BBOOL the rule wants.
func (r attrRule) check(v []byte) error {
	if len(v) != 1 || (v[0] != 0) != r.want {
		return fmt.Errorf("%s is not %t: %w", r.name, r.want, ErrKeyUnsafe)
	}
	return nil
}

// checkPrivateAttrs enforces requiredPrivateAttrs on an ordinary private key
// object, or requiredBackupPrivateAttrs on a backup-able one. The mode comes
// from the caller, never from the key.
//
// For a backup-able key CKA_ALWAYS_SENSITIVE must also be true, except on a
// key that was not generated on this token (CKA_LOCAL false): C_UnwrapKey sets
// CKA_ALWAYS_SENSITIVE false (PKCS#11 says so and SoftHSM 2.6 does it, as
// measured by the tests), so a key restored by UnwrapKey could never pass. The
// token cannot tell an unwrapped key from one imported in the clear with
// C_CreateObject; only UnwrapKey creates such keys here, always sensitive, and
// the pinned public key still proves it is the same key.
func (m *Module) checkPrivateAttrs(s *session, h pkcs11.ObjectHandle, backup bool) error {
	if !backup {
		return checkAttrs(m.p, s.h, h, requiredPrivateAttrs)
	}
	if err := checkAttrs(m.p, s.h, h, requiredBackupPrivateAttrs); err != nil {
		return err
	}
	got, err := m.p.GetAttributeValue(s.h, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_LOCAL, nil),
	})
	if err != nil {
		if isLost(err) {
			return fmt.Errorf("C_GetAttributeValue: %w", err)
		}
		return fmt.Errorf("reading key attributes: %w: %w", ErrKeyUnsafe, err)
	}
	return checkBackupSensitivity(got[0].Value, got[1].Value)
}

// checkBackupSensitivity is the CKA_ALWAYS_SENSITIVE rule for a backup-able
// key (see checkPrivateAttrs).
func checkBackupSensitivity(alwaysSensitive, local []byte) error {
	if len(alwaysSensitive) != 1 || len(local) != 1 {
		return fmt.Errorf("CKA_ALWAYS_SENSITIVE or CKA_LOCAL unreadable: %w", ErrKeyUnsafe)
	}
	if alwaysSensitive[0] == 0 && local[0] != 0 {
		// Generated here, yet once not sensitive: it may have been read.
		return fmt.Errorf("CKA_ALWAYS_SENSITIVE is not true on a key generated on the token: %w", ErrKeyUnsafe)
	}
	return nil
}

func (m *Module) readPublic(s *session, ref KeyRef) ([]byte, error) {
	h, err := m.findKey(s, pkcs11.CKO_PUBLIC_KEY, ref)
	if err != nil {
		return nil, err
	}
	return m.readPublicFrom(s, ref.Algorithm, h)
}

// readPublicFrom reads the public key of the public key object h.
func (m *Module) readPublicFrom(s *session, alg Algorithm, h pkcs11.ObjectHandle) ([]byte, error) {
	got, err := m.p.GetAttributeValue(s.h, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("reading CKA_EC_POINT: %w", err)
	}
	return decodePoint(alg, got[0].Value)
}

// checkKey is CheckKey on a given session: checkKeySearching, but with one
// search (for the key's CKA_ID) instead of one per object, the objects found
// matched as checkKeysOn matches them.
func (m *Module) checkKey(s *session, ref KeyRef, pinned []byte) error {
	if _, err := specFor(ref.Algorithm); err != nil || len(ref.ID) == 0 {
		return m.checkKeySearching(s, ref, pinned) // refused before any search
	}
	ix, err := m.buildIndex(context.Background(), []*session{s}, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, ref.ID)})
	if errors.Is(err, errNoIndex) {
		return m.checkKeySearching(s, ref, pinned)
	}
	if err != nil {
		return err
	}
	results := []error{m.checkIndexed(s, ix, PinnedKey{Ref: ref, PublicKey: pinned})}
	if err := m.confirmNotFound(s, results); err != nil {
		return err
	}
	return results[0]
}

// checkKeySearching checks a key with a search for each of its objects.
func (m *Module) checkKeySearching(s *session, ref KeyRef, pinned []byte) error {
	priv, err := m.findKey(s, pkcs11.CKO_PRIVATE_KEY, ref)
	if err != nil {
		return err
	}
	if err := m.checkPrivateAttrs(s, priv, ref.WrappedBackup); err != nil {
		mode := "ordinary"
		if ref.WrappedBackup {
			mode = "backup-able"
		}
		return fmt.Errorf("key %x checked as %s: %w", ref.ID, mode, err)
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

// GenerateKey creates an ordinary (never extractable) key pair; it is
// GenerateKeyWith with zero KeyOptions.
func (m *Module) GenerateKey(ctx context.Context, alg Algorithm, label string) (*GeneratedKey, error) {
	return m.GenerateKeyWith(ctx, alg, label, KeyOptions{})
}

// GenerateKeyWith creates a key pair inside the token with the attributes in
// templates.go, verifies the token applied them, and returns its public key.
// A key that comes back unsafe is destroyed and ErrKeyUnsafe returned.
//
// Ed25519 with WrappedBackup is refused with ErrUnsupported: SoftHSM 2.6.1
// answers C_WrapKey on an EdDSA private key with CKR_KEY_NOT_WRAPPABLE whatever
// its attributes and whatever the wrapping key (measured, see
// TestEd25519BackupRefused), so such a key could never be backed up.
func (m *Module) GenerateKeyWith(ctx context.Context, alg Algorithm, label string, opts KeyOptions) (*GeneratedKey, error) {
	spec, err := specFor(alg)
	if err != nil {
		return nil, err
	}
	if opts.WrappedBackup && alg == Ed25519 {
		return nil, fmt.Errorf("hsm: %s key with wrapped backup: SoftHSM cannot wrap EdDSA private keys: %w", alg, ErrUnsupported)
	}
	if label == "" || len(label) > 128 {
		return nil, fmt.Errorf("hsm: key label must be 1..128 bytes: %w", ErrInvalidInput)
	}
	id := make([]byte, idLen)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("hsm: key id: %w", err)
	}
	ref := KeyRef{ID: id, Algorithm: alg, WrappedBackup: opts.WrappedBackup}
	var gk *GeneratedKey
	err = m.do(ctx, "generate key", func(s *session) error {
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(spec.genMech, nil)}
		objectsMu.Lock()
		pubH, privH, err := m.p.GenerateKeyPair(s.h, mech, publicKeyTemplate(spec, id, label), privateKeyTemplate(spec, id, label, opts.WrappedBackup))
		objectsMu.Unlock()
		if err != nil {
			return fmt.Errorf("C_GenerateKeyPair %s: %w", alg, err)
		}
		if err := m.checkPrivateAttrs(s, privH, opts.WrappedBackup); err != nil {
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
		// From the handle C_GenerateKeyPair returned, not by a search: a
		// search reads every object on the token (SoftHSM's file store
		// re-validates each one), which made each new key slower than the last.
		pub, err := m.readPublicFrom(s, alg, pubH)
		if err != nil {
			return err
		}
		backup, err := m.readWrappedBackup(s, privH)
		if err != nil {
			return err
		}
		gk = &GeneratedKey{ID: id, Label: label, Algorithm: alg, PublicKey: pub, WrappedBackup: backup}
		s.gen.setHandle(cacheKey(ref), privH)
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("key generated", zap.String("algorithm", string(alg)), zap.String("key_id", hex.EncodeToString(id)),
		zap.String("label", label), zap.Bool("wrapped_backup", gk.WrappedBackup))
	return gk, nil
}

// readWrappedBackup reports whether the private key can leave the token, and
// then only wrapped under a trusted key (CKA_EXTRACTABLE and
// CKA_WRAP_WITH_TRUSTED both true).
func (m *Module) readWrappedBackup(s *session, h pkcs11.ObjectHandle) (bool, error) {
	got, err := m.p.GetAttributeValue(s.h, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, nil),
	})
	if err != nil {
		return false, fmt.Errorf("reading CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED: %w", err)
	}
	on := func(v []byte) bool { return len(v) == 1 && v[0] != 0 }
	return on(got[0].Value) && on(got[1].Value), nil
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

// CheckKey verifies that the private key exists, has the attributes of its
// mode, and that its public key equals pinned. An ordinary key must be
// sensitive and never have been extractable; a backup-able key
// (ref.WrappedBackup) must be sensitive and extractable only wrapped under a
// trusted key (see checkPrivateAttrs). A key is refused in the other mode. It
// returns errors wrapping ErrKeyNotFound, ErrKeyUnsafe or ErrKeyMismatch.
func (m *Module) CheckKey(ctx context.Context, ref KeyRef, pinned []byte) error {
	return m.do(ctx, "check key", func(s *session) error { return m.checkKey(s, ref, pinned) })
}

// SetPinnedKeys replaces the set of pinned keys and checks each one now; they
// are checked again after every rebuild. Sign refuses a pinned key whose last
// check failed. Results are read with KeyError. It is PinKeys without the
// results: failures are logged.
func (m *Module) SetPinnedKeys(keys []PinnedKey) {
	pins, results, err := m.pinKeys(context.Background(), keys)
	if err != nil {
		// A lost token here is fine: the rebuild re-checks every pin.
		return
	}
	m.logPinFailures(pins, results)
}

// PinKeys replaces the set of pinned keys with keys, checks every one of them
// now, as CheckKeys does (in one pass over the token), and returns each key's
// result, in order: nil, or what CheckKey would have returned. Every key is
// pinned, including those that fail: Sign refuses them until a later check
// passes. The pinned keys are checked again after every rebuild; KeyError
// reads the latest results.
func (m *Module) PinKeys(ctx context.Context, keys []PinnedKey) []error {
	_, results, err := m.pinKeys(ctx, keys)
	if err != nil {
		return fill(len(keys), err)
	}
	return checkErrors(results)
}

// pinKeys pins a copy of keys and checks it now. Until the check is done
// every pinned key reads as "not checked yet"; if the whole check fails
// (lost token, ctx) they stay so until the rebuild checks them.
func (m *Module) pinKeys(ctx context.Context, keys []PinnedKey) ([]PinnedKey, []error, error) {
	cp := clonePins(keys)
	m.pinMu.Lock()
	m.pinVersion++
	version := m.pinVersion
	m.pins = cp
	m.keyErrs = make(map[string]error, len(cp))
	for _, k := range cp {
		m.keyErrs[string(k.Ref.ID)] = fmt.Errorf("hsm: pinned key %x not checked yet: %w", k.Ref.ID, ErrUnavailable)
	}
	m.pinMu.Unlock()
	if len(cp) == 0 {
		return cp, nil, nil
	}
	var results []error
	err := m.doMany(ctx, "check pinned keys", func(ss []*session) error {
		var err error
		results, err = m.checkKeysOn(ctx, ss, cp)
		return err
	})
	if err != nil {
		return cp, nil, err
	}
	m.recordPinResults(version, cp, results)
	return cp, results, nil
}

// clonePins copies keys, folding Backup into Ref.WrappedBackup.
func clonePins(keys []PinnedKey) []PinnedKey {
	cp := make([]PinnedKey, len(keys))
	for i, k := range keys {
		backup := k.Backup || k.Ref.WrappedBackup
		cp[i] = PinnedKey{
			Ref:       KeyRef{ID: bytes.Clone(k.Ref.ID), Algorithm: k.Ref.Algorithm, WrappedBackup: backup},
			PublicKey: bytes.Clone(k.PublicKey),
			Backup:    backup,
		}
	}
	return cp
}

// recordPinResults makes results (one per pin) what KeyError answers, unless
// the pins were replaced meanwhile: a concurrent SetPinnedKeys wins.
func (m *Module) recordPinResults(version uint64, pins []PinnedKey, results []error) {
	errs := make(map[string]error, len(pins))
	for i, k := range pins {
		var err error
		if results[i] != nil {
			err = fmt.Errorf("hsm: pinned key: %w", results[i])
		}
		errs[string(k.Ref.ID)] = err
	}
	m.pinMu.Lock()
	defer m.pinMu.Unlock()
	if m.pinVersion == version {
		m.keyErrs = errs
	}
}

func (m *Module) logPinFailures(pins []PinnedKey, results []error) {
	for i, err := range results {
		if err != nil {
			m.log.Error("pinned key failed its check", zap.String("key_id", hex.EncodeToString(pins[i].Ref.ID)),
				zap.String("algorithm", string(pins[i].Ref.Algorithm)), zap.Error(fmt.Errorf("hsm: pinned key: %w", err)))
		}
	}
}

// recheckPins checks every pinned key on s, and on whatever other sessions of
// its generation are idle, and records the results. It returns only errors
// that mean the session is lost, so the rebuild can retry; a key that fails
// is recorded in KeyError and does not stop the others.
func (m *Module) recheckPins(s *session) error {
	m.pinMu.Lock()
	pins, version := m.pins, m.pinVersion
	m.pinMu.Unlock()
	if len(pins) == 0 {
		return nil
	}
	ss := append([]*session{s}, m.acquireIdle(s.gen, m.opts.PoolSize-1)...)
	results, err := m.checkKeysOn(context.Background(), ss, pins)
	for _, x := range ss[1:] {
		m.release(x)
	}
	if err != nil {
		return err
	}
	m.logPinFailures(pins, results)
	m.recordPinResults(version, pins, results)
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
