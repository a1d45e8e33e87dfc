package api

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/http"
	"reflect"
	"testing"

	"github.com/custodysigner/appliance/internal/address"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/ethereum"
	"github.com/custodysigner/appliance/internal/governance"
	"github.com/custodysigner/appliance/internal/jsonstrict/jsonstricttest"
	"github.com/custodysigner/appliance/internal/signing"
)

// Every JSON request body the API accepts has a target here (the batch
// body's is FuzzDecodeSignBatch). Each sends arbitrary bytes through the
// real server and checks, besides the envelope post checks for every
// answer (JSON, no 5xx, a stable error code with its documented status):
//   - a body the strict decoder refuses is a 400 bad_request (413 past the
//     limit) and reaches nothing;
//   - what reaches a collaborator is what the body said: sent again in its
//     re-encoded form it arrives unchanged (decode → encode → decode);
//   - the endpoint's own rules (required fields, base64, share format,
//     proposal parameters, address validity) hold for everything accepted.
// The committed seeds (testdata/fuzz) are the bodies of docs/API.md, bodies
// carrying the public test vectors, and malformed variants.

// ethSeedPayload is an EIP-1559 transfer on chain 1 (the harness key's), to
// an address on no list.
func ethSeedPayload(data []byte) string {
	to, _ := ethereum.ParseAddress("0x1111111111111111111111111111111111111111")
	tx := ethereum.Tx{Type: ethereum.TypeDynamicFee, ChainID: big.NewInt(1), Nonce: 7,
		MaxPriorityFeePerGas: big.NewInt(1e9), MaxFeePerGas: big.NewInt(30e9), Gas: 60_000,
		To: &to, Value: big.NewInt(0), Data: data}
	if len(data) == 0 {
		tx.Value = big.NewInt(1e15)
	}
	return "0x" + hex.EncodeToString(tx.UnsignedPayload())
}

