package signing

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"net/http"
	"strings"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/screening"
	"github.com/custodysigner/appliance/internal/store"
)

// Expect is the optional intent check of a sign request: what the upstream
// system believes it asked for. A decoded transaction that does not match is
// refused, which defends against a compromised transaction builder.
type Expect struct {
	Destination string `json:"destination"`
	Amount      string `json:"amount"` // in the chain's base unit (wei, token units, satoshi), decimal
	Asset       string `json:"asset"`  // "ETH" / "BTC" (or empty) for the native coin, else the token contract
}

// destination is one address a transaction pays or authorises.
type destination struct {
	chain   screening.Chain
	address string
	role    string // "to", "token recipient", "output 1", …
}

// chainSigner signs a prepared request and assembles the answer.
type chainSigner interface {
	sign(ctx context.Context, h Signer, key *Key) (store.Completion, error)
}

// prepared is a decoded, checked request, ready to be recorded and signed.
type prepared struct {
	payload      []byte
	payloadHash  []byte
	intent       []byte
	digest       []byte
	destinations []destination
	// refuse is set once a check after decoding refused the request.
	refuse error
	// unpoliced is the chain's default refusal when no policy engine runs.
	unpoliced error
	// policy is what the key's policy rules judge.
	policy policy.Intent
	// pending is set when the rules send the request to officers.
	pending *store.Pending
	expect  func(Expect) error
	signer  chainSigner
}

// prepare decodes the payload for the key's chain and enforces its network.
// Errors here change nothing: nothing is recorded for undecodable input.
func (s *Service) prepare(key *Key, req Request) (*prepared, error) {
	switch key.Chain {
	case "ethereum":
		return prepareEthereum(key, req)
	case "bitcoin":
		return prepareBitcoin(key, req, s.keys.IsOwnScript)
	default:
		return nil, apierr.New(http.StatusUnprocessableEntity, apierr.CodeUnsupported, "chain %q is not supported", key.Chain)
	}
}

// requestHash binds everything that makes two requests the same request.
func requestHash(parts ...[]byte) []byte {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	return h.Sum(nil)
}

func policyDenied(format string, a ...any) error {
	return apierr.New(http.StatusForbidden, apierr.CodePolicyDenied, format, a...)
}

func expectMismatch(what, want, got string) error {
	return policyDenied("the transaction does not match expect: %s is %s, expected %s", what, got, want)
}

func sameAddress(a, b string) bool {
	return strings.EqualFold(strings.TrimSpace(a), strings.TrimSpace(b))
}

// screen checks every destination against the known-risk lists.
func (s *Service) screen(p *prepared) error {
	if s.screener == nil {
		return nil
	}
	for _, d := range p.destinations {
		hit, err := s.screener.Check(d.chain, d.address)
		if err != nil {
			// An address that cannot be screened is not a clean address.
			return apierr.Wrap(err, http.StatusUnprocessableEntity, apierr.CodeAddressInvalid, "%s %s cannot be screened: %v", d.role, d.address, err)
		}
		if hit != nil {
			return apierr.New(http.StatusForbidden, apierr.CodeAddressDenied,
				"%s %s is on the known-risk list %s (version %s)", d.role, d.address, hit.List, shortHash(hit.Version))
		}
	}
	return nil
}

func shortHash(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	return h
}
