package signing

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/store"
)

// Key is a registry key as the service sees it.
type Key struct {
	store.Key
	Ref hsm.KeyRef
}

// KeyChecker is the part of the HSM used to reconcile the registry.
type KeyChecker interface {
	PinKeys(ctx context.Context, keys []hsm.PinnedKey) []error
	SetPinnedKeys(keys []hsm.PinnedKey)
	KeyError(id []byte) error
}

// Keyring is the key registry, loaded from the store at start and
// reconciled with the token at every unseal: a key missing from the token,
// or whose public key differs from the pinned one, is refused service with
// the reason.
type Keyring struct {
	mu      sync.RWMutex
	keys    map[string]*Key
	refused map[string]error // reason found at the last reconciliation
	scripts map[string]bool  // P2WPKH scripts of the Bitcoin keys: change detection
	extra   []hsm.PinnedKey  // the appliance's own keys (the audit key), pinned alongside
}

// errNotReconciled refuses keys until the HSM has been opened and checked.
var errNotReconciled = fmt.Errorf("not yet checked against the token: %w", hsm.ErrUnavailable)

// LoadKeyring reads every registered key. Keys are refused until Reconcile.
func LoadKeyring(ctx context.Context, st interface {
	ListKeys(context.Context) ([]store.Key, error)
}) (*Keyring, error) {
	list, err := st.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("load key registry: %w", err)
	}
	kr := &Keyring{keys: make(map[string]*Key, len(list)), refused: map[string]error{}, scripts: map[string]bool{}}
	for _, k := range list {
		kr.keys[k.ID] = newKey(k)
		kr.refused[k.ID] = errNotReconciled
		kr.addScript(k)
	}
	return kr, nil
}

func (kr *Keyring) addScript(k store.Key) {
	if k.Chain != "bitcoin" {
		return
	}
	if script, err := bitcoin.P2WPKHScript(k.PublicKey); err == nil {
		kr.scripts[string(script)] = true
	}
}

// IsOwnScript reports whether script pays one of the appliance's keys.
func (kr *Keyring) IsOwnScript(script []byte) bool {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return kr.scripts[string(script)]
}

func newKey(k store.Key) *Key {
	return &Key{Key: k, Ref: hsm.KeyRef{ID: k.CKAID, Algorithm: hsm.Algorithm(k.Algorithm), WrappedBackup: k.WrappedBackup}}
}

// Reconcile checks every key against the token, once and all together (one
// pass over the token, not a search per key), and pins them with the extra
// keys so that the HSM re-checks them after every reconnect. A key that fails
// is refused service here and by the HSM's Sign.
//
// It returns the keys refused, by id, with the reason.
func (kr *Keyring) Reconcile(ctx context.Context, h KeyChecker, log *zap.Logger, extra ...hsm.PinnedKey) map[string]error {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	kr.extra = extra
	ids := make([]string, 0, len(kr.keys))
	for id := range kr.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	pins := append(make([]hsm.PinnedKey, 0, len(ids)+len(extra)), extra...)
	for _, id := range ids {
		pins = append(pins, hsm.PinnedKey{Ref: kr.keys[id].Ref, PublicKey: kr.keys[id].PublicKey})
	}
	results := h.PinKeys(ctx, pins)
	for i, k := range extra {
		if results[i] != nil {
			log.Error("pinned key failed its check", zap.String("key_id", hex.EncodeToString(k.Ref.ID)), zap.Error(results[i]))
		}
	}
	for i, id := range ids {
		if err := results[len(extra)+i]; err != nil {
			kr.refused[id] = err
			log.Error("key refused service: it does not reconcile with the token",
				zap.String("key_id", id), zap.String("label", kr.keys[id].Label), zap.Error(err))
			continue
		}
		delete(kr.refused, id)
	}
	log.Info("key registry reconciled", zap.Int("keys", len(kr.keys)), zap.Int("refused", len(kr.refused)))
	out := make(map[string]error, len(kr.refused))
	for id, err := range kr.refused {
		out[id] = err
	}
	return out
}

// Add registers a key that was just generated and checked (a quorum's
// create_key), pinning it on h.
func (kr *Keyring) Add(k store.Key, h KeyChecker) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	key := newKey(k)
	kr.keys[k.ID] = key
	delete(kr.refused, k.ID)
	kr.addScript(k)
	// Every key is pinned, as Reconcile pins them: those refused stay
	// refused by the HSM's Sign too.
	pins := append(make([]hsm.PinnedKey, 0, len(kr.keys)+len(kr.extra)), kr.extra...)
	for _, key := range kr.keys {
		pins = append(pins, hsm.PinnedKey{Ref: key.Ref, PublicKey: key.PublicKey})
	}
	h.SetPinnedKeys(pins)
}

// Get returns the key or a not_found API error.
func (kr *Keyring) Get(id string) (*Key, error) {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	k, ok := kr.keys[id]
	if !ok {
		return nil, apierr.New(http.StatusNotFound, apierr.CodeNotFound, "no key %q", id)
	}
	return k, nil
}

// Usable says why a key cannot sign now, or nil: it failed its last
// reconciliation, or the HSM's own re-check after a reconnect.
func (kr *Keyring) Usable(k *Key, h interface{ KeyError([]byte) error }) error {
	err := kr.Refused(k.ID)
	if err == nil {
		err = h.KeyError(k.CKAID)
	}
	if err != nil {
		return apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable,
			"key %q is refused service: %s", k.ID, RefusalText(err))
	}
	return nil
}

// Refused returns the reconciliation failure of key id, or nil.
func (kr *Keyring) Refused(id string) error {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return kr.refused[id]
}

// List returns every key, ordered by id.
func (kr *Keyring) List() []*Key {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	out := make([]*Key, 0, len(kr.keys))
	for _, k := range kr.keys {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// RefusalText is a safe, stable description of a reconciliation failure,
// for answers and /v1/status.
func RefusalText(err error) string {
	switch {
	case errors.Is(err, hsm.ErrKeyNotFound):
		return "missing from the HSM token"
	case errors.Is(err, hsm.ErrKeyMismatch):
		return "its public key on the token differs from the pinned one"
	case errors.Is(err, hsm.ErrKeyUnsafe):
		return "its attributes on the token are not sensitive and non-extractable"
	case errors.Is(err, hsm.ErrUnavailable):
		return "the HSM is unavailable"
	default:
		return "it failed its check against the token"
	}
}