func FuzzSignBody(f *testing.F) {
	h := newFuzzHarness(f)
	erc20 := mustHex("a9059cbb" + "000000000000000000000000" + "2222222222222222222222222222222222222222" +
		"00000000000000000000000000000000000000000000000000000000000f4240")
	for _, b := range []SignBody{
		{KeyID: fuzzEthKey, Chain: "ethereum", Network: "1", Payload: ethSeedPayload(nil), IdempotencyKey: "w-1"},
		{KeyID: fuzzEthKey, Chain: "ethereum", Network: "mainnet", Payload: ethSeedPayload(erc20),
			Expect: &signing.Expect{Destination: "0x2222222222222222222222222222222222222222", Amount: "1000000"}},
		{KeyID: fuzzBTCKey, Chain: "bitcoin", Network: "mainnet", Payload: psbtSeed(f, 1), IdempotencyKey: "w-2",
			Expect: &signing.Expect{Destination: "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", Amount: "50000", Asset: "BTC"}},
		{KeyID: fuzzBTCKey, Chain: "bitcoin", Payload: psbtSeed(f, 2), Expect: &signing.Expect{Amount: "49000"}},
	} {
		f.Add(reencode(f, b))
	}
	f.Add([]byte(`{"key_id":"eth-dev","chain":"ethereum","payload":"` + ethSeedPayload(nil) + `","expect":{"amount":"1","Amount":"2"}}`))
	f.Add([]byte(`{"key_id":"eth-dev","chain":"ethereum","payload":"` + ethSeedPayload(nil) + `","expect":{"amount":"1","amount":"2"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a := h.post(t, fuzzClient, "/v1/sign", data)
		rec := h.signer.take()
		if a.status != http.StatusOK {
			if rec != nil || !isDecodeRefusal(a) {
				t.Fatalf("/v1/sign refused %q with %d %s (reached the signer: %v)", data, a.status, a.code, rec != nil)
			}
		} else {
			if rec == nil || rec.op != "sign" {
				t.Fatalf("/v1/sign answered 200 for %q without reaching the signer", data)
			}
			if !strictShape(data) {
				t.Fatalf("/v1/sign accepted %q, which is not one JSON object", data)
			}
			if exact, err := jsonstricttest.ExactNames(data, signBodyExample); err != nil || !exact {
				t.Fatalf("/v1/sign accepted %q, whose member names are not each exactly a field's, once", data)
			}
			if again := h.post(t, fuzzClient, "/v1/sign", reencode(t, SignBody(rec.sign))); again.status != http.StatusOK {
				t.Fatalf("re-encoded request refused: %d %s", again.status, again.code)
			}
			if rec2 := h.signer.take(); rec2 == nil || !reflect.DeepEqual(rec2.sign, rec.sign) {
				t.Fatalf("round trip changed the request: %+v then %+v", rec.sign, rec2)
			}
		}

		// The dry run decodes with the same decoder and then runs the real
		// payload decoding, network, expect and screening checks.
		ev := h.post(t, fuzzClient, "/v1/policy/evaluate", data)
		if isDecodeRefusal(a) != isDecodeRefusal(ev) || (isDecodeRefusal(a) && a.status != ev.status) {
			t.Fatalf("/v1/sign answered %d %s but /v1/policy/evaluate %d %s for %q", a.status, a.code, ev.status, ev.code, data)
		}
		switch {
		case ev.status == http.StatusOK:
			var e signing.Evaluation
			if err := json.Unmarshal(ev.body, &e); err != nil {
				t.Fatal(err)
			}
			switch e.Decision {
			case "allow":
				if e.Code != "" {
					t.Fatalf("allow with code %s", e.Code)
				}
			case "deny":
				if e.Code != apierr.CodePolicyDenied && e.Code != apierr.CodeAddressDenied && e.Code != apierr.CodeAddressInvalid {
					t.Fatalf("deny with code %q: %s", e.Code, ev.body)
				}
			default:
				t.Fatalf("decision %q without policy rules: %s", e.Decision, ev.body)
			}
			if len(e.Intent) == 0 || !json.Valid(e.Intent) {
				t.Fatalf("evaluation without an intent: %s", ev.body)
			}
		case isDecodeRefusal(ev):
		default:
			switch ev.code {
			case apierr.CodeNotFound, apierr.CodeDecodeFailed, apierr.CodeUnsupported, apierr.CodeWrongNetwork,
				apierr.CodeAddressInvalid, apierr.CodePolicyDenied:
			default:
				t.Fatalf("/v1/policy/evaluate refused %q with %d %s", data, ev.status, ev.code)
			}
		}
	})
}

func FuzzAllowlistBody(f *testing.F) {
	h := newFuzzHarness(f)
	f.Add([]byte(`{"key_id":"eth-dev","address":"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a := h.post(t, fuzzOfficer, "/v1/allowlist", data)
		rec := h.signer.take()
		if a.status != http.StatusCreated {
			if rec != nil || (a.status != http.StatusBadRequest && a.status != http.StatusRequestEntityTooLarge) {
				t.Fatalf("refused %q with %d %s (reached the signer: %v)", data, a.status, a.code, rec != nil)
			}
			return
		}
		if rec == nil || rec.key == "" || rec.text == "" || !strictShape(data) {
			t.Fatalf("accepted %q as %+v", data, rec)
		}
		if again := h.post(t, fuzzOfficer, "/v1/allowlist", reencode(t, allowlistBody{KeyID: rec.key, Address: rec.text})); again.status != http.StatusCreated {
			t.Fatalf("re-encoded body refused: %d %s", again.status, again.code)
		}
		if rec2 := h.signer.take(); rec2 == nil || !reflect.DeepEqual(rec2, rec) {
			t.Fatalf("round trip changed %+v into %+v", rec, rec2)
		}
	})
}

// FuzzReasonBody covers the two {"reason"} bodies: POST /v1/freeze and POST
// /v1/requests/{id}/rejections. Both take the same bytes the same way.
func FuzzReasonBody(f *testing.F) {
	h := newFuzzHarness(f)
	f.Add([]byte(`{"reason":"suspected key compromise"}`))
	const rejections = "/v1/requests/" + fuzzRequest + "/rejections"
	f.Fuzz(func(t *testing.T, data []byte) {
		fz := h.post(t, fuzzOfficer, "/v1/freeze", data)
		frozen := h.seal.takeFreeze()
		rj := h.post(t, fuzzOfficer, rejections, data)
		rejected := h.signer.take()
		if fz.status != rj.status || fz.code != rj.code {
			t.Fatalf("%q: freeze %d %s, rejection %d %s", data, fz.status, fz.code, rj.status, rj.code)
		}
		if fz.status != http.StatusOK {
			if frozen != nil || rejected != nil || (fz.status != http.StatusBadRequest && fz.status != http.StatusRequestEntityTooLarge) {
				t.Fatalf("refused %q with %d %s, but it reached a collaborator", data, fz.status, fz.code)
			}
			return
		}
		if frozen == nil || rejected == nil || frozen.text == "" || frozen.text != rejected.text || frozen.key != fuzzOfficer ||
			rejected.id != fuzzRequest || !strictShape(data) {
			t.Fatalf("accepted %q as %+v and %+v", data, frozen, rejected)
		}
		if again := h.post(t, fuzzOfficer, "/v1/freeze", reencode(t, freezeBody{Reason: frozen.text})); again.status != http.StatusOK {
			t.Fatalf("re-encoded body refused: %d %s", again.status, again.code)
		}
		if f2 := h.seal.takeFreeze(); f2 == nil || !reflect.DeepEqual(f2, frozen) {
			t.Fatalf("round trip changed %+v into %+v", frozen, f2)
		}
	})
}

func FuzzUnsealBody(f *testing.F) {
	h := newFuzzHarness(f)
	for _, s := range h.seal.cer.Shares {
		f.Add(reencode(f, unsealBody{Share: s.Encode()}))
	}
	f.Add(reencode(f, unsealBody{Share: " " + h.seal.cer.Shares[0].Encode() + "\n"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		a := h.post(t, fuzzOfficer, "/v1/unseal", data)
		rec := h.seal.takeShare()
		switch {
		case isDecodeRefusal(a):
			if rec != nil {
				t.Fatalf("refused %q with %d but it reached the seal", data, a.status)
			}
			return
		case rec == nil:
			t.Fatalf("answered %d %s for %q without reaching the seal", a.status, a.code, data)
		}
		// The share is secret: no answer repeats it.
		if len(rec.text) >= 12 && bytes.Contains(a.body, []byte(rec.text)) {
			t.Fatalf("the answer repeats the share: %s", a.body)
		}
		switch a.status {
		case http.StatusOK:
			s, err := ceremony.ParseShare(rec.text)
			if err != nil || s.CeremonyID != h.seal.cer.ID {
				t.Fatalf("share %q accepted, but it is not one of this ceremony (%v)", rec.text, err)
			}
			var p struct {
				Sealed    bool `json:"sealed"`
				Progress  int  `json:"progress"`
				Threshold int  `json:"threshold"`
			}
			if err := json.Unmarshal(a.body, &p); err != nil || !p.Sealed || p.Progress != 1 || p.Threshold != 2 {
				t.Fatalf("one share of 2 answered %s", a.body)
			}
		case http.StatusUnprocessableEntity:
			if a.code != apierr.CodeShareInvalid {
				t.Fatalf("refused with %s", a.code)
			}
		default:
			t.Fatalf("%q answered %d %s", data, a.status, a.code)
		}
		again := h.post(t, fuzzOfficer, "/v1/unseal", reencode(t, unsealBody{Share: rec.text}))
		if rec2 := h.seal.takeShare(); again.status != a.status || again.code != a.code || rec2 == nil || rec2.text != rec.text {
			t.Fatalf("round trip of %q: %d %s, then %d %s", rec.text, a.status, a.code, again.status, again.code)
		}
	})
}

func FuzzProposeBody(f *testing.F) {
	h := newFuzzHarness(f)
	f.Add([]byte(`{"kind":"add_officer","params":{"name":"officer-3","approval_key":"` +
		base64.StdEncoding.EncodeToString(fuzzOfficerKey.Public().(ed25519.PublicKey)) + `"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a := h.post(t, fuzzOfficer, "/v1/proposals", data)
		var b proposeBody
		decodeErr := decodeStrict(bytes.NewReader(data), &b)
		if a.status != http.StatusAccepted {
			if !isDecodeRefusal(a) {
				t.Fatalf("refused %q with %d %s", data, a.status, a.code)
			}
			if decodeErr == nil && a.status == http.StatusBadRequest {
				if _, err := governance.CanonicalParams(b.Kind, b.Params); err == nil {
					t.Fatalf("refused %q, whose parameters are canonical", data)
				}
			}
			return
		}
		if decodeErr != nil {
			t.Fatalf("accepted %q, which the strict decoder refuses: %v", data, decodeErr)
		}
		var p ProposalBody
		if err := json.Unmarshal(a.body, &p); err != nil {
			t.Fatal(err)
		}
		canon, err := governance.CanonicalParams(b.Kind, b.Params)
		if err != nil || p.Kind != b.Kind || !bytes.Equal(p.Params, canon) || p.State != "pending" || p.Proposer != fuzzOfficer ||
			p.ApprovalsRequired != 2 || len(p.Approvals) != 0 || !p.ExpiresAt.After(p.CreatedAt) {
			t.Fatalf("proposal %s from %q (canonical %s, %v)", a.body, data, canon, err)
		}
		if d, err := hex.DecodeString(p.Digest); err != nil || len(d) != 32 {
			t.Fatalf("digest %q", p.Digest)
		}
		// The stored parameters are a fixed point: proposing them again
		// gives the same bytes.
		again := h.post(t, fuzzOfficer, "/v1/proposals", reencode(t, proposeBody{Kind: p.Kind, Params: p.Params}))
		var p2 ProposalBody
		if again.status != http.StatusAccepted || json.Unmarshal(again.body, &p2) != nil || !bytes.Equal(p2.Params, p.Params) {
			t.Fatalf("re-proposing %s answered %d %s", p.Params, again.status, again.body)
		}
	})
}

// FuzzApprovalBody sends the same {"signature"} body to both approval
// endpoints: a pending request's (recorded) and a pending proposal's (the
// real governance service, whose officer key the harness holds).
func FuzzApprovalBody(f *testing.F) {
	h := newFuzzHarness(f)
	f.Add([]byte(`{"signature":"` + validApproval() + `"}`))
	const requests, proposals = "/v1/requests/" + fuzzRequest + "/approvals", "/v1/proposals/" + fuzzProposal + "/approvals"
	f.Fuzz(func(t *testing.T, data []byte) {
		rq := h.post(t, fuzzOfficer, requests, data)
		rec := h.signer.take()
		pr := h.post(t, fuzzOfficer, proposals, data)
		if rq.status != http.StatusOK {
			if rec != nil || !isDecodeRefusal(rq) || pr.status != rq.status || pr.code != rq.code {
				t.Fatalf("%q: request approval %d %s (recorded %v), proposal approval %d %s", data, rq.status, rq.code, rec != nil, pr.status, pr.code)
			}
			return
		}
		var b approvalBody
		if err := decodeStrict(bytes.NewReader(data), &b); err != nil {
			t.Fatalf("accepted %q, which the strict decoder refuses: %v", data, err)
		}
		sig, err := base64.StdEncoding.DecodeString(b.Signature)
		if err != nil || rec == nil || rec.id != fuzzRequest || !bytes.Equal(rec.sig, sig) {
			t.Fatalf("%q: signature %q reached the signer as %x (%v)", data, b.Signature, rec.sig, err)
		}
		valid := len(sig) == ed25519.SignatureSize && ed25519.Verify(fuzzOfficerKey.Public().(ed25519.PublicKey), h.proposal.Digest, sig)
		switch {
		case valid && pr.status != http.StatusOK:
			t.Fatalf("a valid approval was refused: %d %s", pr.status, pr.body)
		case !valid && (pr.status != http.StatusUnprocessableEntity || pr.code != apierr.CodeApprovalInvalid):
			t.Fatalf("an invalid approval %x answered %d %s", sig, pr.status, pr.body)
		}
		again := h.post(t, fuzzOfficer, requests, reencode(t, approvalBody{Signature: base64.StdEncoding.EncodeToString(rec.sig)}))
		if rec2 := h.signer.take(); again.status != http.StatusOK || rec2 == nil || !bytes.Equal(rec2.sig, rec.sig) {
			t.Fatalf("round trip of %x: %d %s", rec.sig, again.status, again.code)
		}
	})
}

func FuzzValidateBody(f *testing.F) {
	h := newFuzzHarness(f)
	f.Add([]byte(`{"chain":"bitcoin","network":"mainnet","address":"BC1QRP33G0Q5C5TXSP9ARYSRX4K6ZDKFS4NCE4XJ0GDCCCEFVPYSXF3QCCFMV3"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a := h.post(t, fuzzClient, "/v1/addresses/validate", data)
		var b validateBody
		decodeErr := decodeStrict(bytes.NewReader(data), &b)
		switch a.status {
		case http.StatusOK:
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if decodeErr == nil && b.Chain != "" && b.Address != "" && a.status == http.StatusBadRequest {
				t.Fatalf("refused %q, which has a chain and an address", data)
			}
			return
		case http.StatusUnprocessableEntity:
			_, err := address.Validate(b.Chain, b.Network, b.Address, nil)
			if err == nil || (a.code != apierr.CodeUnsupported && a.code != apierr.CodeWrongNetwork) {
				t.Fatalf("%q answered %d %s (%v)", data, a.status, a.code, err)
			}
			return
		default:
			t.Fatalf("%q answered %d %s", data, a.status, a.code)
		}
		if decodeErr != nil {
			t.Fatalf("accepted %q, which the strict decoder refuses: %v", data, decodeErr)
		}
		var r address.Result
		if err := json.Unmarshal(a.body, &r); err != nil {
			t.Fatal(err)
		}
		if !r.Valid {
			if r.Reason == "" || r.Normalized != "" || r.KnownRisk != nil {
				t.Fatalf("invalid address answered %s", a.body)
			}
			return
		}
		if r.Normalized == "" || r.Type == "" || r.Reason != "" || (r.KnownRisk != nil) != riskyAddresses[r.Normalized] {
			t.Fatalf("valid address answered %s", a.body)
		}
		// The normal form is a fixed point: validated again it is the same
		// address of the same type (and on the same list).
		again := h.post(t, fuzzClient, "/v1/addresses/validate", reencode(t, validateBody{Chain: b.Chain, Network: b.Network, Address: r.Normalized}))
		var r2 address.Result
		if again.status != http.StatusOK || json.Unmarshal(again.body, &r2) != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("normal form %q validates as %d %s", r.Normalized, again.status, again.body)
		}
	})
}

// signBodyExample names every member of a sign body (see
// jsonstricttest.ExactNames).
var signBodyExample = SignBody{KeyID: "x", Chain: "x", Network: "x", Payload: "x", IdempotencyKey: "x",
	Expect: &signing.Expect{Destination: "x", Amount: "x", Asset: "x"}}

// FuzzStrictMembers: decodeStrict accepts one of the API's bodies exactly
// when encoding/json does and an independent oracle finds every member name
// exactly a field's, never twice in one object, and refuses it 400
// bad_request (checkStrict). The checker itself is fuzzed in package
// jsonstrict (FuzzDecode).
func FuzzStrictMembers(f *testing.F) {
	for _, c := range strictCases {
		f.Add([]byte(c))
	}
	f.Fuzz(checkStrict)
}
