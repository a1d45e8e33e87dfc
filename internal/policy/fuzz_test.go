package policy

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzRulesJSON: any bytes given as rules are either refused with
// ErrInvalidRules or accepted, never a panic; accepted rules survive a
// round trip through their stored JSON form.
func FuzzRulesJSON(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"per_tx_max":{"ETH":"100"},"windows":[{"asset":"ETH","duration":"1h","max":"50"}]}`,
		`{"rate_per_client":{"per_second":1.5,"burst":3},"rate_per_key":{"per_second":0,"burst":0}}`,
		`{"allowlist":true,"allowlist_delay":"24h","approval_for_non_allowlisted":true,"approvals":2}`,
		`{"max_fee_per_gas":"100","max_priority_fee_per_gas":"2","max_fee_rate":50,"max_fee":"10000"}`,
		`{"contracts":{"0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48":["0xa9059cbb"]},"approval_for_contract_calls":true,"approvals":1}`,
		`{"approval_above":{"eth":"1","ETH":"2"},"approvals":-1}`,
		`{"windows":[{"asset":"x","duration":"-1h","max":"1e9"}]}`, `null`, `[]`, `{"unknown":1}`, `{} {}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRules(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidRules) {
				t.Fatalf("error not wrapping ErrInvalidRules: %v", err)
			}
			return
		}
		body, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal accepted rules: %v", err)
		}
		if _, err := ParseRules(body); err != nil {
			t.Fatalf("stored form of accepted rules refused: %v\n%s", err, body)
		}
	})
}
