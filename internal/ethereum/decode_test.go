package ethereum

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/big"
	mrand "math/rand/v2"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/core/types"
)

// Pre-encoded fields of a valid type-2 transaction; the table below swaps
// single fields for malformed encodings so each case breaks exactly one rule.
var (
	to20     = "94" + strings.Repeat("35", 20)
	type2    = []string{"01", "80", "01", "02", "825208", to20, "01", "80", "c0"}
	type1    = []string{"01", "80", "01", "825208", to20, "01", "80", "c0"}
	legacy   = []string{"80", "01", "825208", to20, "01", "80", "01", "80", "80"}
	sigField = []string{"01", "a0" + strings.Repeat("11", 32), "a0" + strings.Repeat("22", 32)}
)

// payload assembles prefix || list(fields) with a canonical list header.
func payload(prefix string, fields []string) string {
	body := strings.Join(fields, "")
	return prefix + hex.EncodeToString(rlpAppendHeader(nil, 0xc0, uint64(len(body)/2))) + body
}

// with returns fields with fields[i] replaced by v.
func with(fields []string, i int, v string) []string {
	out := append([]string{}, fields...)
	out[i] = v
	return out
}

func TestDecodeUnsignedTable(t *testing.T) {
	maxU256 := "a0" + strings.Repeat("ff", 32)
	body2 := strings.Join(type2, "")
	tests := []struct {
		name string
		in   string
		want error // nil: must decode
	}{
		{"type 2", payload("02", type2), nil},
		{"type 1", payload("01", type1), nil},
		{"legacy", payload("", legacy), nil},
		{"type 2 contract creation", payload("02", with(type2, 5, "80")), nil},
		{"type 2 max value", payload("02", with(type2, 6, maxU256)), nil},
		{"type 2 max nonce", payload("02", with(type2, 1, "88ffffffffffffffff")), nil},
		{"type 2 access list", payload("02", with(type2, 8, "f8"+"38"+"f7"+to20+"e1a0"+strings.Repeat("00", 32))), nil},

		{"empty input", "", ErrDecode},
		{"0x02 alone", "02", ErrDecode},
		{"0x01 alone", "01", ErrDecode},
		{"unknown type 0x03", payload("03", type2), ErrUnsupported},
		{"unknown type 0x04", payload("04", type2), ErrUnsupported},
		{"type byte 0x00", payload("00", legacy), ErrUnsupported},
		{"type 0x7f", "7f", ErrUnsupported},
		{"rlp string, not list", "83010203", ErrDecode},
		{"type 2 body is a string", "02" + "83010203", ErrDecode},
		{"leading zero nonce", payload("02", with(type2, 1, "820001")), ErrDecode},
		{"zero nonce as 0x00", payload("02", with(type2, 1, "00")), ErrDecode},
		{"leading zero value", payload("02", with(type2, 6, "820001")), ErrDecode},
		{"wrapped single byte", payload("02", with(type2, 1, "8105")), ErrDecode},
		{"long form for short string", payload("02", with(type2, 7, "b80180")), ErrDecode},
		{"long form for short list", "02" + "f8" + hex.EncodeToString([]byte{byte(len(body2) / 2)}) + body2, ErrDecode},
		{"trailing bytes", payload("02", type2) + "00", ErrDecode},
		{"trailing bytes legacy", payload("", legacy) + "c0", ErrDecode},
		{"8 fields for type 2", payload("02", type2[:8]), ErrDecode},
		{"10 fields for type 2", payload("02", append(type2, "80")), ErrDecode},
		{"9 fields for type 1", payload("01", type2), ErrDecode},
		{"to of 19 bytes", payload("02", with(type2, 5, "93"+strings.Repeat("35", 19))), ErrDecode},
		{"to of 21 bytes", payload("02", with(type2, 5, "95"+strings.Repeat("35", 21))), ErrDecode},
		{"to is a list", payload("02", with(type2, 5, "c0")), ErrDecode},
		{"nonce overflows uint64", payload("02", with(type2, 1, "89010000000000000000")), ErrDecode},
		{"gas overflows uint64", payload("02", with(type2, 4, "89010000000000000000")), ErrDecode},
		{"33-byte value", payload("02", with(type2, 6, "a101"+strings.Repeat("00", 32))), ErrDecode},
		{"33-byte max fee", payload("02", with(type2, 3, "a101"+strings.Repeat("00", 32))), ErrDecode},
		{"nonce is a list", payload("02", with(type2, 1, "c0")), ErrDecode},
		{"data is a list", payload("02", with(type2, 7, "c0")), ErrDecode},
		{"access list is a string", payload("02", with(type2, 8, "80")), ErrDecode},
		{"access tuple address 19 bytes", payload("02", with(type2, 8, "d6d5"+"93"+strings.Repeat("35", 19)+"c0")), ErrDecode},
		{"access tuple 3 items", payload("02", with(type2, 8, "d8d7"+to20+"c080")), ErrDecode},
		{"access tuple not a list", payload("02", with(type2, 8, "c180")), ErrDecode},
		{"storage key 31 bytes", payload("02", with(type2, 8, "f7f6"+to20+"e09f"+strings.Repeat("00", 31))), ErrDecode},
		{"storage keys a string", payload("02", with(type2, 8, "d7d6"+to20+"80")), ErrDecode},
		{"signed type 2 submitted", payload("02", append(append([]string{}, type2...), sigField...)), ErrDecode},
		{"signed type 1 submitted", payload("01", append(append([]string{}, type1...), sigField...)), ErrDecode},
		{"signed legacy submitted", payload("", with(with(with(legacy, 6, "25"), 7, sigField[1]), 8, sigField[2])), ErrDecode},
		{"legacy zero encoded as 0x00", payload("", with(legacy, 7, "00")), ErrDecode},
		{"legacy without chain id", payload("", legacy[:6]), ErrUnsupported},
		{"legacy chain id 0", payload("", with(legacy, 6, "80")), ErrUnsupported},
		{"type 2 chain id 0", payload("02", with(type2, 0, "80")), ErrUnsupported},
		{"legacy 7 fields", payload("", legacy[:7]), ErrDecode},
		{"legacy 6 malformed fields", payload("", with(legacy[:6], 0, "8100")), ErrDecode},
		{"first byte 0x80", "80", ErrDecode},
		{"first byte 0xb8", "b8", ErrDecode},
		{"truncated list", payload("02", type2)[:20], ErrDecode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := unhex(t, tt.in)
			tx, err := DecodeUnsigned(in)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(tx.UnsignedPayload(), in) {
					t.Fatalf("re-encoded %x", tx.UnsignedPayload())
				}
				if tx.SigningHash() != gethSigningHash(tx) {
					t.Fatal("signing hash differs from go-ethereum")
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			other := ErrDecode
			if tt.want == ErrDecode {
				other = ErrUnsupported
			}
			if errors.Is(err, other) {
				t.Fatalf("error %v wraps both sentinels", err)
			}
			t.Logf("%v", err) // messages are part of the API; keep them readable
		})
	}
}

