package ethereum

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/big"
	"strings"
	"testing"

	gethrlp "github.com/ethereum/go-ethereum/rlp"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRLPDecodeTable(t *testing.T) {
	long := strings.Repeat("aa", 56)
	tests := []struct {
		name string
		in   string
		want error // nil: must decode and re-encode identically
	}{
		{"zero byte", "00", nil},
		{"single byte", "7f", nil},
		{"empty string", "80", nil},
		{"wrapped 0x80", "8180", nil},
		{"short string", "83646f67", nil},
		{"empty list", "c0", nil},
		{"nested", "c7c0c1c0c3c0c1c0", nil},
		{"long string", "b838" + long, nil},
		{"long list", "f838" + strings.Repeat("01", 56), nil},
		{"empty input", "", errRLPTruncated},
		{"wrapped single byte", "8100", errRLPNonCanonical},
		{"wrapped 0x7f", "817f", errRLPNonCanonical},
		{"long form short string", "b803646f67", errRLPNonCanonical},
		{"long form short list", "f803010203", errRLPNonCanonical},
		{"length leading zero", "b90038" + long, errRLPNonCanonical},
		{"list length leading zero", "f90038" + strings.Repeat("01", 56), errRLPNonCanonical},
		{"trailing", "8000", errRLPTrailing},
		{"truncated string", "83646f", errRLPTruncated},
		{"truncated list", "c30102", errRLPTruncated},
		{"truncated long header", "b9", errRLPTruncated},
		{"huge length", "bf" + "ffffffffffffffff", errRLPTruncated},
		{"truncated inside list", "c28301", errRLPTruncated},
		{"max depth", nestedLists(maxRLPDepth), nil},
		{"too deep", nestedLists(maxRLPDepth + 1), errRLPTooDeep},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := unhex(t, tt.in)
			v, err := rlpDecode(in)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("got %v, want %v", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out := rlpEncode(nil, v); !bytes.Equal(out, in) {
				t.Fatalf("re-encoded %x", out)
			}
		})
	}
}

// nestedLists returns the hex encoding of depth empty lists nested in each other.
func nestedLists(depth int) string {
	v := rlpList()
	for i := 1; i < depth; i++ {
		v = rlpList(v)
	}
	return hex.EncodeToString(rlpEncode(nil, v))
}

func TestRLPEncodeMatchesGeth(t *testing.T) {
	ints := []uint64{0, 1, 0x7f, 0x80, 0xff, 0x100, 1 << 32, ^uint64(0)}
	for _, u := range ints {
		want, _ := gethrlp.EncodeToBytes(u)
		if got := rlpEncode(nil, rlpUint(u)); !bytes.Equal(got, want) {
			t.Errorf("uint %d: %x, go-ethereum %x", u, got, want)
		}
		b := new(big.Int).SetUint64(u)
		b.Lsh(b, 100)
		want, _ = gethrlp.EncodeToBytes(b)
		if got := rlpEncode(nil, rlpBig(b)); !bytes.Equal(got, want) {
			t.Errorf("big %s: %x, go-ethereum %x", b, got, want)
		}
	}
	for _, n := range []int{0, 1, 55, 56, 255, 256, 65536} {
		s := bytes.Repeat([]byte{0x80}, n)
		want, _ := gethrlp.EncodeToBytes(s)
		if got := rlpEncode(nil, rlpBytes(s)); !bytes.Equal(got, want) {
			t.Errorf("string len %d: header %x, go-ethereum %x", n, got[:min(4, len(got))], want[:min(4, len(want))])
		}
		list := make([][]byte, n)
		items := make([]rlpValue, n)
		for i := range list {
			list[i] = []byte{}
			items[i] = rlpBytes(nil)
		}
		want, _ = gethrlp.EncodeToBytes(list)
		if got := rlpEncode(nil, rlpList(items...)); !bytes.Equal(got, want) {
			t.Errorf("list len %d differs from go-ethereum", n)
		}
	}
}

// FuzzRLPDecode checks the decoder never panics, accepts exactly what
// go-ethereum's strict decoder accepts (up to our depth bound), and that
// every accepted input re-encodes byte-identically, i.e. is canonical.
func FuzzRLPDecode(f *testing.F) {
	for _, s := range []string{"00", "80", "8180", "c0", "c7c0c1c0c3c0c1c0", "8100", "b803646f67",
		"f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83"} {
		f.Add(unhex(f, s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := rlpDecode(in)
		var generic any
		gethErr := gethrlp.DecodeBytes(in, &generic)
		if err != nil {
			if gethErr == nil && !errors.Is(err, errRLPTooDeep) {
				t.Fatalf("refused %x (%v) but go-ethereum accepts it", in, err)
			}
			return
		}
		if gethErr != nil {
			t.Fatalf("accepted %x but go-ethereum refuses it: %v", in, gethErr)
		}
		if out := rlpEncode(nil, v); !bytes.Equal(out, in) {
			t.Fatalf("re-encoding %x gave %x", in, out)
		}
	})
}
