package policy

import (
	"errors"
	"strings"
	"testing"
)

// Rules are one JSON object and nothing after it (a fuzzing finding: stray
// closing brackets used to pass).
func TestParseRulesRefusesTrailingData(t *testing.T) {
	if _, err := ParseRules([]byte(`{"approvals":1}`)); err != nil {
		t.Fatalf("plain rules: %v", err)
	}
	if _, err := ParseRules([]byte("{\"approvals\":1}\n  ")); err != nil {
		t.Fatalf("rules with trailing white space: %v", err)
	}
	for _, in := range []string{`{"approvals":1}]`, `{"approvals":1}}`, `{"approvals":1}{}`, `{"approvals":1} 1`, `{"approvals":1},`} {
		if _, err := ParseRules([]byte(in)); !errors.Is(err, ErrInvalidRules) {
			t.Errorf("ParseRules(%s) = %v, want ErrInvalidRules", in, err)
		}
	}
}

// Rules name each member exactly as its field, once per object, at every
// depth: encoding/json alone takes "Approvals" for approvals and keeps the
// last of two, so a reviewer reading the first would be shown other rules
// than those enforced.
func TestParseRulesMemberNames(t *testing.T) {
	if _, err := ParseRules([]byte(`{"windows":[{"asset":"ETH","duration":"1h","max":"1"}],"approval_above":{"ETH":"1"},"approvals":1}`)); err != nil {
		t.Fatalf("exact rules: %v", err)
	}
	for in, want := range map[string]string{
		`{"Approvals":1}`:                                         `unknown member "Approvals" (member names are case-sensitive: "approvals")`,
		`{"approvals":1,"approvals":3}`:                           `member "approvals" appears more than once`,
		`{"windows":[{"asset":"ETH","DURATION":"1h","max":"1"}]}`: `unknown member "windows[0].DURATION"`,
		`{"per_tx_max":{"ETH":"1","ETH":"1000"}}`:                 `member "per_tx_max.ETH" appears more than once`,
		`{"rate_per_key":{"per_second":1,"burst":1,"burst":100}}`: `member "rate_per_key.burst" appears more than once`,
	} {
		_, err := ParseRules([]byte(in))
		if !errors.Is(err, ErrInvalidRules) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseRules(%s) = %v, want ErrInvalidRules with %s", in, err, want)
		}
	}
}
