package bitcoin

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/btcsuite/btcd/btcutil/base58"
)

var allNetworks = []Network{Mainnet, Testnet, Testnet4, Signet, Regtest}

type bech32Vectors struct {
	SegwitBIP350 struct {
		Valid []struct {
			Address      string `json:"address"`
			ScriptPubKey string `json:"scriptPubKey"`
			Network      string `json:"network"`
		} `json:"valid"`
		Invalid []struct {
			Address string `json:"address"`
			Reason  string `json:"reason"`
		} `json:"invalid"`
	} `json:"segwit_bip350"`
	SegwitBIP173 struct {
		Valid []struct {
			Address          string `json:"address"`
			ScriptPubKey     string `json:"scriptPubKey"`
			ValidUnderBIP350 bool   `json:"valid_under_bip350"`
		} `json:"valid"`
		Invalid []struct {
			Address string `json:"address"`
			Reason  string `json:"reason"`
		} `json:"invalid"`
	} `json:"segwit_bip173"`
}

// networkOfHRP maps a vector's address to the network whose HRP it uses.
func networkOfHRP(addr string) Network {
	switch l := strings.ToLower(addr); {
	case strings.HasPrefix(l, "bcrt1"):
		return Regtest
	case strings.HasPrefix(l, "bc1"):
		return Mainnet
	default:
		return Testnet
	}
}

func TestSegwitVectorsBIP350(t *testing.T) {
	var v bech32Vectors
	loadVectors(t, "bech32.json", &v)
	if len(v.SegwitBIP350.Valid) == 0 || len(v.SegwitBIP350.Invalid) == 0 || len(v.SegwitBIP173.Valid) == 0 {
		t.Fatal("bech32.json has no segwit cases")
	}
	for _, c := range v.SegwitBIP350.Valid {
		n := Network(c.Network)
		info, err := ParseAddress(c.Address, n)
		if err != nil {
			t.Errorf("%s on %s: %v", c.Address, n, err)
			continue
		}
		if got := hex.EncodeToString(info.Script); got != c.ScriptPubKey {
			t.Errorf("%s: script %s, want %s", c.Address, got, c.ScriptPubKey)
		}
		if info.Normalized != strings.ToLower(c.Address) {
			t.Errorf("%s: normalized %s", c.Address, info.Normalized)
		}
		// Round trip: the script renders back to the normalised address.
		addr, _, err := AddressFromScript(info.Script, n)
		if err != nil || addr != info.Normalized {
			t.Errorf("%s: AddressFromScript = %q, %v", c.Address, addr, err)
		}
	}
	for _, c := range v.SegwitBIP350.Invalid {
		for _, n := range allNetworks {
			if _, err := ParseAddress(c.Address, n); !errors.Is(err, ErrAddressInvalid) {
				t.Errorf("%s (%s) accepted on %s: %v", c.Address, c.Reason, n, err)
			}
		}
	}
	for _, c := range v.SegwitBIP173.Valid {
		n := networkOfHRP(c.Address)
		info, err := ParseAddress(c.Address, n)
		switch {
		case c.ValidUnderBIP350 && err != nil:
			t.Errorf("%s: %v", c.Address, err)
		case c.ValidUnderBIP350 && hex.EncodeToString(info.Script) != c.ScriptPubKey:
			t.Errorf("%s: script %x", c.Address, info.Script)
		case !c.ValidUnderBIP350 && !errors.Is(err, ErrAddressInvalid):
			t.Errorf("%s is superseded by BIP-350 but was accepted: %v", c.Address, err)
		}
	}
	for _, c := range v.SegwitBIP173.Invalid {
		for _, n := range allNetworks {
			if _, err := ParseAddress(c.Address, n); !errors.Is(err, ErrAddressInvalid) {
				t.Errorf("%s (%s) accepted on %s", c.Address, c.Reason, n)
			}
		}
	}
}

// keyIOChain maps Bitcoin Core's chain names to ours.
func keyIOChain(t *testing.T, chain string) Network {
	switch chain {
	case "main":
		return Mainnet
	case "testnet4", "test":
		return Testnet4
	case "signet":
		return Signet
	case "regtest":
		return Regtest
	}
	t.Fatalf("unknown chain %q", chain)
	return ""
}

func TestKeyIOValid(t *testing.T) {
	var entries [][]any
	loadVectors(t, "bitcoin-core/key_io_valid.json", &entries)
	checked := 0
	for _, e := range entries {
		addr, script, meta := e[0].(string), e[1].(string), e[2].(map[string]any)
		if meta["isPrivkey"] == true {
			continue // WIF keys are not addresses
		}
		n := keyIOChain(t, meta["chain"].(string))
		forms := []string{addr}
		if meta["tryCaseFlip"] == true {
			forms = append(forms, strings.ToUpper(addr))
		}
		for _, s := range forms {
			info, err := ParseAddress(s, n)
			if err != nil {
				t.Errorf("%s on %s: %v", s, n, err)
				continue
			}
			if got := hex.EncodeToString(info.Script); got != script {
				t.Errorf("%s: script %s, want %s", s, got, script)
			}
			if info.Normalized != addr {
				t.Errorf("%s normalised to %s, want %s", s, info.Normalized, addr)
			}
			rendered, _, err := AddressFromScript(info.Script, n)
			if err != nil || rendered != addr {
				t.Errorf("%s: AddressFromScript = %q, %v", s, rendered, err)
			}
			checked++
		}
		// The same string on a network with other prefixes is refused as
		// a wrong-network address (testnet, signet and regtest share
		// base58 prefixes, so only mainnet is certainly foreign to them).
		other := Mainnet
		if n == Mainnet {
			other = Testnet
		}
		if _, err := ParseAddress(addr, other); !errors.Is(err, ErrWrongNetwork) || !errors.Is(err, ErrAddressInvalid) {
			t.Errorf("%s accepted on %s or not flagged wrong-network: %v", addr, other, err)
		}
	}
	if checked < 54 { // 22 base58 + 32 segwit, plus case flips
		t.Fatalf("checked only %d address forms", checked)
	}
}

