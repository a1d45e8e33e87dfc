package api

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/access"
	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/audit"
	"github.com/custodysigner/appliance/internal/bitcoin/bitcointest"
	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/ethereum"
	"github.com/custodysigner/appliance/internal/governance"
	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/screening"
	"github.com/custodysigner/appliance/internal/seal"
	"github.com/custodysigner/appliance/internal/signing"
	"github.com/custodysigner/appliance/internal/store"
)

// The fuzz targets of this package's request bodies drive the real server
// (routing, middleware, body limit, strict decoding, error handler) through
// Handler, with a principal taken from a fake verified certificate. Behind
// it sit the real collaborators wherever they work without a database:
// signing.Service.Evaluate (payload decoding, network and expect checks),
// governance.Service (parameter canonicalisation, approval verification),
// seal.Manager (share parsing and progress) and address.Validate. Actions
// that need a database (sign, approve or reject a request, allowlist,
// freeze) are recorded instead, so a target can check exactly what the
// decoder handed on.

const (
	fuzzClient    = "client-1"
	fuzzOfficer   = "officer-1"
	fuzzEthKey    = "eth-dev"
	fuzzBTCKey    = "btc-dev"
	fuzzProposal  = "prop_fuzz"
	fuzzRequest   = "req_fuzz"
	fuzzBodyLimit = 8 << 10
)

// Keys of the harness, from public test vectors: the EIP-155 example's
// private key (chain id 1) and BIP-143's native P2WPKH input key.
var (
	fuzzEthPriv = mustHex("4646464646464646464646464646464646464646464646464646464646464646")
	fuzzBTCPub  = mustHex("025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357")
	// fuzzOfficerKey approves proposals; its seed is fixed so committed
	// seeds can carry a valid signature.
	fuzzOfficerKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x0f}, ed25519.SeedSize))
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// stableCodes are the error codes of apierr: every refusal must carry one.
var stableCodes = map[string]bool{
	apierr.CodeBadRequest: true, apierr.CodeForbidden: true, apierr.CodePolicyDenied: true, apierr.CodeLimitExceeded: true,
	apierr.CodeAddressDenied: true, apierr.CodeNotFound: true, apierr.CodeMethodNotAllowed: true,
	apierr.CodeIdempotencyConflict: true, apierr.CodeTooLarge: true, apierr.CodeDecodeFailed: true,
	apierr.CodeAddressInvalid: true, apierr.CodeWrongNetwork: true, apierr.CodeUnsupported: true,
	apierr.CodeRateLimited: true, apierr.CodeSealed: true, apierr.CodeFrozen: true, apierr.CodeHSMUnavailable: true,
	apierr.CodeUnavailable: true, apierr.CodeInternal: true, apierr.CodeShareInvalid: true,
	apierr.CodeApprovalInvalid: true, apierr.CodeDuplicateApproval: true, apierr.CodeExpired: true, apierr.CodeConflict: true,
}

// fuzzHarness is a Server over the collaborators above.
type fuzzHarness struct {
	srv      *Server
	signer   *recordingSigner
	seal     *fuzzSeal
	proposal store.Proposal // the pending proposal officers approve
}

// recorded is what a recording collaborator received.
type recorded struct {
	op   string
	sign signing.Request
	id   string
	sig  []byte
	text string // reason, address
	key  string
}

// recordingSigner answers Evaluate with the real signing service and
// records the actions that need a database.
type recordingSigner struct {
	*signing.Service
	mu   sync.Mutex
	last *recorded
}

func (r *recordingSigner) record(rec recorded) {
	r.mu.Lock()
	r.last = &rec
	r.mu.Unlock()
}

// take returns and clears what was recorded since the last take.
func (r *recordingSigner) take() *recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := r.last
	r.last = nil
	return rec
}

func (r *recordingSigner) Sign(_ context.Context, _ *access.Principal, req signing.Request) (*signing.Result, error) {
	r.record(recorded{op: "sign", sign: req})
	return &signing.Result{RequestID: "req_recorded", State: store.StateSigned, SignedTx: "0x00", TxHash: "0x00"}, nil
}

