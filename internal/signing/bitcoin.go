package signing

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/screening"
	"github.com/custodysigner/appliance/internal/store"
)

func prepareBitcoin(key *Key, req Request, isOwn func([]byte) bool) (*prepared, error) {
	if req.Network != "" && !strings.EqualFold(req.Network, key.Network) {
		return nil, apierr.New(http.StatusUnprocessableEntity, apierr.CodeWrongNetwork,
			"key %q signs for bitcoin %s, the request names %s", key.ID, key.Network, req.Network)
	}
	bp, err := bitcoin.Prepare(req.Payload, bitcoin.Options{Network: bitcoin.Network(key.Network), PublicKey: key.PublicKey, IsOwnScript: isOwn,
		Verifier: verifiers.get(key.PublicKey)})
	if err != nil {
		return nil, bitcoinError(err)
	}
	intent, err := json.Marshal(bp.Intent)
	if err != nil {
		return nil, apierr.Internal(fmt.Errorf("encode intent: %w", err))
	}
	// The request's digest binds every input's sighash, in order.
	var all bytes.Buffer
	for _, d := range bp.Digests {
		all.Write(d.Hash[:])
	}
	digest := sha256.Sum256(all.Bytes())
	payload := []byte(strings.TrimSpace(req.Payload))
	p := &prepared{
		payload:     payload,
		payloadHash: requestHash([]byte(key.ID), []byte(key.Chain), []byte(key.Network), payload),
		intent:      intent,
		digest:      digest[:],
		signer:      &bitcoinSigner{p: bp},
		expect:      func(e Expect) error { return expectBitcoin(bp.Intent, e) },
	}
	p.policy = policy.Intent{Chain: policy.ChainBitcoin, Kind: policy.KindTransfer, FeeRate: bp.Intent.FeeRateSatVB, Fee: big.NewInt(bp.Intent.Fee)}
	for _, o := range bp.Intent.Outputs {
		if !o.Change && o.Amount > 0 {
			p.policy.Transfers = append(p.policy.Transfers, policy.Transfer{Asset: "BTC", To: o.Address, Amount: big.NewInt(o.Amount)})
		}
		if o.Address != "" {
			p.destinations = append(p.destinations, destination{chain: screening.Bitcoin, address: o.Address, role: fmt.Sprintf("output %d", o.Index)})
		}
	}
	return p, nil
}

// bitcoinError maps the decoder's refusals to the API's codes.
func bitcoinError(err error) error {
	code, status := apierr.CodeDecodeFailed, http.StatusUnprocessableEntity
	switch {
	case errors.Is(err, bitcoin.ErrUnsupported):
		code = apierr.CodeUnsupported
	case errors.Is(err, bitcoin.ErrWrongNetwork):
		code = apierr.CodeWrongNetwork
	case errors.Is(err, bitcoin.ErrAddressInvalid):
		code = apierr.CodeAddressInvalid
	case errors.Is(err, bitcoin.ErrSighash):
		code, status = apierr.CodePolicyDenied, http.StatusForbidden
	}
	return apierr.Wrap(err, status, code, "%v", err)
}

// expectBitcoin: the expected destination must be a non-change output
// paying exactly the expected amount (satoshi).
func expectBitcoin(in bitcoin.Intent, e Expect) error {
	if e.Asset != "" && !strings.EqualFold(e.Asset, "BTC") && !strings.EqualFold(e.Asset, "native") {
		return expectMismatch("asset", e.Asset, "BTC")
	}
	if e.Destination == "" && e.Amount == "" {
		return nil
	}
	for _, o := range in.Outputs {
		if o.Change || (e.Destination != "" && !sameAddress(o.Address, e.Destination)) {
			continue
		}
		if e.Amount == "" || e.Amount == strconv.FormatInt(o.Amount, 10) {
			return nil
		}
	}
	return policyDenied("the transaction does not match expect: no output pays %s sat to %s", e.Amount, e.Destination)
}

type bitcoinSigner struct {
	p *bitcoin.Prepared
}

// sign signs every input of ours in the HSM and lets the PSBT finisher
// assemble the answer. Finish verifies each signature against the pinned
// key (the one Prepare was given, through the key's verifier table when it
// has one) before it goes into the PSBT: that is the appliance's one check,
// as for Ethereum; btcd's script engine then judges the transaction,
// verifying again with independent code.
func (bs *bitcoinSigner) sign(ctx context.Context, h Signer, key *Key) (store.Completion, error) {
	sigs := make([][]byte, 0, len(bs.p.Digests))
	for _, d := range bs.p.Digests {
		sig, err := hsmSign(ctx, h, key, d.Hash[:])
		if err != nil {
			return store.Completion{}, err
		}
		sigs = append(sigs, sig)
	}
	psbt, rawHex, txid, err := bs.p.Finish(sigs)
	if errors.Is(err, bitcoin.ErrSignatureInvalid) {
		return store.Completion{}, apierr.Wrap(err, http.StatusServiceUnavailable, apierr.CodeHSMUnavailable, "the HSM's signature did not verify against the pinned key")
	}
	if err != nil {
		return store.Completion{}, apierr.Internal(fmt.Errorf("finish PSBT: %w", err))
	}
	raw, err := hex.DecodeString(rawHex)
	if err != nil {
		return store.Completion{}, apierr.Internal(err)
	}
	return store.Completion{SignedTx: raw, TxHash: txid, SignedPSBT: psbt}, nil
}
