package signing

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/ethereum"
	"github.com/custodysigner/appliance/internal/secp"
)

// prepared is a decoded, checked request, ready to be recorded and signed.
type prepared struct {
	payload     []byte
	payloadHash []byte
	intent      []byte
	digest      []byte
	tx          *ethereum.Tx
}

// prepare decodes the payload for the key's chain and enforces its network.
func prepare(key *Key, req Request) (*prepared, error) {
	switch key.Chain {
	case "ethereum":
		return prepareEthereum(key, req)
	default:
		return nil, apierr.New(http.StatusUnprocessableEntity, apierr.CodeUnsupported, "chain %q is not supported", key.Chain)
	}
}

func prepareEthereum(key *Key, req Request) (*prepared, error) {
	if req.Network != "" {
		id, err := ParseEthereumNetwork(req.Network)
		if err != nil {
			return nil, apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeWrongNetwork, "network %q: %v", req.Network, err)
		}
		if id.String() != key.Network {
			return nil, apierr.New(http.StatusUnprocessableEntity, apierr.CodeWrongNetwork,
				"key %q signs for chain id %s, the request names %s", key.ID, key.Network, id)
		}
	}
	raw, err := hex.DecodeString(strings.TrimPrefix(req.Payload, "0x"))
	if err != nil {
		return nil, apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeDecodeFailed, "payload is not hex")
	}
	tx, err := ethereum.DecodeUnsigned(raw)
	switch {
	case errors.Is(err, ethereum.ErrUnsupported):
		return nil, apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeUnsupported, "%v", err)
	case err != nil:
		return nil, apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeDecodeFailed, "%v", err)
	}
	if tx.ChainID == nil || tx.ChainID.String() != key.Network {
		return nil, apierr.New(http.StatusUnprocessableEntity, apierr.CodeWrongNetwork,
			"transaction chain id %v does not match key %q (chain id %s)", tx.ChainID, key.ID, key.Network)
	}
	intent, err := json.Marshal(tx.Intent())
	if err != nil {
		return nil, apierr.Internal(fmt.Errorf("encode intent: %w", err))
	}
	digest := tx.SigningHash()
	return &prepared{
		payload:     raw,
		payloadHash: requestHash(key.ID, key.Chain, key.Network, raw),
		intent:      intent,
		digest:      digest[:],
		tx:          tx,
	}, nil
}

// requestHash binds everything that makes two requests the same request.
func requestHash(parts ...any) []byte {
	h := sha256.New()
	for _, p := range parts {
		var b []byte
		switch v := p.(type) {
		case string:
			b = []byte(v)
		case []byte:
			b = v
		}
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	return h.Sum(nil)
}

// sign asks the HSM, checks the signature against the pinned key (which also
// yields the recovery parity) and assembles the signed transaction.
func (p *prepared) sign(ctx context.Context, h Signer, key *Key) ([]byte, string, error) {
	sig, err := h.Sign(ctx, key.Ref, p.digest)
	if err != nil {
		if errors.Is(err, hsm.ErrUnavailable) {
			return nil, "", apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable, "the HSM is unavailable; retry with the same idempotency key")
		}
		return nil, "", apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable, "the HSM could not sign")
	}
	parity, err := secp.VerifyAndParity(key.PublicKey, p.digest, sig)
	if err != nil {
		// The HSM answered with something that is not a signature by the
		// pinned key: never release it.
		return nil, "", apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable, "the HSM's signature did not verify against the pinned key")
	}
	var es ethereum.Signature
	copy(es.R[:], sig[:32])
	copy(es.S[:], sig[32:])
	es.YParity = parity
	raw, hash, err := p.tx.Signed(es)
	if err != nil {
		return nil, "", apierr.Internal(fmt.Errorf("assemble signed transaction: %w", err))
	}
	return raw, "0x" + hex.EncodeToString(hash[:]), nil
}

func (p *prepared) formatTx(raw []byte) string { return "0x" + hex.EncodeToString(raw) }

// ethereumNetworks are the names accepted besides a decimal chain id.
var ethereumNetworks = map[string]int64{
	"mainnet": 1, "sepolia": 11155111, "holesky": 17000, "hoodi": 560048, "dev": 1337,
}

// ParseEthereumNetwork accepts a decimal chain id or a well-known network name.
func ParseEthereumNetwork(s string) (*big.Int, error) {
	if id, ok := ethereumNetworks[strings.ToLower(s)]; ok {
		return big.NewInt(id), nil
	}
	id, ok := new(big.Int).SetString(s, 10)
	if !ok || id.Sign() <= 0 || id.BitLen() > 64 {
		return nil, fmt.Errorf("not a chain id or a known network name")
	}
	return id, nil
}