func TestKeyIOInvalid(t *testing.T) {
	var entries [][]any
	loadVectors(t, "bitcoin-core/key_io_invalid.json", &entries)
	if len(entries) == 0 {
		t.Fatal("no entries")
	}
	for _, e := range entries {
		s := e[0].(string)
		for _, n := range allNetworks {
			if info, err := ParseAddress(s, n); !errors.Is(err, ErrAddressInvalid) {
				t.Errorf("%q accepted on %s as %+v (%v)", s, n, info, err)
			}
		}
	}
}

func TestBase58Vectors(t *testing.T) {
	var pairs [][2]string
	loadVectors(t, "bitcoin-core/base58_encode_decode.json", &pairs)
	for _, p := range pairs {
		raw, err := hex.DecodeString(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := base58.Encode(raw); got != p[1] {
			t.Errorf("encode %s = %s, want %s", p[0], got, p[1])
		}
		if got := hex.EncodeToString(base58.Decode(p[1])); got != strings.ToLower(p[0]) {
			t.Errorf("decode %s = %s, want %s", p[1], got, p[0])
		}
	}
}

func TestParseAddressReasons(t *testing.T) {
	cases := []struct {
		addr  string
		n     Network
		wrong bool // wrong network rather than malformed
		want  string
	}{
		{"tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", Mainnet, true, "not mainnet"},
		{"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", Testnet, true, ""},
		{"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", Regtest, true, ""},
		{"1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mo", Signet, true, "version 0x00"},
		{"mzK2FFDEhxqHcmrJw1ysqFkVyhUULo45hZ", Mainnet, true, ""},
		{"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", Mainnet, false, "Bech32m"},
		{"bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", Mainnet, false, "must use Bech32m"},
		{"bc1qW508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", Mainnet, false, "mixed case"},
		{"1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mp", Mainnet, false, "checksum"},
		{"", Mainnet, false, "empty"},
	}
	for _, c := range cases {
		_, err := ParseAddress(c.addr, c.n)
		if !errors.Is(err, ErrAddressInvalid) || errors.Is(err, ErrWrongNetwork) != c.wrong ||
			!strings.Contains(err.Error(), c.want) {
			t.Errorf("%q on %s: %v (want wrong-network=%v, mention %q)", c.addr, c.n, err, c.wrong, c.want)
		}
	}
	if _, err := ParseAddress("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "bitcoincash"); !errors.Is(err, ErrUnknownNetwork) {
		t.Errorf("unknown network: %v", err)
	}
}

func TestAddressFromScriptTypes(t *testing.T) {
	cases := []struct {
		script, addr, typ string
		err               error
	}{
		{"6a0568656c6c6f", "", TypeNullData, nil},
		{"2103c9f4836b9a4f77fc0d81f7bcb01b7f1b35916864b9476c241ce9fc198bd25432ac", "", TypeNonStandard, ErrUnsupported}, // bare P2PK
		{"00", "", TypeNonStandard, ErrUnsupported},
		{"0014751e76e8199196d454941c45d1b3a323f1433bd6", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", TypeP2WPKH, nil},
	}
	for _, c := range cases {
		script, _ := hex.DecodeString(c.script)
		addr, typ, err := AddressFromScript(script, Mainnet)
		if addr != c.addr || typ != c.typ || !errors.Is(err, c.err) || (c.err == nil && err != nil) {
			t.Errorf("%s: %q %q %v", c.script, addr, typ, err)
		}
	}
}

func TestP2WPKHAddress(t *testing.T) {
	// BIP-143's native example key: the compressed public key
	// 025476c2...6357 hashes to the script 00141d0f172a...71a1.
	h := newFakeHSM("unused")
	priv, _ := hex.DecodeString("619c335025c7f4012e556c2a58b2506e30b8511b53ade95ea316fd8c3286feb9")
	h.priv.Key.SetByteSlice(priv)
	pub := h.priv.PubKey().SerializeUncompressed()
	script, err := P2WPKHScript(pub)
	if err != nil || hex.EncodeToString(script) != "00141d0f172a0ecb48aee1be1f2687d2963ae33f71a1" {
		t.Fatalf("script %x, %v", script, err)
	}
	addr, err := P2WPKHAddress(pub, Regtest)
	if err != nil {
		t.Fatal(err)
	}
	info, err := ParseAddress(addr, Regtest)
	if err != nil || hex.EncodeToString(info.Script) != hex.EncodeToString(script) || info.Type != TypeP2WPKH {
		t.Fatalf("%s: %+v %v", addr, info, err)
	}
	for _, bad := range [][]byte{nil, pub[:33], append([]byte{0x02}, pub[1:]...), append(append([]byte{}, pub[:64]...), pub[64]^1)} {
		if _, err := P2WPKHAddress(bad, Mainnet); !errors.Is(err, ErrPublicKeyInvalid) {
			t.Errorf("key %x accepted: %v", bad, err)
		}
	}
}
