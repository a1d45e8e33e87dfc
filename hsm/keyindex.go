package hsm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"
)

// Checking keys in one pass over the token.
//
// A search (C_FindObjectsInit) costs as much as the token has objects,
// whatever it looks for: SoftHSM's file store re-validates every object on
// every search (two file opens each) and decrypts the byte strings of private
// objects to compare them. Checking a key with one search for its private and
// one for its public object, n keys one by one, costs O(n × objects): hours
// for 10,000 keys. Instead, checkKeysOn searches once for every object, reads
// each object's attributes once (one C_GetAttributeValue, see attrReader) into
// a keyIndex, and checkIndexed then applies to each key exactly the rules of
// findKey and of the checks: the same templates in the same order, the same
// attribute rules, the same errors. checkKey does the same for one key with a
// search for its CKA_ID. Anything the index cannot read faithfully falls back
// to searching per key (checkKeySearching), as it always was.

// matchAttrs are the attributes findTemplates match on, besides the class.
var matchAttrs = []uint{pkcs11.CKA_ID, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_EC_PARAMS}

// privateIndexAttrs are what the checks need of a private key object: what
// findKey matches on, and every attribute checkPrivateAttrs reads, in either
// mode.
var privateIndexAttrs = func() []uint {
	out := slices.Clone(matchAttrs)
	for _, rules := range [][]attrRule{requiredPrivateAttrs, requiredBackupPrivateAttrs} {
		for _, r := range rules {
			out = append(out, r.attr)
		}
	}
	out = append(out, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_LOCAL)
	slices.Sort(out)
	return slices.Compact(out)
}()

// publicIndexAttrs are what the checks need of a public key object.
var publicIndexAttrs = append(slices.Clone(matchAttrs), pkcs11.CKA_EC_POINT)

// indexAttrs are asked of every object in one call: its class and both sets.
// An object answers those of its class and marks the others unavailable.
var indexAttrs = func() []uint {
	out := append(append([]uint{pkcs11.CKA_CLASS}, privateIndexAttrs...), publicIndexAttrs...)
	slices.Sort(out)
	return slices.Compact(out)
}()

// ulongValue is a CK_ULONG attribute value as the token returns it.
func ulongValue(attr, v uint) string { return string(pkcs11.NewAttribute(attr, v).Value) }

func keyTypeValue(t uint) string { return ulongValue(pkcs11.CKA_KEY_TYPE, t) }

var (
	privateClass = ulongValue(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)
	publicClass  = ulongValue(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)
)

// indexKey is what a find template of findTemplates selects on.
type indexKey struct{ keyType, params, id string }

// indexed is one key object of the index.
type indexed struct {
	h pkcs11.ObjectHandle
	// attrs holds every attribute of privateIndexAttrs or publicIndexAttrs,
	// or is nil when only matchAttrs could be read: the checks then read
	// what they need from the object itself, as checkKeySearching does.
	attrs map[uint][]byte
}

// keyIndex is the private and public key objects found, by class.
type keyIndex map[uint]map[indexKey][]indexed

// errNoIndex means an object could not be indexed faithfully; the keys are
// then checked with their own searches.
var errNoIndex = errors.New("token cannot be indexed")

// CheckKeys checks many keys at once, in one pass over the token, spread over
// idle sessions of the pool. Each result, in order, is what CheckKey returns
// for that key: nil, or an error wrapping ErrKeyNotFound, ErrKeyAmbiguous,
// ErrKeyUnsafe, ErrKeyMismatch or ErrUnavailable. A key is checked in the
// mode of Ref.WrappedBackup or Backup (either one set is enough).
func (m *Module) CheckKeys(ctx context.Context, keys []PinnedKey) []error {
	cp := clonePins(keys)
	var results []error
	err := m.doMany(ctx, "check keys", func(ss []*session) error {
		var err error
		results, err = m.checkKeysOn(ctx, ss, cp)
		return err
	})
	if err != nil {
		return fill(len(keys), err)
	}
	return checkErrors(results)
}

