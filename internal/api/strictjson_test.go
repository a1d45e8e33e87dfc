package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/jsonstrict"
	"github.com/custodysigner/appliance/internal/jsonstrict/jsonstricttest"
	"github.com/custodysigner/appliance/internal/signing"
)

// TestDecodeStrictMemberNames: a member name is a field's name exactly,
// once per object, at every level; what was valid before stays valid.
func TestDecodeStrictMemberNames(t *testing.T) {
	const rest = `"chain":"ethereum","network":"1","payload":"0x02"`
	tests := []struct {
		name string
		body string
		want string // a fragment of the refusal's message; "" when accepted
	}{
		{"exact", `{"key_id":"k",` + rest + `}`, ""},
		{"every field", `{"key_id":"k",` + rest + `,"idempotency_key":"i","expect":{"destination":"d","amount":"1","asset":"ETH"}}`, ""},
		{"escaped exact name", `{"key\u005fid":"k",` + rest + `}`, ""},
		{"expect null", `{"key_id":"k",` + rest + `,"expect":null}`, ""},
		{"empty expect", `{"key_id":"k",` + rest + `,"expect":{}}`, ""},
		{"null body", `null`, ""},
		{"empty object", ` { } `, ""},
		{"upper case", `{"KEY_ID":"k",` + rest + `}`, `unknown member "KEY_ID" (member names are case-sensitive: "key_id")`},
		{"mixed case", `{"key_id":"k","Chain":"bitcoin",` + rest[19:] + `}`, `unknown member "Chain"`},
		{"Kelvin sign", `{"\u212aey_id":"k",` + rest + `}`, "unknown member \"\u212aey_id\""},
		{"nested case", `{"key_id":"k",` + rest + `,"expect":{"destination":"d","Amount":"1"}}`, `unknown member "expect.Amount"`},
		{"duplicate", `{"key_id":"btc-dev","key_id":"eth-dev",` + rest + `}`, `member "key_id" appears more than once`},
		{"duplicate by escape", `{"key_id":"a",` + rest + `,"key\u005fid":"b"}`, `member "key_id" appears more than once`},
		{"duplicate, other case", `{"key_id":"a",` + rest + `,"KEY_ID":"b"}`, `unknown member "KEY_ID"`},
		{"duplicate object", `{"key_id":"k",` + rest + `,"expect":{"amount":"1"},"expect":{"amount":"2"}}`, `member "expect" appears more than once`},
		{"duplicate nested", `{"key_id":"k",` + rest + `,"expect":{"amount":"1","amount":"2"}}`, `member "expect.amount" appears more than once`},
		// encoding/json's own refusals come first, as before.
		{"unknown", `{"key_id":"k",` + rest + `,"atomic":true}`, `json: unknown field "atomic"`},
		{"trailing", `{"key_id":"k"} {}`, "trailing data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b SignBody
			err := decodeStrict(strings.NewReader(tc.body), &b)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var ae *apierr.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Code != apierr.CodeBadRequest ||
				!strings.HasPrefix(ae.Message, "malformed JSON: ") || !strings.Contains(ae.Message, tc.want) {
				t.Fatalf("got %v, want 400 bad_request with %q", err, tc.want)
			}
		})
	}
}

// TestDecodeSignBatchMemberNames: the batch's own member is exact and
// single; a request naming a member wrongly or twice is refused on its own,
// as POST /v1/sign refuses it, and the others stand.
func TestDecodeSignBatchMemberNames(t *testing.T) {
	one := `{"key_id":"k","chain":"ethereum","payload":"0x02","idempotency_key":"a"}`
	for _, body := range []string{`{"Requests":[` + one + `]}`, `{"requests":[` + one + `],"requests":[` + one + `]}`} {
		var ae *apierr.Error
		if _, err := decodeSignBatch(strings.NewReader(body), 4, 256); !errors.As(err, &ae) || ae.Code != apierr.CodeBadRequest {
			t.Fatalf("%s: %v, want the batch refused 400 bad_request", body, err)
		}
	}
	items, err := decodeSignBatch(strings.NewReader(`{"requests":[`+one+`,{"KEY_ID":"k"},{"key_id":"k","key_id":"j"},{"expect":{"Asset":"x"}}]}`), 4, 256)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"", `"KEY_ID"`, `"key_id" appears more than once`, `"expect.Asset"`}
	for i, it := range items {
		switch {
		case want[i] == "" && it.err != nil:
			t.Errorf("request %d refused: %v", i, it.err)
		case want[i] != "" && (it.err == nil || it.err.Code != apierr.CodeBadRequest || !strings.Contains(it.err.Message, want[i])):
			t.Errorf("request %d: %v, want bad_request with %q", i, it.err, want[i])
		}
	}
}

