package app

import (
	"github.com/custodysigner/appliance/internal/bitcoin"
	"github.com/custodysigner/appliance/internal/ethereum"
	"github.com/custodysigner/appliance/internal/screening"
)

// screeningNormalizers match list entries and destinations in one form:
// Ethereum addresses validated (EIP-55 where mixed case) and lower-cased;
// Bitcoin addresses checked on every network's prefixes (a list is not tied
// to one network) and normalised by the chain's own parser.
func screeningNormalizers() map[screening.Chain]screening.Normalizer {
	return map[screening.Chain]screening.Normalizer{
		screening.Ethereum: func(s string) (string, error) {
			a, err := ethereum.ParseAddress(s)
			if err != nil {
				// Lists carry some all-lower entries; ParseAddress accepts those.
				return "", err
			}
			return screening.NormalizeEthereum(a.Hex())
		},
		screening.Bitcoin: func(s string) (string, error) {
			var firstErr error
			for _, n := range []bitcoin.Network{bitcoin.Mainnet, bitcoin.Testnet, bitcoin.Regtest} {
				info, err := bitcoin.ParseAddress(s, n)
				if err == nil {
					return info.Normalized, nil
				}
				if firstErr == nil {
					firstErr = err
				}
			}
			return "", firstErr
		},
	}
}
