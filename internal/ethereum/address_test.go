package ethereum

import (
	"errors"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"
)

func TestEIP55Vectors(t *testing.T) {
	var v struct {
		Valid   []string `json:"valid_checksummed"`
		Invalid []struct {
			Address string `json:"address"`
		} `json:"invalid_checksum"`
	}
	loadVectors(t, "eip55.json", &v)
	if len(v.Valid) != 8 || len(v.Invalid) != 8 {
		t.Fatalf("vector file changed: %d valid, %d invalid", len(v.Valid), len(v.Invalid))
	}
	for _, s := range v.Valid {
		a, err := ParseAddress(s)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		// Every ERC-55 test case is its own checksummed form, including
		// the all-caps and all-lower ones.
		if a.Hex() != s {
			t.Errorf("Hex() = %s, want %s", a.Hex(), s)
		}
	}
	for _, c := range v.Invalid {
		if _, err := ParseAddress(c.Address); !errors.Is(err, ErrAddressInvalid) {
			t.Errorf("%s: got %v, want ErrAddressInvalid", c.Address, err)
		}
	}
}

func TestParseAddressForms(t *testing.T) {
	const good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
	tests := []struct {
		in string
		ok bool
	}{
		{good, true},
		{strings.ToLower(good), true},
		{"0x" + strings.ToUpper(good[2:]), true},
		{"0x0000000000000000000000000000000000000000", true},
		{"", false},
		{"0x", false},
		{good[2:], false},        // no prefix
		{"0X" + good[2:], false}, // upper-case prefix
		{good[:41], false},       // 39 digits
		{good + "0", false},      // 41 digits
		{"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg", false}, // non-hex
		{" " + good[1:], false},
		{"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", false}, // checksum
	}
	for _, tt := range tests {
		_, err := ParseAddress(tt.in)
		if tt.ok && err != nil {
			t.Errorf("%q: %v", tt.in, err)
		}
		if !tt.ok && !errors.Is(err, ErrAddressInvalid) {
			t.Errorf("%q: got %v, want ErrAddressInvalid", tt.in, err)
		}
	}
}

func TestAddressFromPublicKeyMatchesGeth(t *testing.T) {
	for i := 0; i < 50; i++ {
		key, err := crypto.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		pub := crypto.FromECDSAPub(&key.PublicKey)
		got, err := AddressFromPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		want := crypto.PubkeyToAddress(key.PublicKey)
		if got != Address(want) || got.Hex() != want.Hex() {
			t.Fatalf("address %s, go-ethereum %s", got.Hex(), want.Hex())
		}
	}
	key, _ := crypto.GenerateKey()
	pub := crypto.FromECDSAPub(&key.PublicKey)
	bad := append([]byte{}, pub...)
	bad[64] ^= 1
	for name, in := range map[string][]byte{
		"empty": nil, "64 bytes": pub[1:], "compressed": crypto.CompressPubkey(&key.PublicKey),
		"off curve": bad, "wrong prefix": append([]byte{0x06}, pub[1:]...),
	} {
		if _, err := AddressFromPublicKey(in); !errors.Is(err, ErrPublicKeyInvalid) {
			t.Errorf("%s: got %v, want ErrPublicKeyInvalid", name, err)
		}
	}
}

// FuzzParseAddress checks that parsing never panics, that what parses
// round-trips through Hex, and that go-ethereum agrees on the checksum.
func FuzzParseAddress(f *testing.F) {
	f.Add("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
	f.Add("0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
	f.Add("0xde709f2102306220921060314715629080e2fb77")
	f.Add("0x52908400098527886E0F7030069857D2E4169EE7")
	f.Add("0x")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			if !errors.Is(err, ErrAddressInvalid) {
				t.Fatalf("error does not wrap ErrAddressInvalid: %v", err)
			}
			return
		}
		if !strings.EqualFold(a.Hex(), s) {
			t.Fatalf("Hex() %s does not match input %s", a.Hex(), s)
		}
		if b, err := ParseAddress(a.Hex()); err != nil || b != a {
			t.Fatalf("checksummed form does not reparse: %v", err)
		}
		if common.HexToAddress(s) != common.Address(a) {
			t.Fatalf("go-ethereum reads %s differently", s)
		}
		// go-ethereum's mixed-case checksum check: if the input is mixed
		// case, it must be exactly go-ethereum's checksummed form.
		if s != strings.ToLower(s) && s[2:] != strings.ToUpper(s[2:]) && s != common.Address(a).Hex() {
			t.Fatalf("accepted %s; go-ethereum checksums it as %s", s, common.Address(a).Hex())
		}
	})
}