// FuzzDecodeUnsigned checks that no input panics, every refusal wraps
// exactly one sentinel, and every accepted payload is canonical (re-encodes
// byte-identically), hashes as go-ethereum hashes it, and signs into a
// transaction go-ethereum parses back to the same fields.
func FuzzDecodeUnsigned(f *testing.F) {
	for _, s := range []string{
		payload("02", type2), payload("01", type1), payload("", legacy),
		payload("02", with(type2, 5, "80")), payload("03", type2), "", "02",
		payload("02", append(append([]string{}, type2...), sigField...)),
	} {
		f.Add(unhex(f, s))
	}
	r := mrand.New(mrand.NewPCG(3, 4))
	for i := 0; i < 6; i++ {
		f.Add(randomTx(r, byte(i%3)).UnsignedPayload())
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		tx, err := DecodeUnsigned(in)
		if err != nil {
			if errors.Is(err, ErrDecode) == errors.Is(err, ErrUnsupported) {
				t.Fatalf("error must wrap exactly one of ErrDecode, ErrUnsupported: %v", err)
			}
			return
		}
		if err := tx.Validate(); err != nil {
			t.Fatalf("decoded tx does not validate: %v", err)
		}
		if out := tx.UnsignedPayload(); !bytes.Equal(out, in) {
			t.Fatalf("not canonical: %x re-encodes as %x", in, out)
		}
		if tx.SigningHash() != gethSigningHash(tx) {
			t.Fatal("signing hash differs from go-ethereum")
		}
		_ = tx.Intent()
		sig := Signature{R: [32]byte{31: 1}, S: [32]byte{31: 2}, YParity: 1}
		raw, hash, err := tx.Signed(sig)
		if err != nil {
			t.Fatal(err)
		}
		var g types.Transaction
		if err := g.UnmarshalBinary(raw); err != nil {
			t.Fatalf("go-ethereum refuses our signed encoding: %v", err)
		}
		if g.Hash() != hash || g.Nonce() != tx.Nonce || g.Gas() != tx.Gas || g.Value().Cmp(tx.Value) != 0 ||
			g.ChainId().Cmp(tx.ChainID) != 0 || !bytes.Equal(g.Data(), tx.Data) || len(g.AccessList()) != len(tx.AccessList) {
			t.Fatal("go-ethereum reads different fields back")
		}
		if (g.To() == nil) != (tx.To == nil) || (tx.To != nil && [20]byte(*g.To()) != [20]byte(*tx.To)) {
			t.Fatal("go-ethereum reads a different recipient")
		}
	})
}

// TestDecodeDoesNotAliasInput guards the copy in fieldDecoder.bytes: the
// decoded Tx must not change when the caller reuses its buffer.
func TestDecodeDoesNotAliasInput(t *testing.T) {
	in := unhex(t, payload("02", with(type2, 7, "83aabbcc")))
	tx, err := DecodeUnsigned(in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		in[i] = 0
	}
	if !bytes.Equal(tx.Data, []byte{0xaa, 0xbb, 0xcc}) || tx.To[0] != 0x35 || tx.Value.Cmp(big.NewInt(1)) != 0 {
		t.Fatal("decoded tx aliases the input buffer")
	}
}
