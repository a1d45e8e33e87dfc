package app

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
	"github.com/ethereum/go-ethereum/common"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/custodysigner/appliance/internal/api"
	"github.com/custodysigner/appliance/internal/backup"
	"github.com/custodysigner/appliance/internal/ceremony"
	"github.com/custodysigner/appliance/internal/shamir"
	"github.com/custodysigner/appliance/internal/store"
)

// needle is one form of one secret the scan looks for.
type needle struct {
	name  string // what it is, never the value: safe to print
	value []byte
	// fragment > 0: any fragment of this many bytes counts too, so a
	// truncated leak (a prefix in an error, a slice in a log field) is
	// caught. Only for forms whose every part is secret and dense (at
	// least 64 bits per fragment).
	fragment int
}

// needles collects every encoding of a secret that the code could
// plausibly leak it in.
type needles []needle

// Fragment lengths: 16 characters of hex, base32 or base64 carry 64 to 96
// bits, 12 raw bytes 96: none turns up by chance in a few MiB.
const (
	textFragment = 16
	rawFragment  = 12
)

// add records raw and its hex (both cases), base64 (standard, URL, with
// and without padding), base32 and fmt forms, and their fragments.
func (n *needles) add(name string, raw []byte) {
	n.addForm(name+" (raw)", raw, rawFragment)
	n.addForm(name+" (hex)", []byte(hex.EncodeToString(raw)), textFragment)
	n.addForm(name+" (HEX)", []byte(strings.ToUpper(hex.EncodeToString(raw))), textFragment)
	n.addForm(name+" (base64)", []byte(base64.StdEncoding.EncodeToString(raw)), textFragment)
	n.addForm(name+" (base64, unpadded)", []byte(base64.RawStdEncoding.EncodeToString(raw)), textFragment)
	n.addForm(name+" (base64url)", []byte(base64.URLEncoding.EncodeToString(raw)), textFragment)
	n.addForm(name+" (base64url, unpadded)", []byte(base64.RawURLEncoding.EncodeToString(raw)), textFragment)
	b32 := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw)
	n.addForm(name+" (base32)", []byte(b32), textFragment)
	n.addForm(name+" (base32, lower)", []byte(strings.ToLower(b32)), textFragment)
	// fmt's %v of a []byte: decimal numbers in brackets.
	n.addForm(name+" (%v)", []byte(fmt.Sprint(raw)), 0)
}

// addForm records one exact form, and its fragments when fragment > 0.
func (n *needles) addForm(name string, v []byte, fragment int) {
	if fragment >= len(v) {
		fragment = 0
	}
	*n = append(*n, needle{name: name, value: bytes.Clone(v), fragment: fragment})
}

// scan returns what of the needles hay holds: each needle whole, else its
// first fragment found. Fragments are looked up in one pass per fragment
// length over hay.
func (n needles) scan(where string, hay []byte) []string {
	var found []string
	type origin struct{ needle, at int }
	frags := map[int]map[string]origin{}
	for k, nd := range n {
		if i := bytes.Index(hay, nd.value); i >= 0 {
			found = append(found, fmt.Sprintf("%s found in %s at offset %d", nd.name, where, i))
			continue
		}
		if nd.fragment == 0 {
			continue
		}
		if frags[nd.fragment] == nil {
			frags[nd.fragment] = map[string]origin{}
		}
		for i := 0; i+nd.fragment <= len(nd.value); i++ {
			frags[nd.fragment][string(nd.value[i:i+nd.fragment])] = origin{k, i}
		}
	}
	reported := make([]bool, len(n))
	for size, m := range frags {
		for i := 0; i+size <= len(hay); i++ {
			if o, ok := m[string(hay[i:i+size])]; ok && !reported[o.needle] {
				reported[o.needle] = true
				found = append(found, fmt.Sprintf("%d bytes of %s (from its byte %d) found in %s at offset %d", size, n[o.needle].name, o.at, where, i))
			}
		}
	}
	return found
}

