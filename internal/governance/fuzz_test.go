package governance

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/custodysigner/appliance/internal/jsonstrict/jsonstricttest"
	"github.com/custodysigner/appliance/internal/policy"
	"github.com/custodysigner/appliance/internal/store"
)

// fuzzKinds are the proposal kinds, plus one that does not exist.
var fuzzKinds = []string{KindUnfreeze, KindCreateKey, KindGrantKey, KindRevokeKey, KindAddPrincipal, KindRemovePrincipal,
	KindAddOfficer, KindRemoveOfficer, KindSetPolicy, KindAllowlistAdd, "delete_everything"}

// paramsOf returns a fresh value of the kind's parameter type.
func paramsOf(kind string) any {
	switch kind {
	case KindUnfreeze:
		return &UnfreezeParams{}
	case KindCreateKey:
		return &CreateKeyParams{}
	case KindGrantKey, KindRevokeKey:
		return &GrantKeyParams{}
	case KindAddPrincipal:
		return &PrincipalParams{}
	case KindRemovePrincipal, KindRemoveOfficer:
		return &NameParams{}
	case KindAddOfficer:
		return &OfficerParams{}
	case KindSetPolicy:
		return &SetPolicyParams{}
	case KindAllowlistAdd:
		return &AllowlistParams{}
	}
	return nil
}

// exampleOf is a value of the kind's parameter type whose JSON names every
// member (see jsonstricttest.ExactNames); nil for an unknown kind.
func exampleOf(kind string) any {
	switch kind {
	case KindUnfreeze:
		return UnfreezeParams{Reason: "x"}
	case KindCreateKey:
		return CreateKeyParams{ID: "x", Label: "x", Algorithm: "x", Chain: "x", Network: "x", WrappedBackup: true}
	case KindGrantKey, KindRevokeKey:
		return GrantKeyParams{Principal: "x", KeyID: "x"}
	case KindAddPrincipal:
		return PrincipalParams{Name: "x", Roles: []string{"x"}, Keys: []string{"x"}}
	case KindRemovePrincipal, KindRemoveOfficer:
		return NameParams{Name: "x"}
	case KindAddOfficer:
		return OfficerParams{Name: "x", ApprovalKey: []byte("x")}
	case KindSetPolicy:
		rate := &policy.Rate{PerSecond: 1, Burst: 1}
		return SetPolicyParams{KeyID: "x", Rules: policy.Rules{PerTxMax: map[string]string{"*": "x"},
			Windows: []policy.Window{{Asset: "x", Duration: "x", Max: "x"}}, RatePerClient: rate, RatePerKey: rate,
			Allowlist: true, AllowlistDelay: "x", MaxFeePerGas: "x", MaxPriorityFeePerGas: "x", MaxFeeRate: 1, MaxFee: "x",
			Contracts: map[string][]string{"*": {"x"}}, ApprovalAbove: map[string]string{"*": "x"},
			ApprovalForNonAllowlisted: true, ApprovalForContractCalls: true, Approvals: 1}}
	case KindAllowlistAdd:
		return AllowlistParams{KeyID: "x", Address: "x"}
	}
	return nil
}

