package policy

import (
	"errors"
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
