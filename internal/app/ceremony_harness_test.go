package app

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/custodysigner/appliance/hsm/softhsmtest"
)

// quorumEnv is an appliance set up by a real 2-of-3 key ceremony: no PIN
// anywhere, shares and approval keys in files, an Ethereum key created with
// two shares.
type quorumEnv struct {
	*env
	shares   []string // share texts, officer1..3
	approval []ed25519.PrivateKey
	soPIN    []byte
}

var officerNames = []string{testPrincipalPrefix + "officer1", testPrincipalPrefix + "officer2", testPrincipalPrefix + "officer3"}

func newQuorumEnv(t *testing.T, extraYAML string) *quorumEnv {
	t.Helper()
	// NewToken prepares the per-process SoftHSM directory (and SOFTHSM2_CONF);
	// the ceremony initialises a token of its own with the derived PIN.
	uri, _ := softhsmtest.NewToken(t)
	uri.PinValue, uri.PinSource = "", ""
	uri.Token = fmt.Sprintf("q-%s", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
	if len(uri.Token) > 32 {
		uri.Token = uri.Token[:32]
	}
	dir := t.TempDir()
	cfg := testConfig(t, dir, uri.String(), extraYAML, "client", "officer1", "officer2", "officer3", "auditor", "operator")
	core, logs := observer.New(zap.DebugLevel)
	q := &quorumEnv{env: &env{t: t, dir: dir, cfg: cfg, logs: logs, log: zap.New(core)}, soPIN: []byte("so-pin-" + uri.Token)}
	ctx := context.Background()
	if err := InitCeremony(ctx, cfg, q.log, q.soPIN, CeremonySpec{Threshold: 2, Officers: officerNames, OutDir: dir, GenerateApprovalKeys: true}); err != nil {
		t.Fatal(err)
	}
	var files []string
	for i := 1; i <= 3; i++ {
		f := filepath.Join(dir, "shares", fmt.Sprintf("officer%d.share", i))
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		q.shares = append(q.shares, strings.TrimSpace(string(raw)))
		k, err := LoadApprovalKey(filepath.Join(dir, "officers", fmt.Sprintf("officer%d.approval.key", i)))
		if err != nil {
			t.Fatal(err)
		}
		q.approval = append(q.approval, k)
	}
	if _, err := CreateKey(ctx, cfg, q.log, KeySpec{ID: "eth-dev", Chain: "ethereum", Network: "1337"}, files[:2]); err != nil {
		t.Fatal(err)
	}
	return q
}

// unseal submits the shares of the given officers (1-based).
func (q *quorumEnv) unseal(officers ...int) answer {
	q.t.Helper()
	var a answer
	for _, o := range officers {
		a = q.must(q.client(fmt.Sprintf("officer%d", o)), "POST", "/v1/unseal", map[string]string{"share": q.shares[o-1]})
		if a.status != 200 {
			q.t.Fatalf("officer%d's share: %d %s", o, a.status, a.body)
		}
	}
	return a
}