// recorder wraps a client's transport and keeps every answer's status
// line, headers and body.
type recorder struct {
	mu      sync.Mutex
	answers [][]byte
}

func (r *recorder) wrap(c *http.Client) *http.Client {
	c.Transport = recordingTransport{next: c.Transport, r: r}
	return c
}

type recordingTransport struct {
	next http.RoundTripper
	r    *recorder
}

func (t recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	var rec bytes.Buffer
	fmt.Fprintf(&rec, "%s %s -> %s\n", req.Method, req.URL.Path, resp.Status)
	_ = resp.Header.Write(&rec)
	rec.Write(body)
	t.r.mu.Lock()
	t.r.answers = append(t.r.answers, rec.Bytes())
	t.r.mu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, err
}

func (r *recorder) all() ([]byte, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Join(r.answers, []byte("\n")), len(r.answers)
}

// TestSecretsNeverLeak runs a full scenario with the real appliance — the
// init ceremony (2-of-3, SO PIN), unseal with shares over the API (after a
// mistyped and a duplicate share), Ethereum and Bitcoin signatures, a
// transfer that needs two officers' approvals and gets them, a freeze and
// the quorum's unfreeze and a second unseal, an audit page, the
// dashboard, an encrypted backup — and then looks for the secrets
// everywhere they could have landed: every log line (as the production
// JSON and console encoders would write it), the database and its WAL (raw
// bytes while running and after closing), every answer (status, headers,
// body, recorded at the transport), the backup archive and, decrypted with
// the quorum's key, every member inside it, every file under the test's
// directory, and the SoftHSM token files.
//
// It looks for the SO PIN, the HSM PIN (as derived: 64 hex characters, and
// the 32 bytes behind them), the unseal secret, each share (as officers
// submit it, its data field, its raw y-values with and without the index)
// and the keys derived from the secret and the PIN (backup recipient seed,
// wrapping key, manifest MAC key, audit HMAC key), each in raw, hex,
// base64, base32 and fmt forms. The secrets are the real ones: they come
// from the ceremony's share files, combine to a secret that matches the
// stored verifier, and the PIN opens the token (one flipped character does
// not). The scanner is shown to find each kind of needle planted in a
// control buffer, so the test can fail.
func TestSecretsNeverLeak(t *testing.T) {
	q := newQuorumEnv(t, "")
	ctx := context.Background()
	if !q.log.Core().Enabled(zapcore.DebugLevel) {
		t.Fatal("the harness logger does not capture debug lines")
	}
	shareFiles := []string{filepath.Join(q.dir, "shares", "officer1.share"), filepath.Join(q.dir, "shares", "officer2.share")}
	// A key whose private half goes into backups (wrapped under the
	// secret-derived key), and a Bitcoin key.
	if _, err := CreateKey(ctx, q.cfg, q.log, KeySpec{ID: "eth-other", Chain: "ethereum", Network: "1337", WrappedBackup: true}, shareFiles); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateKey(ctx, q.cfg, q.log, KeySpec{ID: "btc-dev", Chain: "bitcoin", Network: "regtest"}, shareFiles); err != nil {
		t.Fatal(err)
	}
	q.cfg.Principals[0].Keys = append(q.cfg.Principals[0].Keys, "btc-dev")

	rec := &recorder{}
	clients := map[string]*http.Client{}
	calls := 0
	call := func(who, method, path string, body any, want int) answer {
		t.Helper()
		c, ok := clients[who]
		if !ok {
			c = rec.wrap(q.client(who))
			clients[who] = c
		}
		calls++
		a := q.must(c, method, path, body)
		if want != 0 && a.status != want {
			t.Fatalf("%s %s as %s: %d %s", method, path, who, a.status, a.body)
		}
		return a
	}
	approveProposal := func(officer int, p answer) answer {
		t.Helper()
		m := p.json(t)
		return call(fmt.Sprintf("officer%d", officer), "POST", "/v1/proposals/"+m["proposal_id"].(string)+"/approvals",
			approvalBody(t, q.approval[officer-1], m["digest"].(string)), http.StatusOK)
	}

	q.start()
	// A mistyped share and a duplicate are refused (and audited, and logged).
	typo := flipOne(q.shares[0], len(q.shares[0])-20)
	call("officer1", "POST", "/v1/unseal", map[string]string{"share": typo}, http.StatusUnprocessableEntity)
	call("officer1", "POST", "/v1/unseal", map[string]string{"share": q.shares[0]}, http.StatusOK)
	call("officer1", "POST", "/v1/unseal", map[string]string{"share": q.shares[0]}, http.StatusUnprocessableEntity)
	if a := call("officer3", "POST", "/v1/unseal", map[string]string{"share": q.shares[2]}, http.StatusOK); a.json(t)["sealed"] != false {
		t.Fatalf("still sealed: %s", a.body)
	}

	to := common.HexToAddress("0x00000000000000000000000000000000000000a5")
	call("client", "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 0, to, big.NewInt(1)), "leak-eth-0"), http.StatusOK)
	call("client", "POST", "/v1/sign", leakBTCBody(t, call), http.StatusOK)

	// Above 10 ETH needs two officers.
	p := call("officer1", "POST", "/v1/proposals", []byte(`{"kind":"set_policy","params":{"key_id":"eth-dev","rules":{"approval_above":{"ETH":"10000000000000000000"},"approvals":2}}}`), http.StatusAccepted)
	approveProposal(1, p)
	if a := approveProposal(2, p); a.json(t)["state"] != "executed" {
		t.Fatalf("set_policy: %s", a.body)
	}
	pending := call("client", "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 1, to, eth(20)), "leak-eth-big"), http.StatusAccepted).json(t)
	id, digest := pending["request_id"].(string), pending["digest"].(string)
	call("officer2", "GET", "/v1/requests/"+id, nil, http.StatusOK)
	call("officer1", "POST", "/v1/requests/"+id+"/approvals", approvalBody(t, q.approval[0], digest), http.StatusOK)
	if a := call("officer3", "POST", "/v1/requests/"+id+"/approvals", approvalBody(t, q.approval[2], digest), http.StatusOK); a.json(t)["state"] != "signed" {
		t.Fatalf("approved request: %s", a.body)
	}

	// Freeze, unfreeze by quorum, unseal again.
	call("officer2", "POST", "/v1/freeze", map[string]string{"reason": "leak drill"}, http.StatusOK)
	p = call("officer2", "POST", "/v1/proposals", []byte(`{"kind":"unfreeze","params":{"reason":"leak drill over"}}`), http.StatusAccepted)
	approveProposal(2, p)
	approveProposal(3, p)
	call("officer2", "POST", "/v1/unseal", map[string]string{"share": q.shares[1]}, http.StatusOK)
	call("officer3", "POST", "/v1/unseal", map[string]string{"share": q.shares[2]}, http.StatusOK)
	call("client", "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, 2, to, big.NewInt(1)), "leak-eth-2"), http.StatusOK)

	// What officers, auditors and operators read; the backup.
	call("auditor", "GET", "/v1/status", nil, http.StatusOK)
	call("auditor", "GET", "/v1/audit", nil, http.StatusOK)
	call("officer1", "GET", "/v1/requests?state=signed", nil, http.StatusOK)
	call("officer1", "GET", api.DashboardPath, nil, http.StatusOK)
	archive := call("operator", "POST", "/v1/backups", map[string]string{}, http.StatusCreated).json(t)["path"].(string)

	haystacks := map[string][]byte{}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if b, err := os.ReadFile(q.cfg.Store.Path + suffix); err == nil {
			haystacks["database"+suffix+" (running)"] = b
		}
	}
	q.stop()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if b, err := os.ReadFile(q.cfg.Store.Path + suffix); err == nil {
			haystacks["database"+suffix+" (closed)"] = b
		}
	}

	// The secrets, from the ceremony's own output, proven real.
	secret, pin := realSecrets(t, q)
	var all needles
	for i, text := range q.shares {
		name := fmt.Sprintf("share %d", i+1)
		sh, err := ceremony.ParseShare(text)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(map[string]string{"share": text})
		// The text's other fields (ceremony id, k of n, index) are public:
		// only its data field counts in fragments.
		all.addForm(name+" (text, as submitted)", []byte(text), 0)
		all.addForm(name+" (JSON body)", body, 0)
		all.addForm(name+" (data field)", []byte(strings.Split(text, "-")[4]), textFragment)
		all.add(name+" y-values", sh.Data)
		all.add(name+" shamir layout", append(bytes.Clone(sh.Data), sh.Index))
	}
	all.addForm("mistyped share 1 (text)", []byte(typo), 0)
	all.addForm("mistyped share 1 (data field)", []byte(strings.Split(typo, "-")[4]), textFragment)
	all.add("unseal secret", secret)
	all.addForm("HSM PIN (as derived)", pin, textFragment)
	all.addForm("HSM PIN (upper case)", bytes.ToUpper(pin), textFragment)
	pinRaw, err := hex.DecodeString(string(pin))
	if err != nil {
		t.Fatal(err)
	}
	all.add("HSM PIN bytes", pinRaw)
	all.add("HSM PIN text", pin)
	// The harness's SO PIN ends with the token's label, which is public:
	// whole forms only.
	for _, n := range wholeOnly(func(n *needles) { n.add("SO PIN", q.soPIN) }) {
		all = append(all, n)
	}
	derived := derivedKeys(t, secret, pin)
	for _, name := range sortedKeys(derived) {
		all.add(name, derived[name])
	}
	for _, n := range all {
		if len(n.value) < 16 {
			t.Fatalf("needle %s is %d bytes: too short to scan for without false alarms", n.name, len(n.value))
		}
	}

	// The scanner finds what it looks for: every needle planted in noise,
	// a fragment of every one that counts in fragments, and the forms
	// zap's encoders give a []byte and a string.
	for _, n := range all {
		control := append(append([]byte(`{"level":"info","msg":"control `), n.value...), `"}`...)
		if got := (needles{n}).scan("control", control); len(got) != 1 {
			t.Fatalf("the scanner misses %s planted in a control buffer", n.name)
		}
		if n.fragment > 0 {
			part := n.value[len(n.value)-n.fragment-1 : len(n.value)-1]
			control := append(append([]byte(`error: "`), part...), `…"`...)
			if got := (needles{n}).scan("control", control); len(got) != 1 {
				t.Fatalf("the scanner misses a %d-byte fragment of %s", n.fragment, n.name)
			}
		}
	}
	var control bytes.Buffer
	plant := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&control), zapcore.DebugLevel))
	plant.Debug("planted", zap.Binary("secret", secret), zap.ByteString("pin", pin), zap.String("share", q.shares[1]))
	if got := all.scan("control log", control.Bytes()); len(got) < 3 {
		t.Fatalf("the scanner finds %d of the secrets zap was made to log: %v", len(got), got)
	}

	// Logs, as written by the production encoders and as fmt renders them.
	logs := q.logs.All()
	if len(logs) < 20 {
		t.Fatalf("only %d log lines captured", len(logs))
	}
	haystacks["logs (JSON encoder)"] = encodeLogs(t, logs, zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()))
	haystacks["logs (console encoder)"] = encodeLogs(t, logs, zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()))
	var flat bytes.Buffer
	for _, en := range logs {
		fmt.Fprintf(&flat, "%s %v %+v\n", en.Message, en.ContextMap(), en.Context)
	}
	haystacks["logs (fmt)"] = flat.Bytes()

	// Answers: at the transport, and as the harness kept them.
	answers, n := rec.all()
	if n != calls || n < 25 {
		t.Fatalf("recorded %d answers of %d calls", n, calls)
	}
	haystacks["answers"] = answers
	haystacks["answers (harness)"] = q.bodies.all()

	// The backup: the archive as stored, and every member decrypted.
	raw, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	haystacks["backup archive"] = raw
	members := backupMembers(t, archive, derived["backup recipient seed"])
	if len(members) < 3 {
		t.Fatalf("the backup holds %d members", len(members))
	}
	for name, b := range members {
		haystacks["backup member "+name] = b
	}

	// Every file the scenario wrote under its directory. The share files
	// hold their share by design; nothing else may.
	files := 0
	err = filepath.WalkDir(q.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		rel, _ := filepath.Rel(q.dir, path)
		haystacks["file "+rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 10 {
		t.Fatalf("only %d files under the test directory", files)
	}
	// The token files: the PINs are not there either.
	_ = filepath.WalkDir(softhsmtest.TokenDir(), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, err := os.ReadFile(path); err == nil {
				haystacks["token file "+filepath.Base(filepath.Dir(path))+"/"+d.Name()] = b
			}
		}
		return nil
	})

	for _, k := range []string{"logs (JSON encoder)", "database (closed)", "answers", "backup archive", "backup member manifest.json"} {
		if len(haystacks[k]) == 0 {
			t.Fatalf("nothing to scan in %s (have %v)", k, sortedKeys(haystacks))
		}
	}
	scanned := 0
	for _, where := range sortedKeys(haystacks) {
		hay := haystacks[where]
		scanned += len(hay)
		for _, f := range all.scan(where, hay) {
			if strings.HasPrefix(where, "file shares/") && strings.Contains(f, "share "+shareOf(where)+" ") {
				continue // officerN.share holds share N: that is the point of it
			}
			t.Error(f)
		}
	}
	t.Logf("%d needles scanned for in %d places (%d KiB)", len(all), len(haystacks), scanned/1024)
}

