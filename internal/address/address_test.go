package address

import (
	"errors"
	"testing"

	"github.com/custodysigner/appliance/internal/screening"
)

type listOf map[string]bool

func (l listOf) Check(_ screening.Chain, addr string) (*screening.Hit, error) {
	if l[addr] {
		return &screening.Hit{List: "test", Version: "v1", Address: addr}, nil
	}
	return nil, nil
}

func TestValidate(t *testing.T) {
	risky := listOf{"0x8589427373D6D84E98730D7795D8f6f8731FDA16": true, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080": true}
	cases := []struct {
		chain, network, addr string
		valid                bool
		normalized, typ      string
		risk                 bool
	}{
		{"ethereum", "1", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", true, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "account", false},
		{"ethereum", "1", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed", true, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "account", false},
		{"ethereum", "1", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", false, "", "", false}, // bad EIP-55 checksum
		{"ethereum", "1", "0x8589427373d6d84e98730d7795d8f6f8731fda16", true, "0x8589427373D6D84E98730D7795D8f6f8731FDA16", "account", true},
		{"bitcoin", "mainnet", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", true, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "p2wpkh", false},
		{"bitcoin", "regtest", "BCRT1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KYGT080", true, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "p2wpkh", true},
		{"bitcoin", "mainnet", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", false, "", "", false}, // wrong network
		{"bitcoin", "mainnet", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", true, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "p2pkh", false},
		{"bitcoin", "mainnet", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3", false, "", "", false}, // bad checksum
	}
	for _, tc := range cases {
		r, err := Validate(tc.chain, tc.network, tc.addr, risky)
		if err != nil {
			t.Fatalf("%s: %v", tc.addr, err)
		}
		if r.Valid != tc.valid || r.Normalized != tc.normalized || r.Type != tc.typ || (r.KnownRisk != nil) != tc.risk {
			t.Errorf("%s on %s: got %+v", tc.addr, tc.network, r)
		}
		if !r.Valid && r.Reason == "" {
			t.Errorf("%s: refused without a reason", tc.addr)
		}
	}
	if _, err := Validate("dogecoin", "", "x", nil); !errors.Is(err, ErrUnknownChain) {
		t.Fatal("unknown chain accepted")
	}
	if _, err := Validate("bitcoin", "moonnet", "x", nil); err == nil {
		t.Fatal("unknown bitcoin network accepted")
	}
}
