package ceremony

import (
	"bytes"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

func newTestCeremony(t testing.TB, k, n int) *Ceremony {
	t.Helper()
	c, err := NewCeremony(k, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Secret.Destroy)
	return c
}

func TestShareRoundTrip(t *testing.T) {
	c := newTestCeremony(t, 3, 5)
	format := regexp.MustCompile(`^aps1-[0-9a-f]{16}-3of5-[1-5]-[a-z2-7]{52}-[0-9a-f]{8}$`)
	for i, s := range c.Shares {
		text := s.Encode()
		if !format.MatchString(text) {
			t.Fatalf("share %d encodes as %q, not the documented format", i, text)
		}
		for _, in := range []string{text, "\n  " + text + "\r\n", "\t" + text + " \n"} {
			got, err := ParseShare(in)
			if err != nil {
				t.Fatalf("share %d: %v", i, err)
			}
			if got.Version != ShareVersion || got.CeremonyID != c.ID || got.Index != byte(i+1) ||
				got.Threshold != 3 || got.Total != 5 || !bytes.Equal(got.Data, s.Data) {
				t.Fatalf("share %d did not round-trip: %v", i, got)
			}
		}
	}
}

// TestShareEverySubstitutionRefused changes each character of an encoded
// share, one at a time, to several others; every result must be refused.
func TestShareEverySubstitutionRefused(t *testing.T) {
	c := newTestCeremony(t, 2, 3)
	text := c.Shares[1].Encode()
	const replacements = "0129abfoqz7A-_ ."
	for i := range len(text) {
		for _, r := range []byte(replacements) {
			if text[i] == r {
				continue
			}
			mutated := text[:i] + string(r) + text[i+1:]
			if strings.TrimSpace(mutated) == text {
				continue // a space at either end is trimmed by design
			}
			if _, err := ParseShare(mutated); err == nil {
				t.Fatalf("position %d: %q → %q accepted", i, text[i], r)
			}
		}
	}
}

func TestShareDamageRefused(t *testing.T) {
	c := newTestCeremony(t, 2, 3)
	text := c.Shares[0].Encode()
	for n := range len(text) {
		if _, err := ParseShare(text[:n]); err == nil {
			t.Fatalf("truncation to %d characters accepted", n)
		}
		if _, err := ParseShare(text[:n] + text[n+1:]); err == nil {
			t.Fatalf("deleting character %d accepted", n)
		}
	}
	for i := 0; i+1 < len(text); i++ {
		if text[i] == text[i+1] {
			continue
		}
		swapped := text[:i] + string(text[i+1]) + string(text[i]) + text[i+2:]
		if _, err := ParseShare(swapped); err == nil {
			t.Fatalf("swapping characters %d and %d accepted", i, i+1)
		}
	}
}

func TestParseShareErrors(t *testing.T) {
	c := newTestCeremony(t, 2, 3)
	good := c.Shares[0]
	text := good.Encode()
	dataStart := strings.LastIndex(text[:len(text)-9], "-") + 1

	recheck := func(body string) string { return fmt.Sprintf("%s-%08x", body, checksum(body)) }
	body := text[:len(text)-9]
	v2 := good
	v2.Version = 2

	tests := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrShareFormat},
		{"garbage", "hello", ErrShareFormat},
		{"too long", strings.Repeat("a", 2000), ErrShareFormat},
		{"data typo", text[:dataStart] + flip(text[dataStart]) + text[dataStart+1:], ErrShareChecksum},
		{"upper case", strings.ToUpper(text), ErrShareFormat},
		{"upper checksum", text[:len(text)-8] + "A" + text[len(text)-7:], ErrShareFormat},
		{"version 2", v2.Encode(), ErrShareVersion},
		{"version 0", recheck("aps0" + body[4:]), ErrShareVersion},
		{"leading zero version", recheck("aps01" + body[4:]), ErrShareFormat},
		{"k of 1", recheck(strings.Replace(body, "-2of3-", "-1of1-", 1)), ErrShareFormat},
		{"k above n", recheck(strings.Replace(body, "-2of3-", "-4of3-", 1)), ErrShareFormat},
		{"n above 255", recheck(strings.Replace(body, "-2of3-", "-2of256-", 1)), ErrShareFormat},
		{"leading zero k", recheck(strings.Replace(body, "-2of3-", "-02of3-", 1)), ErrShareFormat},
		{"index 0", recheck(strings.Replace(body, "-2of3-1-", "-2of3-0-", 1)), ErrShareFormat},
		{"index above n", recheck(strings.Replace(body, "-2of3-1-", "-2of3-4-", 1)), ErrShareFormat},
		{"short id", recheck(body[:5] + body[7:]), ErrShareFormat},
		{"no data", recheck(body[:dataStart]), ErrShareFormat},
		{"padded data", recheck(body + "===="), ErrShareFormat},
		{"extra field", recheck(body + "-x"), ErrShareFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseShare(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseShare error = %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), text[dataStart:dataStart+10]) {
				t.Fatalf("error %q echoes the input", err)
			}
		})
	}
}