// FuzzCanonicalParams: the parameters of every proposal kind (the "params"
// of POST /v1/proposals, what officers' approvals bind). Any bytes are
// refused or canonicalised, never a panic; an unknown kind is always
// refused; accepted parameters name each member exactly as its field, once
// per object (by the oracle of jsonstricttest); the canonical form is a
// fixed point (canonicalising it again gives the same bytes, so the digest
// officers sign is the digest that is stored); it decodes strictly into
// the same value; the kind's rules hold for it; the executor's plain
// json.Unmarshal reads the same value; and a set_policy's rules are
// readable by policy.ParseRules, the function that reads stored rules back
// (otherwise an approved policy would brick its key).
// The digest binds the parameters: other canonical bytes, another digest.
func FuzzCanonicalParams(f *testing.F) {
	for _, s := range []struct {
		kind   uint8
		params string
	}{
		{0, `{"reason":"drill over"}`},
		{1, `{"id":"eth-hot-2","label":"hot wallet 2","algorithm":"secp256k1","chain":"ethereum","network":"1","wrapped_backup":true}`},
		{2, `{"principal":"spiffe://custody/wallet","key_id":"eth-hot-2"}`},
		{4, `{"name":"spiffe://custody/auditor-2","roles":["auditor"]}`},
		{4, `{"name":"wallet-2","roles":["client"],"keys":["eth-dev","btc-dev"]}`},
		{6, `{"name":"officer-4","approval_key":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}`},
		{7, `{"name":"officer-2"}`},
		{8, `{"key_id":"eth-dev","rules":{"per_tx_max":{"ETH":"1000000000000000000"},"windows":[{"asset":"ETH","duration":"24h","max":"5000000000000000000"}],"approval_above":{"ETH":"500000000000000000"},"approvals":2}}`},
		{9, `{"key_id":"btc-dev","address":"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"}`},
		{1, `{"id":"Bad ID"}`}, {6, `{"name":"o","approval_key":"AAAA"}`}, {0, ``}, {0, `null`}, {0, `{"reason":1}`},
		{3, `{"principal":"","key_id":"k"}`}, {10, `{}`}, {0, `{"reason":"x"} {"reason":"y"}`},
		{0, `{"Reason":"x"}`}, {4, `{"name":"n","roles":["client"],"roles":["officer"]}`}, {1, `{"id":"a","\u0069d":"b"}`},
		{8, `{"key_id":"k","rules":{"windows":[{"asset":"ETH","Duration":"1h","max":"1"}]}}`},
		{8, `{"key_id":"k","rules":{"per_tx_max":{"ETH":"1","ETH":"2"}}}`}, {9, `{"\u212aey_id":"k","address":"a"}`},
	} {
		f.Add(s.kind, []byte(s.params))
	}
	f.Fuzz(func(t *testing.T, k uint8, raw []byte) {
		kind := fuzzKinds[int(k)%len(fuzzKinds)]
		canon, err := CanonicalParams(kind, raw)
		if err != nil {
			if canon != nil {
				t.Fatalf("refusal with parameters %s", canon)
			}
			return
		}
		if paramsOf(kind) == nil {
			t.Fatalf("unknown kind %q accepted", kind)
		}
		if exact, err := jsonstricttest.ExactNames(raw, exampleOf(kind)); err != nil || !exact {
			t.Fatalf("%s: accepted %q, whose member names are not each exactly a field's, once (%v)", kind, raw, err)
		}
		again, err := CanonicalParams(kind, canon)
		if err != nil || !bytes.Equal(again, canon) {
			t.Fatalf("%s: canonical %s is not a fixed point: %s (%v)", kind, canon, again, err)
		}
		strict, plain := paramsOf(kind), paramsOf(kind)
		dec := json.NewDecoder(bytes.NewReader(canon))
		dec.DisallowUnknownFields()
		if err := dec.Decode(strict); err != nil {
			t.Fatalf("%s: canonical %s does not decode strictly: %v", kind, canon, err)
		}
		if err := json.Unmarshal(canon, plain); err != nil || !reflect.DeepEqual(strict, plain) {
			t.Fatalf("%s: the executor reads %s differently: %+v vs %+v (%v)", kind, canon, plain, strict, err)
		}
		switch p := strict.(type) {
		case *CreateKeyParams:
			if !idPattern.MatchString(p.ID) {
				t.Fatalf("create_key id %q", p.ID)
			}
		case *GrantKeyParams:
			if p.Principal == "" || p.KeyID == "" {
				t.Fatalf("%s %+v", kind, p)
			}
		case *PrincipalParams:
			if p.Name == "" || len(p.Roles) == 0 {
				t.Fatalf("add_principal %+v", p)
			}
			for _, r := range p.Roles {
				if !roles[r] {
					t.Fatalf("add_principal role %q", r)
				}
			}
		case *NameParams:
			if p.Name == "" {
				t.Fatalf("%s without a name", kind)
			}
		case *OfficerParams:
			if p.Name == "" || len(p.ApprovalKey) != ed25519.PublicKeySize {
				t.Fatalf("add_officer %+v", p)
			}
		case *SetPolicyParams:
			body, err := json.Marshal(p.Rules)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := policy.ParseRules(body); p.KeyID == "" || err != nil {
				t.Fatalf("set_policy %s: stored rules %s are unreadable: %v", canon, body, err)
			}
		case *AllowlistParams:
			if p.KeyID == "" || p.Address == "" {
				t.Fatalf("allowlist_add %+v", p)
			}
		}
		prop := store.Proposal{ID: "prop_x", Kind: kind, Params: canon, Threshold: 2,
			CreatedAt: time.Unix(1_900_000_000, 0), ExpiresAt: time.Unix(1_900_086_400, 0)}
		d := Digest(prop)
		prop.Params = append(append([]byte{}, canon...), ' ')
		if bytes.Equal(Digest(prop), d) || len(d) != 32 {
			t.Fatal("the digest does not bind the parameters")
		}
	})
}
