package hsm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodysigner/appliance/hsm"
)

func TestParseURI(t *testing.T) {
	const mod = "/usr/lib/softhsm/libsofthsm2.so"
	tests := []struct {
		name    string
		in      string
		want    hsm.URI
		wantErr bool
	}{
		{name: "rfc form", in: "pkcs11:token=appliance-dev?module-path=" + mod + "&pin-source=file:/var/lib/x/pin",
			want: hsm.URI{ModulePath: mod, Token: "appliance-dev", PinSource: "file:/var/lib/x/pin"}},
		{name: "smallstep form", in: "pkcs11:module-path=" + mod + ";token=appliance-dev?pin-source=/var/lib/x/pin",
			want: hsm.URI{ModulePath: mod, Token: "appliance-dev", PinSource: "/var/lib/x/pin"}},
		{name: "pin-value in path", in: "pkcs11:token=t;pin-value=1234;module-path=" + mod,
			want: hsm.URI{ModulePath: mod, Token: "t", PinValue: "1234"}},
		{name: "percent-encoding", in: "pkcs11:token=My%20Token%3B1?module-path=/opt/lib%20x/p11.so&pin-value=a%26b+c",
			want: hsm.URI{ModulePath: "/opt/lib x/p11.so", Token: "My Token;1", PinValue: "a&b+c"}},
		{name: "scheme case-insensitive", in: "PKCS11:token=t?module-path=" + mod,
			want: hsm.URI{ModulePath: mod, Token: "t"}},
		{name: "file URI pin-source", in: "pkcs11:token=t?module-path=" + mod + "&pin-source=file:///run/pin",
			want: hsm.URI{ModulePath: mod, Token: "t", PinSource: "file:///run/pin"}},
		{name: "missing token", in: "pkcs11:module-path=" + mod, wantErr: true},
		{name: "missing module", in: "pkcs11:token=t", wantErr: true},
		{name: "relative module", in: "pkcs11:token=t?module-path=libsofthsm2.so", wantErr: true},
		{name: "wrong scheme", in: "pkcs12:token=t?module-path=" + mod, wantErr: true},
		{name: "unsupported attribute", in: "pkcs11:token=t;slot-id=3?module-path=" + mod, wantErr: true},
		{name: "duplicate attribute", in: "pkcs11:token=t;token=u?module-path=" + mod, wantErr: true},
		{name: "pin source and value", in: "pkcs11:token=t?module-path=" + mod + "&pin-value=1&pin-source=/p", wantErr: true},
		{name: "remote pin file", in: "pkcs11:token=t?module-path=" + mod + "&pin-source=file://evil/p", wantErr: true},
		{name: "relative pin file", in: "pkcs11:token=t?module-path=" + mod + "&pin-source=pin.txt", wantErr: true},
		{name: "bad escape", in: "pkcs11:token=t%zz?module-path=" + mod, wantErr: true},
		{name: "raw space", in: "pkcs11:token=My Token?module-path=/opt/lib x/p11.so",
			want: hsm.URI{ModulePath: "/opt/lib x/p11.so", Token: "My Token"}},
		{name: "newline", in: "pkcs11:token=t?module-path=" + mod + "\n", wantErr: true},
		{name: "tab", in: "pkcs11:token=t\t?module-path=" + mod, wantErr: true},
		{name: "delete", in: "pkcs11:token=t\x7f?module-path=" + mod, wantErr: true},
		{name: "token too long", in: "pkcs11:token=" + strings.Repeat("x", 33) + "?module-path=" + mod, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := hsm.ParseURI(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseURI(%q) = %+v, want error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURI(%q): %v", tc.in, err)
			}
			if *got != tc.want {
				t.Fatalf("ParseURI(%q) = %+v, want %+v", tc.in, *got, tc.want)
			}
			if tc.want.PinValue == "" {
				again, err := hsm.ParseURI(got.String())
				if err != nil || *again != *got {
					t.Fatalf("round trip of %q via %q: %+v, %v", tc.in, got.String(), again, err)
				}
			}
		})
	}
}

func TestURIStringRedactsPIN(t *testing.T) {
	u, err := hsm.ParseURI("pkcs11:token=t?module-path=/m.so&pin-value=s3cr3t-pin")
	if err != nil {
		t.Fatal(err)
	}
	s := u.String()
	if strings.Contains(s, "s3cr3t-pin") || !strings.Contains(s, "pin-value=REDACTED") {
		t.Fatalf("String() = %q: PIN not redacted", s)
	}
}

// An attribute without '=' is named by position, never quoted: it may be a
// PIN written with the wrong separator.
func TestURIErrorHidesMalformedPIN(t *testing.T) {
	_, err := hsm.ParseURI("pkcs11:token=t?module-path=/m.so&pin-value:s3cr3t-pin")
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("ParseURI error = %v", err)
	}
}

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lf, crlf, empty := write("lf", "1234\n"), write("crlf", "1234\r\n"), write("empty", "\n")
	for _, src := range []string{lf, "file:" + crlf, "file://" + lf} {
		pin, err := (&hsm.URI{Token: "t", ModulePath: "/m", PinSource: src}).ReadPIN()
		if err != nil || string(pin) != "1234" {
			t.Errorf("ReadPIN(%s) = %q, %v", src, pin, err)
		}
	}
	if _, err := (&hsm.URI{PinSource: empty}).ReadPIN(); !errors.Is(err, hsm.ErrNoPIN) {
		t.Errorf("empty pin file: %v, want ErrNoPIN", err)
	}
	if _, err := (&hsm.URI{}).ReadPIN(); !errors.Is(err, hsm.ErrNoPIN) {
		t.Errorf("no pin: %v, want ErrNoPIN", err)
	}
	_, err := (&hsm.URI{PinSource: filepath.Join(dir, "missing")}).ReadPIN()
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want os.ErrNotExist", err)
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=appliance-dev?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/var/lib/x/pin",
		"pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=appliance-dev?pin-source=/var/lib/x/pin",
		"pkcs11:token=My%20Token?module-path=/a%2Fb&pin-value=1%00",
		"pkcs11:token=t?module-path=/m&pin-source=file:///p",
		"pkcs11:;;?&&", "pkcs11:", "pkcs11:token=%", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := hsm.ParseURI(s)
		if err != nil {
			return
		}
		out := u.String()
		if u.PinValue != "" {
			if strings.Contains(out, "pin-value="+u.PinValue+"&") || strings.HasSuffix(out, "pin-value="+u.PinValue) && u.PinValue != "REDACTED" {
				t.Fatalf("String() %q leaks the PIN", out)
			}
			return
		}
		again, err := hsm.ParseURI(out)
		if err != nil {
			t.Fatalf("String() %q of parsed %q does not parse: %v", out, s, err)
		}
		if *again != *u {
			t.Fatalf("round trip %q -> %q: %+v != %+v", s, out, again, u)
		}
	})
}
