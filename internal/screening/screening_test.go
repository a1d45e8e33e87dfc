package screening

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"go.uber.org/zap/zaptest"
)

// listsDir holds the committed copies of the shared known-risk vectors.
var listsDir = filepath.Join("..", "..", "firmware-config", "known-risk")

func realSources() []ListSource {
	return []ListSource{
		{Name: "ofac-eth", Chain: Ethereum, Path: filepath.Join(listsDir, "sanctioned_addresses_ETH.txt")},
		{Name: "ofac-xbt", Chain: Bitcoin, Path: filepath.Join(listsDir, "sanctioned_addresses_XBT.txt")},
	}
}

func newReal(t *testing.T) *Screener {
	t.Helper()
	s, err := New(realSources(), nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("loading the committed lists (firmware-config/known-risk): %v", err)
	}
	return s
}

func TestLoadRealLists(t *testing.T) {
	s := newReal(t)
	v := s.Versions()
	want := []struct {
		name           string
		sha            string
		count, rejects int
	}{
		// Counts and hashes from SOURCES.md / `wc -l`, `sha256sum`.
		{"ofac-eth", "9bb46e582a3c8bc625555925c58069278ca98916b51c5532aebf502149517ce7", 152, 0},
		{"ofac-xbt", "5e5f9cac30799b97bb966798205958c1cfbf2408d7670bbe74f24f4d5b8161be", 434, 1},
	}
	if len(v) != len(want) {
		t.Fatalf("%d versions, want %d", len(v), len(want))
	}
	for i, w := range want {
		got := v[i]
		if got.Name != w.name || got.SHA256 != w.sha || got.Count != w.count || got.Rejected != w.rejects ||
			got.Error != "" || got.LoadedAt.IsZero() {
			t.Errorf("version %d = %+v, want name %s sha %s count %d rejected %d", i, got, w.name, w.sha, w.count, w.rejects)
		}
	}
	// The one rejected XBT line is the Tron address (SOURCES.md).
	if _, err := NormalizeBitcoin("TUCsTq7TofTCJRRoHk6RvhMoS2mJLm5Yzq"); !errors.Is(err, ErrAddress) {
		t.Errorf("Tron address normalises as Bitcoin: %v", err)
	}
}

func TestCheck(t *testing.T) {
	s := newReal(t)
	const (
		mixed   = "0x01e2919679362dFBC9ee1644Ba9C6da6D6245BB1" // listed in EIP-55 form
		lower   = "0x03893a7c7463ae47d46bc7f091665f1893656003" // listed ...AE47... (mixed); probe lower
		bech    = "bc1q05aktddf9ce4p7hh3stgsf253m4vweu7nkhtmw"
		base58  = "31nadacWrgPeAQxKRMabhn3fPhnhi3hjKa"
		cleanE  = "0x000000000000000000000000000000000000dEaD"
		cleanB  = "1FsSia9rv4NeEwvJ2GvXrX7LyxYspbN2mo" // from bitcoin-core key_io_valid
		cleanBc = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
	)
	eip55 := common.HexToAddress(lower).Hex()
	if eip55 == lower {
		t.Fatal("test address has no letters to case")
	}
	allLowerListed := findAllLowerEntry(t)
	tests := []struct {
		name  string
		chain Chain
		addr  string
		hit   string // list name, "" for clean
	}{
		{"eth as listed", Ethereum, mixed, "ofac-eth"},
		{"eth lower", Ethereum, strings.ToLower(mixed), "ofac-eth"},
		{"eth upper", Ethereum, "0x" + strings.ToUpper(mixed[2:]), "ofac-eth"},
		{"eth eip55 of a mixed entry", Ethereum, eip55, "ofac-eth"},
		{"eth eip55 of an all-lower entry", Ethereum, common.HexToAddress(allLowerListed).Hex(), "ofac-eth"},
		{"eth upper of an all-lower entry", Ethereum, "0x" + strings.ToUpper(allLowerListed[2:]), "ofac-eth"},
		{"bech32 as listed", Bitcoin, bech, "ofac-xbt"},
		{"bech32 upper", Bitcoin, strings.ToUpper(bech), "ofac-xbt"},
		{"base58 as listed", Bitcoin, base58, "ofac-xbt"},
		{"clean eth", Ethereum, cleanE, ""},
		{"clean base58", Bitcoin, cleanB, ""},
		{"clean bech32", Bitcoin, cleanBc, ""},
		{"zero address is clean", Ethereum, "0x" + strings.Repeat("0", 40), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hit, err := s.Check(tt.chain, tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.hit == "" && hit != nil:
				t.Fatalf("clean address reported as %+v", hit)
			case tt.hit != "" && hit == nil:
				t.Fatal("listed address not found")
			case hit != nil:
				v := s.Versions()
				want := v[0].SHA256
				if tt.chain == Bitcoin {
					want = v[1].SHA256
				}
				if hit.List != tt.hit || hit.Version != want {
					t.Fatalf("hit %+v, want list %s version %s", hit, tt.hit, want)
				}
			}
		})
	}
}

