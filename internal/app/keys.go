package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/ethereum"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

// KeySpec describes a key to create.
type KeySpec struct {
	ID        string
	Label     string
	Algorithm hsm.Algorithm
	Chain     string
	Network   string
	IfMissing bool // an existing key with this id is not an error
	// WrappedBackup makes the private key backup-able: extractable only
	// wrapped under the token's trusted backup key, never in the clear.
	// Not for Ed25519 (SoftHSM cannot wrap EdDSA keys).
	WrappedBackup bool
}

var keyIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func (s *KeySpec) check() error {
	if !keyIDPattern.MatchString(s.ID) {
		return fmt.Errorf("key id %q: use 1-63 of a-z 0-9 . _ -, starting with a letter or digit", s.ID)
	}
	if s.Label == "" {
		s.Label = s.ID
	}
	switch s.Chain {
	case "ethereum":
		if s.Algorithm == "" {
			s.Algorithm = hsm.Secp256k1
		}
		if s.Algorithm != hsm.Secp256k1 {
			return fmt.Errorf("ethereum keys are secp256k1, not %s", s.Algorithm)
		}
		id, err := signing.ParseEthereumNetwork(s.Network)
		if err != nil {
			return fmt.Errorf("ethereum network %q: %w", s.Network, err)
		}
		s.Network = id.String()
	case "bitcoin":
		if s.Algorithm == "" {
			s.Algorithm = hsm.Secp256k1
		}
		if s.Algorithm != hsm.Secp256k1 {
			return fmt.Errorf("bitcoin keys are secp256k1, not %s", s.Algorithm)
		}
		s.Network = strings.ToLower(s.Network)
		if _, err := bitcoin.Params(bitcoin.Network(s.Network)); err != nil {
			return fmt.Errorf("bitcoin network %q: %w", s.Network, err)
		}
	case "":
		if s.Algorithm != hsm.Secp256k1 && s.Algorithm != hsm.P256 && s.Algorithm != hsm.Ed25519 {
			return fmt.Errorf("algorithm %q is not secp256k1, p256 or ed25519", s.Algorithm)
		}
	default:
		return fmt.Errorf("chain %q is not supported yet", s.Chain)
	}
	return nil
}

// CreateKey generates a key inside the HSM and registers it with its pinned
// public key and address: the local path for init and dev (a running
// appliance creates keys by quorum proposal). The HSM is opened with the PIN
// reconstructed from shareFiles, or with the URI's pin-source when none are
// given (auto-unseal deployments).
func CreateKey(ctx context.Context, cfg *config.Config, log *zap.Logger, spec KeySpec, shareFiles []string) (store.Key, error) {
	if err := spec.check(); err != nil {
		return store.Key{}, err
	}
	lk, err := lockOffline(cfg.Store.Path, "keys create")
	if err != nil {
		return store.Key{}, err
	}
	defer lk.release()
	st, err := store.Open(ctx, cfg.Store.Path, log.Named("store"))
	if err != nil {
		return store.Key{}, err
	}
	defer st.Close()
	if existing, err := st.GetKey(ctx, spec.ID); err == nil {
		if spec.IfMissing {
			return existing, nil
		}
		return store.Key{}, fmt.Errorf("key %q already exists: %w", spec.ID, store.ErrConflict)
	} else if !errors.Is(err, store.ErrNotFound) {
		return store.Key{}, err
	}
	var pin []byte
	if len(shareFiles) > 0 {
		if pin, err = PINFromShares(ctx, st, shareFiles); err != nil {
			return store.Key{}, err
		}
		defer clear(pin)
	}
	m, err := OpenHSM(ctx, cfg, log, pin)
	if err != nil {
		return store.Key{}, err
	}
	defer m.Close()
	k, err := generateKey(ctx, m, spec)
	if err != nil {
		return store.Key{}, err
	}
	if err := st.InsertKey(ctx, k); err != nil {
		return store.Key{}, fmt.Errorf("register key (it exists on the token as CKA_ID %x, unregistered): %w", k.CKAID, err)
	}
	log.Info("key created", zap.String("key_id", k.ID), zap.String("algorithm", k.Algorithm),
		zap.String("chain", k.Chain), zap.String("network", k.Network), zap.String("address", k.Address))
	return st.GetKey(ctx, k.ID)
}

// generateKey checks spec, generates the key in the token and returns its
// registry record (not yet stored).
func generateKey(ctx context.Context, m *hsm.Module, spec KeySpec) (store.Key, error) {
	if err := spec.check(); err != nil {
		return store.Key{}, err
	}
	g, err := m.GenerateKeyWith(ctx, spec.Algorithm, spec.Label, hsm.KeyOptions{WrappedBackup: spec.WrappedBackup})
	if err != nil {
		return store.Key{}, fmt.Errorf("generate %s key: %w", spec.Algorithm, err)
	}
	k := store.Key{ID: spec.ID, Label: spec.Label, CKAID: g.ID, Algorithm: string(g.Algorithm),
		Chain: spec.Chain, Network: spec.Network, PublicKey: g.PublicKey, WrappedBackup: spec.WrappedBackup}
	switch spec.Chain {
	case "ethereum":
		addr, err := ethereum.AddressFromPublicKey(g.PublicKey)
		if err != nil {
			return store.Key{}, err
		}
		k.Address = addr.Hex()
	case "bitcoin":
		addr, err := bitcoin.P2WPKHAddress(g.PublicKey, bitcoin.Network(spec.Network))
		if err != nil {
			return store.Key{}, err
		}
		k.Address = addr
	}
	return k, nil
}

// ListKeys returns the registry.
func ListKeys(ctx context.Context, cfg *config.Config, log *zap.Logger) ([]store.Key, error) {
	st, err := store.Open(ctx, cfg.Store.Path, log.Named("store"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return st.ListKeys(ctx)
}

// Init prepares a fresh appliance: the token (when it does not exist yet and
// an SO PIN is given) and the database. Running it again changes nothing.
func Init(ctx context.Context, cfg *config.Config, log *zap.Logger, soPIN []byte) error {
	if cfg.HSM.SoftHSM2Conf != "" {
		if err := os.Setenv("SOFTHSM2_CONF", cfg.HSM.SoftHSM2Conf); err != nil {
			return err
		}
	}
	uri, err := hsm.ParseURI(cfg.HSM.URI)
	if err != nil {
		return fmt.Errorf("hsm.uri: %w", err)
	}
	if len(soPIN) > 0 {
		pin, err := uri.ReadPIN()
		if err != nil {
			return err
		}
		err = hsm.InitToken(uri.ModulePath, uri.Token, soPIN, pin)
		clear(pin)
		switch {
		case err == nil:
			log.Info("token initialised", zap.String("token", uri.Token))
		case errors.Is(err, hsm.ErrTokenExists):
			log.Info("token already initialised", zap.String("token", uri.Token))
		default:
			return fmt.Errorf("initialise token %q: %w", uri.Token, err)
		}
	}
	st, err := store.Open(ctx, cfg.Store.Path, log.Named("store"))
	if err != nil {
		return err
	}
	defer st.Close()
	v, err := st.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	m, err := OpenHSM(ctx, cfg, log, nil)
	if err != nil {
		return err
	}
	defer m.Close()
	log.Info("appliance initialised", zap.String("store", cfg.Store.Path), zap.Int("schema_version", v), zap.String("token", uri.Token))
	return nil
}