func (r *recordingSigner) Approve(_ context.Context, _ *access.Principal, id string, sig []byte) (store.Request, error) {
	r.record(recorded{op: "approve", id: id, sig: sig})
	return store.Request{ID: id, State: store.StatePendingApproval}, nil
}

func (r *recordingSigner) Reject(_ context.Context, _ *access.Principal, id, reason string) (store.Request, error) {
	r.record(recorded{op: "reject", id: id, text: reason})
	return store.Request{ID: id, State: "rejected"}, nil
}

func (r *recordingSigner) AddAllowlist(_ context.Context, _ *access.Principal, keyID, addr string) (*signing.Allowlisted, error) {
	r.record(recorded{op: "allowlist", key: keyID, text: addr})
	return &signing.Allowlisted{KeyID: keyID, Address: addr}, nil
}

// fuzzSeal submits shares to a real seal.Manager, new for every request so
// that one input never depends on another, and records freezes.
type fuzzSeal struct {
	cer    *ceremony.Ceremony
	mu     sync.Mutex
	frozen *recorded
	share  *recorded
}

func (s *fuzzSeal) manager(ctx context.Context) (*seal.Manager, error) {
	return seal.New(ctx, sealStore{cer: s.cer}, nopUnsealer{}, seal.Options{Log: zap.NewNop()})
}

func (s *fuzzSeal) SubmitShare(ctx context.Context, officer, share string) (seal.Progress, error) {
	s.mu.Lock()
	s.share = &recorded{op: "unseal", text: share, key: officer}
	s.mu.Unlock()
	m, err := s.manager(ctx)
	if err != nil {
		return seal.Progress{}, err
	}
	return m.SubmitShare(ctx, officer, share)
}

func (s *fuzzSeal) Freeze(_ context.Context, by, reason string) error {
	s.mu.Lock()
	s.frozen = &recorded{op: "freeze", text: reason, key: by}
	s.mu.Unlock()
	return nil
}

func (s *fuzzSeal) takeFreeze() *recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.frozen
	s.frozen = nil
	return r
}

func (s *fuzzSeal) takeShare() *recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.share
	s.share = nil
	return r
}

func (s *fuzzSeal) State() seal.State { return seal.State{Sealed: true, Frozen: true} }

// sealStore holds one ceremony and no freeze; audit records are accepted.
type sealStore struct{ cer *ceremony.Ceremony }

func (s sealStore) GetCeremony(context.Context) (store.Ceremony, error) {
	return store.Ceremony{ID: s.cer.ID[:], Threshold: s.cer.Threshold, Total: s.cer.Total, Verifier: s.cer.Verifier}, nil
}
func (sealStore) GetFreeze(context.Context) (store.FreezeState, error) {
	return store.FreezeState{}, nil
}
func (sealStore) WriteTx(context.Context, func(*store.Tx) error) error {
	return fmt.Errorf("the fuzz harness has no database")
}
func (sealStore) RecordAudit(context.Context, audit.Record) error { return nil }

type nopUnsealer struct{}

func (nopUnsealer) Unseal(context.Context, []byte) error { return nil }
func (nopUnsealer) Seal()                                {}

// govStore serves one pending proposal and one officer key; writes are
// dropped (a proposal is created and approved, never persisted).
type govStore struct {
	p store.Proposal
}

func (g govStore) WriteTx(context.Context, func(*store.Tx) error) error { return nil }
func (g govStore) GetProposal(_ context.Context, id string) (store.Proposal, error) {
	if id != g.p.ID {
		return store.Proposal{}, store.ErrNotFound
	}
	return g.p, nil
}
func (g govStore) ListProposals(context.Context, string, int) ([]store.Proposal, error) {
	return []store.Proposal{g.p}, nil
}
func (g govStore) OfficerKey(_ context.Context, name string) (ed25519.PublicKey, error) {
	if name != fuzzOfficer {
		return nil, store.ErrNotFound
	}
	return fuzzOfficerKey.Public().(ed25519.PublicKey), nil
}
func (g govStore) GetCeremony(context.Context) (store.Ceremony, error) {
	return store.Ceremony{}, store.ErrNotFound
}

type nopExecutor struct{}

