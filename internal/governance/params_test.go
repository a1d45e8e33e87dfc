package governance

import (
	"errors"
	"testing"

	"github.com/custodysigner/appliance/internal/jsonstrict"
)

// TestCanonicalParamsMemberNames: a parameter's name is exactly its field's,
// once per object, at every depth (a set_policy's rules included), as in
// the API's bodies; encoding/json alone would take another case and keep
// the last of a repeated member. A tool in front of the appliance that
// reads the first "roles" would otherwise show officers a client where an
// officer is being added.
func TestCanonicalParamsMemberNames(t *testing.T) {
	tests := []struct {
		name, kind, params string
		want               string // the refusal's message; "" when accepted
	}{
		{"exact", KindUnfreeze, `{"reason":"x"}`, ""},
		{"escaped exact name", KindUnfreeze, `{"re\u0061son":"x"}`, ""},
		{"exact, deep", KindSetPolicy, `{"key_id":"k","rules":{"windows":[{"asset":"ETH","duration":"1h","max":"1"}],"per_tx_max":{"ETH":"1"}}}`, ""},
		{"upper case", KindUnfreeze, `{"Reason":"x"}`,
			`unfreeze parameters: unknown member "Reason" (member names are case-sensitive: "reason")`},
		{"another case, beside the exact one", KindGrantKey, `{"principal":"p","key_id":"k","KEY_ID":"j"}`,
			`grant_key parameters: unknown member "KEY_ID" (member names are case-sensitive: "key_id")`},
		{"Kelvin sign", KindAllowlistAdd, `{"\u212aey_id":"k","address":"a"}`,
			"allowlist_add parameters: unknown member \"\u212aey_id\" (member names are case-sensitive: \"key_id\")"},
		{"case in the rules", KindSetPolicy, `{"key_id":"k","rules":{"windows":[{"asset":"ETH","Duration":"1h","max":"1"}]}}`,
			`set_policy parameters: unknown member "rules.windows[0].Duration" (member names are case-sensitive: "duration")`},
		{"repeated", KindAddPrincipal, `{"name":"n","roles":["client"],"roles":["officer"]}`,
			`add_principal parameters: member "roles" appears more than once`},
		{"repeated by escape", KindCreateKey, `{"id":"a","\u0069d":"b"}`,
			`create_key parameters: member "id" appears more than once`},
		{"repeated key in the rules", KindSetPolicy, `{"key_id":"k","rules":{"per_tx_max":{"ETH":"1","ETH":"2"}}}`,
			`set_policy parameters: member "rules.per_tx_max.ETH" appears more than once`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			canon, err := CanonicalParams(tc.kind, []byte(tc.params))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var me *jsonstrict.MemberError
			if err == nil || err.Error() != tc.want || !errors.As(err, &me) {
				t.Fatalf("got %s, %v; want refused: %s", canon, err, tc.want)
			}
		})
	}
}

// TestCanonicalParamsTrailingData: parameters are one JSON value. (The API
// hands over only one, so this is for other callers.)
func TestCanonicalParamsTrailingData(t *testing.T) {
	for _, raw := range []string{`{"reason":"x"} {"reason":"y"}`, `{"reason":"x"}]`} {
		if _, err := CanonicalParams(KindUnfreeze, []byte(raw)); !errors.Is(err, jsonstrict.ErrTrailingData) {
			t.Errorf("%s: %v, want trailing data refused", raw, err)
		}
	}
	if _, err := CanonicalParams(KindUnfreeze, []byte("{\"reason\":\"x\"}\n ")); err != nil {
		t.Errorf("trailing white space: %v", err)
	}
}