// findAllLowerEntry returns a listed ETH entry written all-lower-case
// (SOURCES.md: 37 of them), proving such entries match EIP-55 probes.
func findAllLowerEntry(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(listsDir, "sanctioned_addresses_ETH.txt"))
	if err != nil {
		t.Fatal(err)
	}
	n, found := 0, ""
	for _, l := range strings.Fields(string(b)) {
		if l == strings.ToLower(l) && l != common.HexToAddress(l).Hex() {
			n++
			found = l
		}
	}
	if n != 37 {
		t.Fatalf("%d all-lower entries with letters, SOURCES.md says 37", n)
	}
	return found
}

func TestBase58IsCaseSensitive(t *testing.T) {
	const listed = "31nadacWrgPeAQxKRMabhn3fPhnhi3hjKa"
	flipped := "31nadacwrgPeAQxKRMabhn3fPhnhi3hjKa" // W → w: a different base58 string
	s := newReal(t)
	hit, err := s.Check(Bitcoin, flipped)
	if hit != nil || !errors.Is(err, ErrAddress) {
		t.Fatalf("case-changed base58 = %+v, %v; want no hit and ErrAddress (checksum)", hit, err)
	}
	// Even a normaliser that skips the checksum must not fold base58 case.
	lax := DefaultNormalizers()
	lax[Bitcoin] = func(a string) (string, error) { return a, nil }
	s2, err := New(realSources(), lax, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if hit, err := s2.Check(Bitcoin, flipped); hit != nil || err != nil {
		t.Fatalf("lax normaliser: case-changed base58 = %+v, %v; want clean", hit, err)
	}
	if hit, _ := s2.Check(Bitcoin, listed); hit == nil {
		t.Fatal("lax normaliser: listed base58 not found")
	}
}

func TestCheckErrors(t *testing.T) {
	s := newReal(t)
	for _, tc := range []struct {
		chain Chain
		addr  string
		want  error
	}{
		{Ethereum, "0x1234", ErrAddress},
		{Ethereum, "01e2919679362dFBC9ee1644Ba9C6da6D6245BB1", ErrAddress},
		{Bitcoin, "TUCsTq7TofTCJRRoHk6RvhMoS2mJLm5Yzq", ErrAddress},
		{Bitcoin, "bc1q05aktddf9ce4p7hh3stgsf253m4vweu7nkhtmW", ErrAddress}, // mixed case
		{Bitcoin, "bc1q05aktddf9ce4p7hh3stgsf253m4vweu7nkhtmx", ErrAddress}, // checksum
		{"solana", "x", ErrUnknownChain},
	} {
		if hit, err := s.Check(tc.chain, tc.addr); hit != nil || !errors.Is(err, tc.want) {
			t.Errorf("Check(%s, %q) = %+v, %v; want %v", tc.chain, tc.addr, hit, err, tc.want)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "l.txt")
	if err := os.WriteFile(good, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, srcs := range map[string][]ListSource{
		"missing file":   {{Name: "a", Chain: Ethereum, Path: filepath.Join(dir, "absent.txt")}},
		"a directory":    {{Name: "a", Chain: Ethereum, Path: dir}},
		"duplicate name": {{Name: "a", Chain: Ethereum, Path: good}, {Name: "a", Chain: Bitcoin, Path: good}},
		"unknown chain":  {{Name: "a", Chain: "solana", Path: good}},
		"no path":        {{Name: "a", Chain: Ethereum}},
	} {
		if _, err := New(srcs, nil, zaptest.NewLogger(t)); !errors.Is(err, ErrList) {
			t.Errorf("%s: err = %v, want ErrList", name, err)
		}
	}
}

func TestParseList(t *testing.T) {
	in := "\xef\xbb\xbf0x01e2919679362dFBC9ee1644Ba9C6da6D6245BB1\r\n" +
		"# a comment 0x0000000000000000000000000000000000000001\n" +
		"\n   \t\n" +
		"  0x01E2919679362DFBC9EE1644BA9C6DA6D6245BB1  \n" + // duplicate in another case
		"not an address\n" +
		"0x03893a7c7463AE47D46bc7f091665f1893656003" // no trailing newline
	entries, rejected := parseList([]byte(in), NormalizeEthereum, zaptest.NewLogger(t))
	if len(entries) != 2 || rejected != 1 {
		t.Fatalf("entries %v, rejected %d; want 2 and 1", entries, rejected)
	}
	if _, ok := entries["0x01e2919679362dfbc9ee1644ba9c6da6d6245bb1"]; !ok {
		t.Fatal("BOM-prefixed first line not loaded")
	}
}