func (nopExecutor) Execute(context.Context, *store.Tx, store.Proposal) (string, error) {
	return "", fmt.Errorf("the fuzz harness executes nothing")
}
func (nopExecutor) After(context.Context, store.Proposal) {}

// noDatabase is the signing service's store, gate and HSM: Evaluate without
// policy rules must need none of them, so any call fails the target (a
// panic is a 500).
type noDatabase struct{ signing.Store }
type noGate struct{ signing.Gate }

// fuzzProposalFixed is the pending proposal approvals go to.
func fuzzProposalFixed() store.Proposal {
	p := store.Proposal{ID: fuzzProposal, Kind: governance.KindUnfreeze, Params: []byte(`{"reason":"drill over"}`),
		Proposer: "officer-2", State: store.ProposalPending, Threshold: 2,
		CreatedAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), ExpiresAt: time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)}
	p.Digest = governance.Digest(p)
	return p
}

func uncompressed(tb testing.TB, pub []byte) []byte {
	k, err := secp256k1.ParsePubKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	return k.SerializeUncompressed()
}

func newFuzzHarness(tb testing.TB) *fuzzHarness {
	tb.Helper()
	ctx := context.Background()
	ethPub := secp256k1.PrivKeyFromBytes(fuzzEthPriv).PubKey().SerializeUncompressed()
	ethAddr, err := ethereum.AddressFromPublicKey(ethPub)
	if err != nil {
		tb.Fatal(err)
	}
	keys, err := signing.LoadKeyring(ctx, keyList{
		{ID: fuzzEthKey, Label: fuzzEthKey, CKAID: []byte{1}, Algorithm: store.AlgSecp256k1, Chain: "ethereum", Network: "1",
			PublicKey: ethPub, Address: ethAddr.Hex()},
		{ID: fuzzBTCKey, Label: fuzzBTCKey, CKAID: []byte{2}, Algorithm: store.AlgSecp256k1, Chain: "bitcoin", Network: "mainnet",
			PublicKey: uncompressed(tb, fuzzBTCPub)},
	})
	if err != nil {
		tb.Fatal(err)
	}
	svc, err := signing.New(noDatabase{}, noGate{}, func() signing.Signer { return nil }, keys, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	svc.ScreenWith(riskList{})
	cer, err := ceremony.NewCeremony(2, 3)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(cer.Secret.Destroy)
	h := &fuzzHarness{signer: &recordingSigner{Service: svc}, seal: &fuzzSeal{cer: cer}, proposal: fuzzProposalFixed()}
	gov, err := governance.New(ctx, govStore{p: h.proposal}, nopExecutor{}, 2, time.Hour, zap.NewNop())
	if err != nil {
		tb.Fatal(err)
	}
	h.srv, err = New(Deps{
		Log: zap.NewNop(),
		Access: access.NewRegistry([]config.Principal{
			{Name: fuzzClient, Roles: []string{"client"}, Keys: []string{fuzzEthKey, fuzzBTCKey}},
			{Name: fuzzOfficer, Roles: []string{"officer"}},
		}),
		Signer:     h.signer,
		Keys:       keys,
		Health:     health.NewChecker(time.Second, time.Second),
		Status:     func(context.Context) any { return map[string]string{} },
		Seal:       h.seal,
		Governance: gov,
		Screener:   riskList{},
		HTTP:       config.HTTP{MaxBodyBytes: fuzzBodyLimit},
		TLS:        &tls.Config{},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

type keyList []store.Key

func (l keyList) ListKeys(context.Context) ([]store.Key, error) { return l, nil }

// riskList flags one address of each chain: the EIP-155 example's
// recipient and BIP-173's mainnet P2WSH example.
type riskList struct{}

var riskyAddresses = map[string]bool{
	"0x3535353535353535353535353535353535353535":                     true,
	"bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3": true,
}

func (riskList) Check(chain screening.Chain, addr string) (*screening.Hit, error) {
	if riskyAddresses[addr] {
		return &screening.Hit{List: "fuzz", Version: "v1", Address: addr}, nil
	}
	return nil, nil
}

// answer is one response of the server.
type answer struct {
	status int
	body   []byte
	code   string // the error code of a non-2xx answer
}

// post sends body to path as principal and checks the envelope every answer
// must have: JSON, never a 5xx for anything a client can send (the
// collaborators here never fail), and a refusal is the error object with a
// stable code.
func (h *fuzzHarness) post(t testing.TB, principal, path string, body []byte) answer {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{{Subject: pkix.Name{CommonName: principal}}}}
	rec := httptest.NewRecorder()
	h.srv.Handler().ServeHTTP(rec, req)
	a := answer{status: rec.Code, body: rec.Body.Bytes()}
	if a.status >= 500 {
		t.Fatalf("POST %s answered %d for %q: %s", path, a.status, body, a.body)
	}
	if !json.Valid(a.body) {
		t.Fatalf("POST %s answered %d with a body that is not JSON: %q", path, a.status, a.body)
	}
	if a.status >= 400 {
		var env struct {
			Error *apierr.BodyError `json:"error"`
		}
		if err := json.Unmarshal(a.body, &env); err != nil || env.Error == nil || !stableCodes[env.Error.Code] || env.Error.Message == "" {
			t.Fatalf("POST %s answered %d without a stable error object: %s", path, a.status, a.body)
		}
		a.code = env.Error.Code
		if want := codeStatus(a.code); want != 0 && want != a.status {
			t.Fatalf("POST %s: code %s with status %d, want %d", path, a.code, a.status, want)
		}
	}
	return a
}

// codeStatus is the status each code is documented with (docs/API.md), 0
// when a code has more than one.
func codeStatus(code string) int {
	switch code {
	case apierr.CodeBadRequest:
		return http.StatusBadRequest
	case apierr.CodeForbidden, apierr.CodePolicyDenied, apierr.CodeAddressDenied, apierr.CodeLimitExceeded:
		return http.StatusForbidden
	case apierr.CodeNotFound:
		return http.StatusNotFound
	case apierr.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case apierr.CodeDecodeFailed, apierr.CodeAddressInvalid, apierr.CodeWrongNetwork, apierr.CodeUnsupported,
		apierr.CodeShareInvalid, apierr.CodeApprovalInvalid:
		return http.StatusUnprocessableEntity
	case apierr.CodeDuplicateApproval, apierr.CodeExpired, apierr.CodeConflict, apierr.CodeIdempotencyConflict:
		return http.StatusConflict
	}
	return 0
}

// isDecodeRefusal: the answer to a body the strict decoder refused, or that
// lacks a required field: 400 bad_request, or 413 too_large past the body
// limit.
func isDecodeRefusal(a answer) bool {
	return (a.status == http.StatusBadRequest && a.code == apierr.CodeBadRequest) ||
		(a.status == http.StatusRequestEntityTooLarge && a.code == apierr.CodeTooLarge)
}

// strictShape is an oracle independent of decodeStrict's code path: the
// body is exactly one JSON value, an object or null (what a struct decodes
// from).
func strictShape(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	var v any
	if err := dec.Decode(&v); err != nil {
		return false
	}
	if _, err := dec.Token(); err == nil {
		return false
	}
	_, isObject := v.(map[string]any)
	return v == nil || isObject
}

// reencode marshals v: a value the server decoded, sent again, must decode
// to the same value (decode → encode → decode is stable).
func reencode(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("re-encoding %#v: %v", v, err)
	}
	return b
}

// psbtSeed is a one-input P2WPKH PSBT spending a made-up coin of the
// bitcoin key: half to BIP-173's first mainnet address, the rest less a fee
// back to the key. It carries the previous transaction and the witness UTXO,
// as POST /v1/sign requires.
func psbtSeed(tb testing.TB, n uint32) string {
	tb.Helper()
	var seq [4]byte
	binary.BigEndian.PutUint32(seq[:], n)
	return bitcointest.SpendPSBT(tb, uncompressed(tb, fuzzBTCPub), append([]byte("fuzz coin"), seq[:]...))
}

// validApproval is a base64 signature of the harness officer over the
// pending proposal's digest.
func validApproval() string {
	return base64.StdEncoding.EncodeToString(ed25519.Sign(fuzzOfficerKey, fuzzProposalFixed().Digest))
}
