package screening

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNormalizeBitcoinCoreVectors runs Bitcoin Core's address vectors
// through the default normaliser: every valid address must normalise
// (bech32 lower-cased, base58 unchanged). Invalid ones are not asserted:
// the default normaliser is syntactic (witness rules are the validator's).
func TestNormalizeBitcoinCoreVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "vectors", "bitcoin-core", "key_io_valid.json"))
	if err != nil {
		t.Fatalf("test vectors missing (expected shared/ beside the repository): %v", err)
	}
	var rows [][]json.RawMessage
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rows {
		var addr string
		var meta struct {
			IsPrivkey   bool `json:"isPrivkey"`
			TryCaseFlip bool `json:"tryCaseFlip"`
		}
		if json.Unmarshal(r[0], &addr) != nil || json.Unmarshal(r[2], &meta) != nil {
			t.Fatalf("bad row %s", r)
		}
		if meta.IsPrivkey {
			continue
		}
		n++
		got, err := NormalizeBitcoin(addr)
		if err != nil {
			t.Errorf("%s: %v", addr, err)
			continue
		}
		bech := meta.TryCaseFlip
		if (bech && got != strings.ToLower(addr)) || (!bech && got != addr) {
			t.Errorf("%s normalised to %s", addr, got)
		}
		if bech {
			if up, err := NormalizeBitcoin(strings.ToUpper(addr)); err != nil || up != got {
				t.Errorf("%s upper-cased: %q, %v", addr, up, err)
			}
		}
	}
	if n != 54 { // 22 base58 + 32 segwit (SOURCES.md)
		t.Fatalf("%d address vectors, want 54", n)
	}
}

func TestNormalizeRejects(t *testing.T) {
	for _, tc := range []struct {
		norm Normalizer
		in   string
	}{
		{NormalizeEthereum, ""},
		{NormalizeEthereum, "0X01e2919679362dFBC9ee1644Ba9C6da6D6245BB1"},
		{NormalizeEthereum, "0x01e2919679362dFBC9ee1644Ba9C6da6D6245BBg"},
		{NormalizeEthereum, "0x01e2919679362dFBC9ee1644Ba9C6da6D6245BB"},
		{NormalizeBitcoin, ""},
		{NormalizeBitcoin, "TUCsTq7TofTCJRRoHk6RvhMoS2mJLm5Yzq"},         // Tron, version 0x41
		{NormalizeBitcoin, "1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mp"},         // checksum
		{NormalizeBitcoin, "1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2m0"},         // '0' not base58
		{NormalizeBitcoin, "11FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mo"},        // extra leading zero
		{NormalizeBitcoin, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5"}, // checksum
		{NormalizeBitcoin, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3tb"}, // 'b' not in charset
		{NormalizeBitcoin, "bc1"},
		{NormalizeBitcoin, "0x01e2919679362dFBC9ee1644Ba9C6da6D6245BB1"},
	} {
		if got, err := tc.norm(tc.in); !errors.Is(err, ErrAddress) {
			t.Errorf("%q: got %q, %v; want ErrAddress", tc.in, got, err)
		}
	}
}

// FuzzLoad feeds arbitrary file bytes to the list parser with both default
// normalisers: no panic, counts add up, and every accepted entry is a fixed
// point of its normaliser (so a destination normalised the same way finds it).
func FuzzLoad(f *testing.F) {
	// Seeds are a few lines of each real list rather than whole files:
	// the engine minimises every new interesting input, and on 16 KB
	// inputs that stalls fuzzing for most of a short run.
	for _, name := range []string{"sanctioned_addresses_ETH.txt", "sanctioned_addresses_XBT.txt"} {
		if b, err := os.ReadFile(filepath.Join(listsDir, name)); err == nil {
			lines := strings.SplitAfter(string(b), "\n")
			f.Add([]byte(strings.Join(lines[:min(4, len(lines))], "")))
		}
	}
	f.Add([]byte("TUCsTq7TofTCJRRoHk6RvhMoS2mJLm5Yzq\n31nadacWrgPeAQxKRMabhn3fPhnhi3hjKa\n"))
	f.Add([]byte("\xef\xbb\xbf# c\r\n\n  bc1q05aktddf9ce4p7hh3stgsf253m4vweu7nkhtmw \n\x00\xff"))
	f.Add([]byte("0x01e2919679362dFBC9ee1644Ba9C6da6D6245BB1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := strings.Count(string(data), "\n") + 1
		for _, norm := range []Normalizer{NormalizeEthereum, NormalizeBitcoin} {
			entries, rejected := parseList(data, norm, nopLogger())
			if len(entries)+rejected > lines || rejected < 0 {
				t.Fatalf("%d entries + %d rejected from %d lines", len(entries), rejected, lines)
			}
			for e := range entries {
				if again, err := norm(e); err != nil || again != e {
					t.Fatalf("entry %q is not a fixed point: %q, %v", e, again, err)
				}
			}
		}
	})
}