// wholeOnly returns the needles add makes, without fragments.
func wholeOnly(add func(*needles)) needles {
	var n needles
	add(&n)
	for i := range n {
		n[i].fragment = 0
	}
	return n
}

// approvalBody signs a digest (hex) with an officer's approval key.
func approvalBody(t *testing.T, key ed25519.PrivateKey, digestHex string) map[string]string {
	t.Helper()
	d, err := hex.DecodeString(digestHex)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"signature": base64.StdEncoding.EncodeToString(ed25519.Sign(key, d))}
}

// leakBTCBody is a sign request spending a made-up coin paid to btc-dev:
// the appliance checks the PSBT, not the chain.
func leakBTCBody(t *testing.T, call func(who, method, path string, body any, want int) answer) map[string]string {
	t.Helper()
	k := call("client", "GET", "/v1/keys/btc-dev", nil, http.StatusOK).json(t)
	pub, err := hex.DecodeString(k["public_key"].(string))
	if err != nil {
		t.Fatal(err)
	}
	pk, err := btcec.ParsePubKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(pk.SerializeCompressed()), &chaincfg.RegressionNetParams)
	if err != nil {
		t.Fatal(err)
	}
	ours, _ := txscript.PayToAddrScript(addr)
	prev := wire.NewMsgTx(2)
	prev.AddTxIn(wire.NewTxIn(&wire.OutPoint{Hash: chainhash.Hash{0x5e}, Index: 0}, nil, nil))
	prev.AddTxOut(wire.NewTxOut(1_000_000, ours))
	payee, _ := btcec.NewPrivateKey()
	payeeAddr, _ := btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(payee.PubKey().SerializeCompressed()), &chaincfg.RegressionNetParams)
	payeeScript, _ := txscript.PayToAddrScript(payeeAddr)
	pkt := btcPSBT(t, []btcSpend{{prev, 0}}, []*wire.TxOut{wire.NewTxOut(997_000, payeeScript)})
	return btcSignBody("regtest", b64PSBT(t, pkt), "leak-btc-0")
}