// checkErrors wraps each key's check result as CheckKey reports it.
func checkErrors(results []error) []error {
	out := make([]error, len(results))
	for i, r := range results {
		if r != nil {
			out[i] = fmt.Errorf("hsm: check key: %w", r)
		}
	}
	return out
}

func fill(n int, err error) []error {
	out := make([]error, n)
	for i := range out {
		out[i] = err
	}
	return out
}

// checkKeysOn checks keys on the sessions ss, all of one generation, and
// returns one result per key (nil or checkKey's error). Its own error is
// only one that means the sessions are lost, or ctx's. The private key handle
// of every key that passes is cached for Sign.
func (m *Module) checkKeysOn(ctx context.Context, ss []*session, keys []PinnedKey) ([]error, error) {
	results := make([]error, len(keys))
	if len(keys) == 0 {
		return results, nil
	}
	ix, err := m.buildIndex(ctx, ss, nil)
	if errors.Is(err, errNoIndex) {
		err = parallel(ctx, ss, len(keys), func(s *session, i int) error {
			results[i] = m.checkKeySearching(s, keys[i].Ref, keys[i].PublicKey)
			return lostOnly(results[i])
		})
		return results, err
	}
	if err != nil {
		return nil, err
	}
	err = parallel(ctx, ss, len(keys), func(s *session, i int) error {
		results[i] = m.checkIndexed(s, ix, keys[i])
		return lostOnly(results[i])
	})
	if err != nil {
		return nil, err
	}
	return results, m.confirmNotFound(ss[0], results)
}

// confirmNotFound does what findKey does after an empty search, once for all
// the results that say a key was not found: SoftHSM answers searches with
// nothing once its token directory has vanished, and only C_GetTokenInfo
// notices. A lost token is returned as such; another failure replaces those
// results.
func (m *Module) confirmNotFound(s *session, results []error) error {
	if !slices.ContainsFunc(results, func(err error) bool { return errors.Is(err, ErrKeyNotFound) }) {
		return nil
	}
	_, terr := m.p.GetTokenInfo(s.gen.slot)
	if terr == nil {
		return nil
	}
	terr = fmt.Errorf("C_GetTokenInfo after empty search: %w", terr)
	if isLost(terr) {
		return terr
	}
	for i, err := range results {
		if errors.Is(err, ErrKeyNotFound) {
			results[i] = terr
		}
	}
	return nil
}

// lostOnly passes on the errors that must stop a batch: those that mean the
// session is lost.
func lostOnly(err error) error {
	if err != nil && isLost(err) {
		return err
	}
	return nil
}