// TestShareNonCanonicalDataRefused sets the unused trailing bits of the
// base32 data, which a lenient decoder would ignore.
func TestShareNonCanonicalDataRefused(t *testing.T) {
	s := Share{Version: ShareVersion, Index: 1, Threshold: 2, Total: 2, Data: make([]byte, 32)}
	text := s.Encode()
	body := text[:len(text)-9]
	// 32 bytes = 256 bits in 52 characters (260 bits): the last 4 are padding bits.
	body = body[:len(body)-1] + "b"
	if _, err := ParseShare(fmt.Sprintf("%s-%08x", body, checksum(body))); !errors.Is(err, ErrShareFormat) {
		t.Fatalf("non-canonical data: error %v, want ErrShareFormat", err)
	}
}

// TestNothingPrintsSecrets formats shares, ceremonies and secrets under
// every common verb and looks for any secret byte string in hex or base32.
func TestNothingPrintsSecrets(t *testing.T) {
	c := newTestCeremony(t, 2, 3)
	var needles []string
	add := func(b []byte) {
		needles = append(needles,
			hex.EncodeToString(b)[:12],
			strings.ToUpper(hex.EncodeToString(b)[:12]),
			shareEncoding().EncodeToString(b)[:10],
			base32.StdEncoding.EncodeToString(b)[:10],
			strings.Trim(fmt.Sprint(b[:6]), "[]"), // decimal, as %v of a []byte prints
		)
	}
	add(c.Secret.st.buf)
	pin := c.Secret.DerivePIN()
	defer clear(pin)
	needles = append(needles, string(pin[:12]))
	for _, s := range c.Shares {
		add(s.Data)
	}

	sh := c.Shares[0]
	var out strings.Builder
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
		fmt.Fprintf(&out, verb+"|", sh)
		fmt.Fprintf(&out, verb+"|", &sh)
		fmt.Fprintf(&out, verb+"|", c.Shares)
		fmt.Fprintf(&out, verb+"|", c.Secret)
		fmt.Fprintf(&out, verb+"|", *c.Secret)
		fmt.Fprintf(&out, verb+"|", c)
		fmt.Fprintf(&out, verb+"|", *c)
		fmt.Fprintf(&out, verb+"|", struct{ S *Secret }{c.Secret})
	}
	for _, n := range needles {
		if strings.Contains(out.String(), n) {
			t.Fatalf("formatted output contains secret material %q:\n%s", n, out.String())
		}
	}
	if !strings.Contains(out.String(), "[redacted]") || !strings.Contains(out.String(), hex.EncodeToString(c.ID[:])) {
		t.Fatalf("formatted output lost its redacted description:\n%s", out.String())
	}
}

func FuzzParseShare(f *testing.F) {
	c := newTestCeremony(f, 2, 3)
	f.Add(c.Shares[0].Encode())
	f.Add(" " + c.Shares[2].Encode() + "\n")
	f.Add("aps1-0000000000000000-2of3-1-aa-00000000")
	f.Add("aps2-")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseShare(in)
		if err != nil {
			if s.Data != nil {
				t.Fatal("failed parse returned data")
			}
			return
		}
		// A share has one spelling: what parses re-encodes to itself.
		if got := s.Encode(); got != strings.TrimSpace(in) {
			t.Fatalf("parsed %q but re-encodes as %q", strings.TrimSpace(in), got)
		}
		if s.Index < 1 || s.Index > s.Total || s.Threshold < 2 || s.Threshold > s.Total {
			t.Fatalf("parsed an impossible share %v", s)
		}
	})
}

// flip returns a different base32 character.
func flip(c byte) string {
	if c == 'a' {
		return "b"
	}
	return "a"
}

// TestAppendTextIsEncode: the zeroable text is byte for byte Encode's, and
// appends after what dst holds.
func TestAppendTextIsEncode(t *testing.T) {
	c := newTestCeremony(t, 3, 5)
	for _, s := range c.Shares {
		got := s.AppendText([]byte("x:"))
		if string(got[2:]) != s.Encode() || string(got[:2]) != "x:" {
			t.Fatalf("AppendText %q, Encode %q", got, s.Encode())
		}
		back, err := ParseShare(string(got[2:]))
		if err != nil || !bytes.Equal(back.Data, s.Data) || back.Index != s.Index {
			t.Fatalf("round trip: %v", err)
		}
		clear(back.Data)
	}
}
