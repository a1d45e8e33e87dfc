package address

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/screening"
)

// fuzzScreener loads the shipped known-risk lists (firmware-config/known-risk)
// with the screening package's default normalisers, as the appliance does.
func fuzzScreener(tb testing.TB) *screening.Screener {
	tb.Helper()
	dir := filepath.Join("..", "..", "firmware-config", "known-risk")
	sc, err := screening.New([]screening.ListSource{
		{Name: "ofac-eth", Chain: screening.Ethereum, Path: filepath.Join(dir, "sanctioned_addresses_ETH.txt")},
		{Name: "ofac-xbt", Chain: screening.Bitcoin, Path: filepath.Join(dir, "sanctioned_addresses_XBT.txt")},
	}, screening.DefaultNormalizers(), zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	return sc
}

// caseVariants are other spellings of addr that name the same address
// when they are accepted: all lower case and all upper case (for Ethereum
// the hex digits only; for Bech32 the whole string).
func caseVariants(chain, addr string) []string {
	a := strings.TrimSpace(addr)
	if strings.EqualFold(chain, "ethereum") && len(a) > 2 {
		return []string{a[:2] + strings.ToLower(a[2:]), a[:2] + strings.ToUpper(a[2:])}
	}
	return []string{strings.ToLower(a), strings.ToUpper(a)}
}

// FuzzValidate: POST /v1/addresses/validate's function and every place an
// address enters as text. Refusals are answers (Valid false with a reason)
// except for an unknown chain or Bitcoin network; an accepted address's
// normal form is a fixed point; the known-risk screen can read every
// accepted address (the screening normaliser accepts the input and the
// normal form and maps both to the same key); and the screen cannot be
// evaded by spelling: every accepted case variant of a listed address is
// reported on the same list.
func FuzzValidate(f *testing.F) {
	sc := fuzzScreener(f)
	for _, s := range [][3]string{
		{"ethereum", "1", "0x01e2919679362dFBC9ee1644Ba9C6da6D6245BB1"}, // listed
		{"ethereum", "", "0x01E2919679362DFBC9EE1644BA9C6DA6D6245BB1"},
		{"ethereum", "", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"},
		{"ETHEREUM", "", " 0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359\n"},
		{"bitcoin", "mainnet", "123WBUDmSJv4GctdVEz6Qq6z8nXSKrJ4KX"}, // listed
		{"bitcoin", "mainnet", "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4"},
		{"bitcoin", "testnet", "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7"},
		{"bitcoin", "regtest", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"},
		{"bitcoin", "Mainnet", "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"},
		{"bitcoin", "moonnet", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"},
		{"dogecoin", "", "D8vFz4p1L37jdg47HXKtSHA5uYLYxbGgPD"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, chain, network, addr string) {
		r, err := Validate(chain, network, addr, sc)
		if err != nil {
			known := strings.EqualFold(chain, "ethereum") || strings.EqualFold(chain, "bitcoin")
			if known == errors.Is(err, ErrUnknownChain) || (!known && !reflect.DeepEqual(r, Result{})) {
				t.Fatalf("%s %s %q: %v", chain, network, addr, err)
			}
			return
		}
		if !r.Valid {
			if r.Reason == "" || r.Normalized != "" || r.Type != "" || r.KnownRisk != nil {
				t.Fatalf("refusal %+v", r)
			}
			return
		}
		if r.Normalized == "" || r.Type == "" || r.Reason != "" {
			t.Fatalf("acceptance %+v", r)
		}
		again, err := Validate(chain, network, r.Normalized, sc)
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("normal form %q validates as %+v (%v), not %+v", r.Normalized, again, err, r)
		}
		norm := screening.NormalizeBitcoin
		if strings.EqualFold(chain, "ethereum") {
			norm = screening.NormalizeEthereum
		}
		k1, err1 := norm(strings.TrimSpace(addr))
		k2, err2 := norm(r.Normalized)
		if err1 != nil || err2 != nil || k1 != k2 {
			t.Fatalf("the screen reads %q as %q (%v) and its normal form %q as %q (%v)", addr, k1, err1, r.Normalized, k2, err2)
		}
		for _, v := range caseVariants(chain, addr) {
			rv, err := Validate(chain, network, v, sc)
			if err == nil && rv.Valid && rv.Normalized == r.Normalized && !reflect.DeepEqual(rv.KnownRisk, r.KnownRisk) {
				t.Fatalf("%q is screened as %+v but its spelling %q as %+v", addr, r.KnownRisk, v, rv.KnownRisk)
			}
		}
	})
}
