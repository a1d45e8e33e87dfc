// Package address validates a destination address as text, for any chain
// the appliance signs for: format, checksum, the network's prefixes, and the
// known-risk lists. It backs POST /v1/addresses/validate and every place an
// address enters as text.
package address

import (
	"errors"
	"fmt"
	"strings"

	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/ethereum"
	"github.com/custodysigner/appliance/internal/screening"
)

// ErrUnknownChain is returned for a chain the appliance does not know.
var ErrUnknownChain = errors.New("unknown chain")

// Result is the answer of Validate.
type Result struct {
	Valid      bool       `json:"valid"`
	Normalized string     `json:"normalized,omitempty"`
	Type       string     `json:"type,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	KnownRisk  *KnownRisk `json:"known_risk"`
}

// KnownRisk names the list an address is on.
type KnownRisk struct {
	List    string `json:"list"`
	Version string `json:"version"`
}

// Screener is the known-risk lookup.
type Screener interface {
	Check(chain screening.Chain, addr string) (*screening.Hit, error)
}

// Validate checks addr for chain and network. An invalid address is a
// result with Valid false and the reason, not an error; errors are for
// requests that cannot be answered (unknown chain).
func Validate(chain, network, addr string, sc Screener) (Result, error) {
	var r Result
	var sch screening.Chain
	switch strings.ToLower(chain) {
	case "ethereum":
		sch = screening.Ethereum
		a, err := ethereum.ParseAddress(strings.TrimSpace(addr))
		if err != nil {
			r.Reason = reason(err)
			return r, nil
		}
		r.Valid, r.Normalized, r.Type = true, a.Hex(), "account"
	case "bitcoin":
		sch = screening.Bitcoin
		info, err := bitcoin.ParseAddress(strings.TrimSpace(addr), bitcoin.Network(strings.ToLower(network)))
		if errors.Is(err, bitcoin.ErrUnknownNetwork) {
			return r, fmt.Errorf("bitcoin network %q: %w", network, err)
		}
		if err != nil {
			r.Reason = reason(err)
			return r, nil
		}
		r.Valid, r.Normalized, r.Type = true, info.Normalized, info.Type
	default:
		return r, fmt.Errorf("%w %q (ethereum, bitcoin)", ErrUnknownChain, chain)
	}
	if sc != nil {
		if hit, err := sc.Check(sch, r.Normalized); err == nil && hit != nil {
			r.KnownRisk = &KnownRisk{List: hit.List, Version: hit.Version}
		}
	}
	return r, nil
}

// reason strips the sentinel prefixes, leaving the specific cause.
func reason(err error) string {
	msg := err.Error()
	for _, p := range []string{"invalid Ethereum address: ", "invalid bitcoin address: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return msg
}