// checkIndexed is checkKeySearching against the index.
func (m *Module) checkIndexed(s *session, ix keyIndex, k PinnedKey) error {
	ref := k.Ref
	priv, err := ix.lookup(pkcs11.CKO_PRIVATE_KEY, ref)
	if err != nil {
		return err
	}
	if priv.attrs != nil {
		err = privateAttrsFrom(priv.attrs, ref.WrappedBackup)
	} else {
		err = m.checkPrivateAttrs(s, priv.h, ref.WrappedBackup)
	}
	if err != nil {
		mode := "ordinary"
		if ref.WrappedBackup {
			mode = "backup-able"
		}
		return fmt.Errorf("key %x checked as %s: %w", ref.ID, mode, err)
	}
	pubObj, err := ix.lookup(pkcs11.CKO_PUBLIC_KEY, ref)
	if err != nil {
		return err
	}
	var pub []byte
	if pubObj.attrs != nil {
		pub, err = decodePoint(ref.Algorithm, pubObj.attrs[pkcs11.CKA_EC_POINT])
	} else {
		pub, err = m.readPublicFrom(s, ref.Algorithm, pubObj.h)
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(pub, k.PublicKey) {
		return fmt.Errorf("key %x: %w", ref.ID, ErrKeyMismatch)
	}
	// The first signature need not search for the key.
	s.gen.setHandle(cacheKey(ref), priv.h)
	return nil
}

// privateAttrsFrom is checkPrivateAttrs on attributes already read.
func privateAttrsFrom(attrs map[uint][]byte, backup bool) error {
	rules := requiredPrivateAttrs
	if backup {
		rules = requiredBackupPrivateAttrs
	}
	for _, r := range rules {
		if err := r.check(attrs[r.attr]); err != nil {
			return err
		}
	}
	if !backup {
		return nil
	}
	return checkBackupSensitivity(attrs[pkcs11.CKA_ALWAYS_SENSITIVE], attrs[pkcs11.CKA_LOCAL])
}

// lookup is findKey against the index: the same templates in the same order,
// the same errors (but for the token confirmation: see confirmNotFound).
func (ix keyIndex) lookup(class uint, ref KeyRef) (indexed, error) {
	spec, err := specFor(ref.Algorithm)
	if err != nil {
		return indexed{}, err
	}
	if len(ref.ID) == 0 {
		return indexed{}, fmt.Errorf("empty key id: %w", ErrInvalidInput)
	}
	err = ErrKeyNotFound
	for _, params := range append([][]byte{spec.params}, spec.altParams...) {
		found := ix[class][indexKey{keyType: keyTypeValue(spec.keyType), params: string(params), id: string(ref.ID)}]
		if len(found) == 1 {
			return found[0], nil
		}
		if len(found) > 1 {
			err = ErrKeyAmbiguous
			break
		}
	}
	kind := "private"
	if class == pkcs11.CKO_PUBLIC_KEY {
		kind = "public"
	}
	return indexed{}, fmt.Errorf("%s %s key %x: %w", kind, ref.Algorithm, ref.ID, err)
}

// buildIndex searches once for the objects matching tmpl (nil: every object)
// and reads each one's attributes, over the sessions ss. It returns
// errNoIndex if the search fails, or if an object that might be a key of
// ours does not show the attributes the searches match on.
func (m *Module) buildIndex(ctx context.Context, ss []*session, tmpl []*pkcs11.Attribute) (keyIndex, error) {
	handles, err := m.findEvery(ss[0], tmpl)
	if err != nil {
		if isLost(err) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errNoIndex, err)
	}
	var r attrReader
	if m.opts.Interpose == nil {
		// Not past an interposed library: every read goes through it.
		r = newAttrReader(m.opts.URI.ModulePath)
	}
	objects := make([]indexObject, len(handles))
	err = parallel(ctx, ss, len(handles), func(s *session, i int) error {
		var err error
		objects[i], err = m.readIndexObject(s, r, handles[i])
		return err
	})
	if err != nil {
		return nil, err
	}
	ix := keyIndex{pkcs11.CKO_PRIVATE_KEY: {}, pkcs11.CKO_PUBLIC_KEY: {}}
	for _, o := range objects {
		switch o.kind {
		case objectUnreadable:
			return nil, errNoIndex
		case objectIndexed:
			ix[o.class][o.key] = append(ix[o.class][o.key], o.entry)
		}
	}
	return ix, nil
}

// objectKind is what readIndexObject made of an object.
type objectKind int

const (
	objectIndexed    objectKind = iota
	objectForeign               // not a key object, or of a key type no template of ours selects
	objectUnreadable            // might be one of ours, but its attributes cannot be read
)

// indexObject is one object as read for the index.
type indexObject struct {
	kind  objectKind
	class uint
	key   indexKey
	entry indexed
}