// TestStrictMembersOverHTTP: every endpoint with a body answers a member
// in the wrong case, or twice, 400 bad_request naming it, and hands
// nothing on; a proposal's params too (held to it by package governance).
func TestStrictMembersOverHTTP(t *testing.T) {
	h := newFuzzHarness(t)
	for _, c := range []struct {
		principal, path, body, member string
	}{
		{fuzzClient, "/v1/sign", `{"key_id":"eth-dev","Key_ID":"btc-dev","chain":"ethereum","payload":"0x02"}`, "Key_ID"},
		{fuzzClient, "/v1/sign", `{"key_id":"eth-dev","key_id":"btc-dev","chain":"ethereum","payload":"0x02"}`, "key_id"},
		{fuzzClient, "/v1/policy/evaluate", `{"key_id":"eth-dev","chain":"ethereum","payload":"0x02","expect":{"AMOUNT":"1"}}`, "expect.AMOUNT"},
		{fuzzClient, "/v1/addresses/validate", `{"chain":"ethereum","address":"0x1","Address":"0x2"}`, "Address"},
		{fuzzOfficer, "/v1/allowlist", `{"key_id":"eth-dev","address":"0x1","address":"0x2"}`, "address"},
		{fuzzOfficer, "/v1/freeze", `{"Reason":"x"}`, "Reason"},
		{fuzzOfficer, "/v1/requests/" + fuzzRequest + "/rejections", `{"reason":"a","reason":"b"}`, "reason"},
		{fuzzOfficer, "/v1/requests/" + fuzzRequest + "/approvals", `{"SIGNATURE":"AA=="}`, "SIGNATURE"},
		{fuzzOfficer, "/v1/unseal", `{"share":"a","share":"b"}`, "share"},
		{fuzzOfficer, "/v1/proposals", `{"Kind":"unfreeze","params":{"reason":"x"}}`, "Kind"},
		{fuzzOfficer, "/v1/proposals", `{"kind":"unfreeze","params":{"Reason":"x"}}`, "Reason"},
		{fuzzOfficer, "/v1/proposals", `{"kind":"add_principal","params":{"name":"n","roles":["client"],"roles":["officer"]}}`, "roles"},
	} {
		a := h.post(t, c.principal, c.path, []byte(c.body))
		var env struct{ Error apierr.BodyError }
		_ = json.Unmarshal(a.body, &env)
		if a.status != http.StatusBadRequest || a.code != apierr.CodeBadRequest || !strings.Contains(env.Error.Message, `"`+c.member+`"`) {
			t.Errorf("POST %s %s: %d %s, want 400 bad_request naming %q", c.path, c.body, a.status, a.body, c.member)
		}
		if rec, fz, sh := h.signer.take(), h.seal.takeFreeze(), h.seal.takeShare(); rec != nil || fz != nil || sh != nil {
			t.Errorf("POST %s %s reached a collaborator", c.path, c.body)
		}
	}
}

// strictCases are bodies for the types strictTypes decode, in both
// answers: seeds of FuzzStrictMembers (the checker itself is fuzzed in
// package jsonstrict, over a zoo of struct types).
var strictCases = []string{
	`{"key_id":"k","chain":"c","expect":{"asset":"a"}}`, `{"KEY_ID":"k"}`, `{"expect":{"Asset":"a"}}`, `{"key\u005fid":"k"}`,
	`{"key_id":"k","key\u005fid":"j"}`, `{"expect":{"amount":"1"},"expect":null}`, `{"expect":{"amount":"1","amount":"1"}}`,
	`{"requests":[{"key_id":"a","key_id":"b"}]}`, `{"requests":[],"requests":[]}`, `{"REQUESTS":[]}`,
	`{"kind":"unfreeze","params":{"reason":"a","reason":"b"}}`, `{"kind":"a","KIND":"b"}`, `{"kind":"a","params":{"Reason":"b"}}`,
	"{\"\xff\":1,\"\xfe\":2}", `null`, `[]`, `"x"`, `7`, `{}`, ` {"kind" :"x"} `, `{"kind":"x"} {}`,
}

