package signing

import (
	"context"
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
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/screening"
	"github.com/custodysigner/appliance/internal/store"
)

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
	// A recognised ERC-20 selector with malformed arguments is refused: old
	// tokens ignore what we would reject, so it could move tokens unseen.
	if _, err := tx.TokenCall(); err != nil {
		return nil, apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeDecodeFailed, "%v", err)
	}
	in := tx.Intent()
	intent, err := json.Marshal(in)
	if err != nil {
		return nil, apierr.Internal(fmt.Errorf("encode intent: %w", err))
	}
	digest := tx.SigningHash()
	p := &prepared{
		payload:     raw,
		payloadHash: requestHash([]byte(key.ID), []byte(key.Chain), []byte(key.Network), raw),
		intent:      intent,
		digest:      digest[:],
		signer:      &ethereumSigner{tx: tx, digest: digest[:]},
		expect:      func(e Expect) error { return expectEthereum(in, e) },
	}
	for i, a := range tx.Destinations() {
		role := "to"
		if i > 0 {
			role = "address inside the token call"
		}
		p.destinations = append(p.destinations, destination{chain: screening.Ethereum, address: a.Hex(), role: role})
	}
	p.policy = ethereumPolicyIntent(tx, in)
	// The policy engine decides contract calls (refused unless its rules
	// allow the contract and selector) and contract creation (refused);
	// without an engine, the same defaults apply here.
	switch in.Kind {
	case ethereum.KindContractCreation:
		p.unpoliced = policyDenied("contract creation is not signed by default")
	case ethereum.KindContractCall:
		p.unpoliced = policyDenied("calls to contract %s (selector %s) are not allowed by policy", in.To, in.Selector)
	}
	return p, nil
}

// ethereumPolicyIntent is what the policy rules judge: every value movement
// (native value; the token amount of an ERC-20 call, approvals included, to
// its recipient or spender), the contract and selector of other calls, and
// the fee caps (a legacy or access-list transaction's gas price for both).
func ethereumPolicyIntent(tx *ethereum.Tx, in ethereum.Intent) policy.Intent {
	pi := policy.Intent{Chain: policy.ChainEthereum, Kind: in.Kind, MaxFeePerGas: tx.MaxFeePerGas, MaxPriorityFeePerGas: tx.MaxPriorityFeePerGas}
	if tx.GasPrice != nil {
		pi.MaxFeePerGas, pi.MaxPriorityFeePerGas = tx.GasPrice, tx.GasPrice
	}
	if tx.Value != nil && tx.Value.Sign() > 0 {
		pi.Transfers = append(pi.Transfers, policy.Transfer{Asset: "ETH", To: in.To, Amount: tx.Value})
	}
	if in.Token != nil {
		amount, _ := new(big.Int).SetString(in.Token.Amount, 10)
		pi.Transfers = append(pi.Transfers, policy.Transfer{Asset: in.Token.Contract, To: in.Token.To, Amount: amount})
	}
	if in.Kind == ethereum.KindContractCall {
		pi.Contract, pi.Selector = in.To, in.Selector
	}
	return pi
}

// expectEthereum compares the upstream's expectation with the intent.
func expectEthereum(in ethereum.Intent, e Expect) error {
	dest, amount, asset := in.To, in.Value, "ETH"
	if in.Token != nil {
		dest, amount, asset = in.Token.To, in.Token.Amount, in.Token.Contract
	}
	if e.Asset != "" && !sameAddress(e.Asset, asset) && !(asset == "ETH" && strings.EqualFold(e.Asset, "native")) {
		return expectMismatch("asset", e.Asset, asset)
	}
	if e.Destination != "" && !sameAddress(e.Destination, dest) {
		return expectMismatch("destination", e.Destination, dest)
	}
	if e.Amount != "" {
		want, ok := new(big.Int).SetString(e.Amount, 10)
		got, _ := new(big.Int).SetString(amount, 10)
		if !ok || got == nil || want.Cmp(got) != 0 {
			return expectMismatch("amount", e.Amount, amount)
		}
	}
	return nil
}

type ethereumSigner struct {
	tx     *ethereum.Tx
	digest []byte
}

// sign asks the HSM, checks the signature against the pinned key (which also
// yields the recovery parity) and assembles the signed transaction.
func (es *ethereumSigner) sign(ctx context.Context, h Signer, key *Key) (store.Completion, error) {
	sig, err := hsmSign(ctx, h, key, es.digest)
	if err != nil {
		return store.Completion{}, err
	}
	parity, err := verifyAndParity(key.PublicKey, es.digest, sig)
	if err != nil {
		// The HSM answered with something that is not a signature by the
		// pinned key: never release it.
		return store.Completion{}, apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable, "the HSM's signature did not verify against the pinned key")
	}
	var s ethereum.Signature
	copy(s.R[:], sig[:32])
	copy(s.S[:], sig[32:])
	s.YParity = parity
	raw, hash, err := es.tx.Signed(s)
	if err != nil {
		return store.Completion{}, apierr.Internal(fmt.Errorf("assemble signed transaction: %w", err))
	}
	return store.Completion{SignedTx: raw, TxHash: "0x" + hex.EncodeToString(hash[:])}, nil
}

// hsmSign maps HSM failures to the API's answer.
func hsmSign(ctx context.Context, h Signer, key *Key, digest []byte) ([]byte, error) {
	sig, err := h.Sign(ctx, key.Ref, digest)
	if err == nil {
		return sig, nil
	}
	if errors.Is(err, hsm.ErrUnavailable) {
		return nil, apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable, "the HSM is unavailable; retry with the same idempotency key")
	}
	return nil, apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable, "the HSM could not sign")
}

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