// readIndexObject reads object h for the index, with one call when the token
// allows (attrReader), else through the binding: its class, then the
// attributes of its class, or at least those the searches match on. Its error
// is one that means the session is lost.
func (m *Module) readIndexObject(s *session, r attrReader, h pkcs11.ObjectHandle) (indexObject, error) {
	attrs, ok, err := r.read(s.h, h, indexAttrs)
	if err != nil {
		return indexObject{}, err
	}
	if ok {
		if o, done := classify(h, attrs); done {
			return o, nil
		}
	}
	// Through the binding: the class first, then what the class has.
	got, err := m.p.GetAttributeValue(s.h, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
	if err != nil {
		if isLost(err) {
			return indexObject{}, err
		}
		return indexObject{kind: objectUnreadable}, nil
	}
	attrs = map[uint][]byte{pkcs11.CKA_CLASS: got[0].Value}
	full := privateIndexAttrs
	switch string(got[0].Value) {
	case privateClass:
	case publicClass:
		full = publicIndexAttrs
	default:
		return indexObject{kind: objectForeign}, nil
	}
	for _, types := range [][]uint{full, matchAttrs, {pkcs11.CKA_KEY_TYPE}} {
		tmpl := make([]*pkcs11.Attribute, len(types))
		for i, t := range types {
			tmpl[i] = pkcs11.NewAttribute(t, nil)
		}
		got, err := m.p.GetAttributeValue(s.h, h, tmpl)
		if err != nil {
			if isLost(err) {
				return indexObject{}, err
			}
			continue
		}
		for _, a := range got {
			attrs[a.Type] = a.Value
		}
		break
	}
	if o, done := classify(h, attrs); done {
		return o, nil
	}
	return indexObject{kind: objectUnreadable}, nil
}

// classify makes an index entry of the attributes read from object h, if
// they are enough to decide: done is false when the object must be read
// again through the binding.
func classify(h pkcs11.ObjectHandle, attrs map[uint][]byte) (o indexObject, done bool) {
	full := privateIndexAttrs
	switch class, ok := attrs[pkcs11.CKA_CLASS]; {
	case !ok:
		return indexObject{}, false
	case string(class) == privateClass:
		o.class = pkcs11.CKO_PRIVATE_KEY
	case string(class) == publicClass:
		o.class, full = pkcs11.CKO_PUBLIC_KEY, publicIndexAttrs
	default:
		return indexObject{kind: objectForeign}, true
	}
	has := func(types []uint) bool {
		for _, t := range types {
			if _, ok := attrs[t]; !ok {
				return false
			}
		}
		return true
	}
	if !has(matchAttrs) {
		// No template of ours selects a key type we do not use.
		kt, ok := attrs[pkcs11.CKA_KEY_TYPE]
		if !ok {
			return indexObject{}, false
		}
		for _, spec := range algSpecs {
			if string(kt) == keyTypeValue(spec.keyType) {
				return indexObject{}, false
			}
		}
		return indexObject{kind: objectForeign}, true
	}
	o.key = indexKey{keyType: string(attrs[pkcs11.CKA_KEY_TYPE]), params: string(attrs[pkcs11.CKA_EC_PARAMS]), id: string(attrs[pkcs11.CKA_ID])}
	o.entry = indexed{h: h}
	if has(full) {
		o.entry.attrs = attrs
	}
	return o, true
}

// findEvery returns every object matching tmpl (nil: every object).
func (m *Module) findEvery(s *session, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	return findAll(m.p, s.h, tmpl, math.MaxInt)
}

// parallel calls fn(s, i) for every i in [0, n), spread over the sessions ss,
// one goroutine per session. It stops at the first error fn returns, or when
// ctx ends, and returns that error.
func parallel(ctx context.Context, ss []*session, n int, fn func(s *session, i int) error) error {
	var (
		next  atomic.Int64
		stop  atomic.Bool
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	fail := func(err error) {
		errMu.Lock()
		if first == nil {
			first = err
		}
		errMu.Unlock()
		stop.Store(true)
	}
	for _, s := range ss[:min(len(ss), n)] {
		wg.Go(func() {
			for !stop.Load() {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := ctx.Err(); err != nil {
					fail(err)
					return
				}
				if err := fn(s, i); err != nil {
					fail(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}