// realSecrets rebuilds the unseal secret and the PIN from the ceremony's
// share files and proves them: every pair of shares gives the same secret,
// it matches the verifier stored at init, and the PIN opens the token
// while the same PIN with one character changed does not.
func realSecrets(t *testing.T, q *quorumEnv) (secret, pin []byte) {
	t.Helper()
	ctx := context.Background()
	var rows [][]byte
	for i := 1; i <= 3; i++ {
		raw, err := os.ReadFile(filepath.Join(q.dir, "shares", fmt.Sprintf("officer%d.share", i)))
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(raw)) != q.shares[i-1] {
			t.Fatalf("share %d differs from its file", i)
		}
		sh, err := ceremony.ParseShare(q.shares[i-1])
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, append(sh.Data, sh.Index))
	}
	secret, err := shamir.Combine(rows[:2])
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][][]byte{{rows[1], rows[2]}, {rows[2], rows[0]}} {
		if other, err := shamir.Combine(pair); err != nil || !bytes.Equal(other, secret) {
			t.Fatal("the shares do not agree on one secret")
		}
	}
	if len(secret) != ceremony.SecretSize || bytes.Equal(secret, make([]byte, len(secret))) {
		t.Fatal("the secret is empty")
	}
	st, err := store.Open(ctx, q.cfg.Store.Path, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	cer, err := st.GetCeremony(ctx)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, id, err := ceremony.Recover(q.shares[1:])
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	if !bytes.Equal(id[:], cer.ID) || !s.Verify(cer.Verifier) {
		t.Fatal("the shares do not match the stored ceremony")
	}
	pin = s.DerivePIN()
	if len(pin) != 64 {
		t.Fatalf("the PIN is %d characters", len(pin))
	}
	m, err := OpenHSM(ctx, q.cfg, zap.NewNop(), pin)
	if err != nil {
		t.Fatalf("the derived PIN does not open the token: %v", err)
	}
	m.Close()
	wrong := bytes.Clone(pin)
	wrong[0] ^= 1
	if m, err := OpenHSM(ctx, q.cfg, zap.NewNop(), wrong); err == nil {
		m.Close()
		t.Fatal("control: a wrong PIN opens the token, so opening it proves nothing")
	}
	if len(q.soPIN) < 8 {
		t.Fatalf("the SO PIN is %d bytes", len(q.soPIN))
	}
	return secret, pin
}