// strictTypes are the types FuzzStrictMembers decodes into.
var strictTypes = []jsonstricttest.Type{
	{Name: "SignBody", New: func() any { return new(SignBody) }, Example: signBodyExample},
	{Name: "SignBatchBody", New: func() any { return new(SignBatchBody) },
		Example: SignBatchBody{Requests: []json.RawMessage{json.RawMessage(`"` + jsonstricttest.OpaqueMark + `"`)}}},
	{Name: "proposeBody", New: func() any { return new(proposeBody) },
		Example: proposeBody{Kind: "x", Params: json.RawMessage(`"` + jsonstricttest.OpaqueMark + `"`)}},
}

// checkStrict is the property FuzzStrictMembers tests: decodeStrict
// accepts exactly what encoding/json accepts (DisallowUnknownFields,
// nothing after the value) and whose member names are, by the oracle of
// jsonstricttest, each exactly one the encoder writes for that object,
// none twice; and it refuses with 400 bad_request.
func checkStrict(t *testing.T, data []byte) {
	t.Helper()
	decode := func(r io.Reader, v any) error {
		err := decodeStrict(r, v)
		var ae *apierr.Error
		if err != nil && (!errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Code != apierr.CodeBadRequest) {
			t.Fatalf("%T %q: refused with %v", v, data, err)
		}
		return err
	}
	if err := jsonstricttest.Check(decode, data, strictTypes...); err != nil {
		t.Fatal(err)
	}
}

// TestStrictMembersCases runs the property on the seeds (FuzzStrictMembers
// explores from them).
func TestStrictMembersCases(t *testing.T) {
	for _, c := range strictCases {
		checkStrict(t, []byte(c))
	}
	// And the oracle is not vacuous: these are refused.
	for _, c := range []struct{ body, typ string }{
		{`{"KEY_ID":"k"}`, "SignBody"}, {`{"expect":{"amount":"1","amount":"1"}}`, "SignBody"},
		{`{"requests":[],"requests":[]}`, "SignBatchBody"}, {`{"kind":"a","KIND":"b"}`, "proposeBody"},
	} {
		for _, st := range strictTypes {
			if ok, err := jsonstricttest.ExactNames([]byte(c.body), st.Example); st.Name == c.typ && (ok || err != nil) {
				t.Errorf("the oracle takes %s for %s (%v)", c.body, c.typ, err)
			}
		}
	}
}

// BenchmarkDecodeStrictSign decodes typical POST /v1/sign bodies: an
// ERC-20 transfer with expect, and a one-input PSBT; and, apart, the
// member walk over the same bytes.
func BenchmarkDecodeStrictSign(b *testing.B) {
	erc20 := mustHex("a9059cbb" + "000000000000000000000000" + "2222222222222222222222222222222222222222" +
		"00000000000000000000000000000000000000000000000000000000000f4240")
	for _, bc := range []struct {
		name string
		body SignBody
	}{
		{"ethereum", SignBody{KeyID: fuzzEthKey, Chain: "ethereum", Network: "1", Payload: ethSeedPayload(erc20), IdempotencyKey: "w-1",
			Expect: &signing.Expect{Destination: "0x2222222222222222222222222222222222222222", Amount: "1000000"}}},
		{"bitcoin", SignBody{KeyID: fuzzBTCKey, Chain: "bitcoin", Network: "mainnet", Payload: psbtSeed(b, 1), IdempotencyKey: "w-2",
			Expect: &signing.Expect{Destination: "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", Amount: "50000", Asset: "BTC"}}},
	} {
		body := reencode(b, bc.body)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				var s SignBody
				if err := decodeStrict(bytes.NewReader(body), &s); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/walk", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if err := jsonstrict.CheckMembers(body, (*SignBody)(nil)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
