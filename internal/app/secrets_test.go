package app

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/shamir"
	"github.com/custodysigner/appliance/internal/store"
)

// TestNoSecretInLogsDatabaseOrAnswers runs a full scenario — init ceremony,
// unseal, sign, freeze, unfreeze by quorum, unseal again, sign — then scans
// every log line, the database files and every HTTP answer for the shares,
// the unseal secret and the HSM PIN, in raw, hex and base64 forms.
func TestNoSecretInLogsDatabaseOrAnswers(t *testing.T) {
	q := newQuorumEnv(t, "")
	q.start()
	q.unseal(1, 3)
	to := common.HexToAddress("0x00000000000000000000000000000000000000a4")
	c := q.client("client")
	if a := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "s1")); a.status != 200 {
		t.Fatal(a.status)
	}
	q.must(q.client("officer2"), "POST", "/v1/freeze", map[string]string{"reason": "scan drill"})
	p := q.propose(2, "unfreeze", `{"reason":"scan drill over"}`)
	q.approve(2, p["proposal_id"].(string), q.approval[1], p["digest"].(string))
	q.approve(3, p["proposal_id"].(string), q.approval[2], p["digest"].(string))
	q.unseal(2, 3)
	if a := q.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 1, to, big.NewInt(1)), "s2")); a.status != 200 {
		t.Fatal(a.status)
	}
	q.must(q.client("auditor"), "GET", "/v1/status", nil)
	q.stop()

	// What must never appear.
	var needles []string
	var raw [][]byte
	for _, s := range q.shares {
		sh, err := ceremony.ParseShare(s)
		if err != nil {
			t.Fatal(err)
		}
		needles = append(needles, s, strings.Split(s, "-")[4])
		raw = append(raw, append(append([]byte(nil), sh.Data...), sh.Index))
	}
	secret, err := shamir.Combine(raw[:2])
	if err != nil {
		t.Fatal(err)
	}
	pin := derivePIN(t, q)
	for _, b := range [][]byte{secret, pin} {
		needles = append(needles, string(b), hex.EncodeToString(b), base64.StdEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b))
	}

	haystacks := map[string][]byte{"http answers": q.bodies.all()}
	var logs bytes.Buffer
	for _, en := range q.logs.All() {
		fmt.Fprintf(&logs, "%s %v\n", en.Message, en.ContextMap())
	}
	haystacks["logs"] = logs.Bytes()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if b, err := os.ReadFile(q.cfg.Store.Path + suffix); err == nil {
			haystacks["database"+suffix] = b
		}
	}
	if len(haystacks["logs"]) == 0 || len(haystacks["database"]) == 0 || len(haystacks["http answers"]) == 0 {
		t.Fatal("nothing to scan")
	}
	for where, hay := range haystacks {
		for _, n := range needles {
			if len(n) >= 8 && bytes.Contains(hay, []byte(n)) {
				t.Errorf("secret material (%d chars) found in %s", len(n), where)
			}
		}
	}
	// The PIN is nowhere at rest either: not in any file the ceremony wrote.
	_ = filepath.Walk(q.dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, n := range needles[len(needles)-4:] {
			if bytes.Contains(b, []byte(n)) {
				t.Errorf("the HSM PIN is at rest in %s", path)
			}
		}
		return nil
	})
}

// derivePIN reconstructs the PIN the way the appliance does, from shares.
func derivePIN(t *testing.T, q *quorumEnv) []byte {
	t.Helper()
	dir := t.TempDir()
	var files []string
	for i, s := range q.shares[:2] {
		f := filepath.Join(dir, fmt.Sprintf("%d.share", i))
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	st, err := store.Open(context.Background(), q.cfg.Store.Path, q.log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pin, err := PINFromShares(context.Background(), st, files)
	if err != nil {
		t.Fatal(err)
	}
	return pin
}
