package audit

import (
	"encoding/json"
	"strings"
	"testing"
)

// marshalCanonical is CanonicalFields as it was first written: encoding/json
// over the cleaned map. Entries already in every chain were built with it,
// so the hand-written encoder must give the same bytes.
func marshalCanonical(t testing.TB, fields map[string]string) string {
	if len(fields) == 0 {
		return "{}"
	}
	clean := make(map[string]string, len(fields))
	for k, v := range fields {
		clean[valid(k)] = valid(v)
	}
	b, err := json.Marshal(clean)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCanonicalFieldsMatchesEncodingJSON(t *testing.T) {
	var every strings.Builder
	for c := 0; c < 0x80; c++ {
		every.WriteByte(byte(c))
	}
	for _, fields := range []map[string]string{
		nil,
		{},
		{"a": "1"},
		{"b": "2", "a": "1", "ab": "", "": "empty name"},
		{"ascii": every.String()},
		{"html": "<script>&amp;</script>", "quote\"": "back\\slash"},
		{"separators": "a\u2028b\u2029c", "bom": "\ufeff", "nul": "\x00"},
		{"invalid\xff": "bytes\xfe\xfdhere", "utf8": "é漢字🙂"},
		{"idempotency_key": "hmac-sha256:0123:abcdef", "request_id": "req_01jz", "state": "signed", "tx_hash": "0x" + strings.Repeat("ab", 32),
			"key_id": "eth-dev", "chain": "ethereum", "network": "1337", "payload_hash": strings.Repeat("cd", 32), "principal": "upstream",
			"amount": "1000000000000", "to": "0x1111111111111111111111111111111111111111", "fee": "21000", "policy_version": "3",
			"approvals_required": "0", "error_code": "", "error_message": "", "digest": strings.Repeat("ef", 32)},
	} {
		got, err := CanonicalFields(fields)
		if err != nil {
			t.Fatalf("%q: %v", fields, err)
		}
		if want := marshalCanonical(t, fields); got != want {
			t.Errorf("CanonicalFields(%q)\n got %s\nwant %s", fields, got, want)
		}
	}
}

func TestCanonicalFieldsRefusesNamesThatCollideOnceCleaned(t *testing.T) {
	if _, err := CanonicalFields(map[string]string{"a\xff": "1", "a\xfe": "2"}); err == nil {
		t.Fatal("two names that both become \"a\\uFFFD\" were accepted; the stored entry would depend on map order")
	}
}

func TestBuildSensitiveFieldsAreRedactedInCanonicalOrder(t *testing.T) {
	red, err := NewRedactor(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	rec := Record{Kind: "k", Fields: map[string]string{"b": "plain", "z": "last"}, Sensitive: map[string]string{"a": "secret", "m": "also"}}
	e, err := rec.Build(0, nil, 1, red)
	if err != nil {
		t.Fatal(err)
	}
	want := marshalCanonical(t, map[string]string{"b": "plain", "z": "last", "a": red.Value("secret"), "m": red.Value("also")})
	if e.Fields != want {
		t.Fatalf("fields %s, want %s", e.Fields, want)
	}
	if strings.Contains(e.Fields, "secret") {
		t.Fatal("a sensitive value reached the entry")
	}
}

func FuzzCanonicalFields(f *testing.F) {
	f.Add("a", "1", "b", "<&>\u2028")
	f.Add("x\xff", "\x00\x1f\x7f", "", "\"\\")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		fields := map[string]string{k1: v1, k2: v2}
		got, err := CanonicalFields(fields)
		if valid(k1) == valid(k2) && k1 != k2 {
			if err == nil {
				t.Fatalf("colliding names %q and %q accepted", k1, k2)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := marshalCanonical(t, fields); got != want {
			t.Fatalf("got %s want %s", got, want)
		}
		if !json.Valid([]byte(got)) {
			t.Fatalf("not JSON: %s", got)
		}
	})
}