// derivedKeys recomputes the keys the appliance derives from the secret
// and the PIN.
func derivedKeys(t *testing.T, secret, pin []byte) map[string][]byte {
	t.Helper()
	hk := func(key, salt []byte, info string) []byte {
		k, err := hkdf.Key(sha256.New, key, salt, info, 32)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	mac, err := backupAuthKey(pin)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"backup recipient seed": hk(secret, nil, "custodysigner/appliance/v1/backup-recipient"),
		"backup wrapping key":   hk(secret, nil, "custodysigner/appliance/v1/backup-wrapping-key"),
		"manifest MAC key":      mac,
		"audit HMAC key":        hk(pin, nil, auditHMACInfo),
	}
}

// backupMembers decrypts the archive with the quorum's key and returns
// every member's contents.
func backupMembers(t *testing.T, archive string, seed []byte) map[string][]byte {
	t.Helper()
	priv, pub, err := backup.KeyPairFromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := backup.Open(f, priv)
	if err != nil {
		t.Fatalf("the seed derived from the secret does not open the backup (recipient %s): %v", pub, err)
	}
	out := map[string][]byte{}
	for {
		e, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name] = b
	}
}

// encodeLogs writes every observed entry with enc, as the process logger
// would have.
func encodeLogs(t *testing.T, logs []observer.LoggedEntry, enc zapcore.Encoder) []byte {
	t.Helper()
	var out bytes.Buffer
	for _, en := range logs {
		buf, err := enc.EncodeEntry(en.Entry, en.Context)
		if err != nil {
			t.Fatal(err)
		}
		out.Write(buf.Bytes())
		buf.Free()
	}
	return out.Bytes()
}

// shareOf is N for "file shares/officerN.share".
func shareOf(where string) string {
	return strings.TrimSuffix(strings.TrimPrefix(where, "file shares/officer"), ".share")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
