// Package regtest is TEST SUPPORT ONLY: it runs a real btcd node on the
// regression-test network, on loopback, for end-to-end tests in other
// packages. It imports "testing" and must never be imported by production
// code.
//
// The node is built from the module proxy at a pinned version (btcd
// v0.24.2) with this machine's Go, once per machine (the binary is cached in
// the temporary directory), and started with --regtest --notls --txindex on
// random loopback ports. It is stopped when the test ends. Start fails the
// test, never skips it, when btcd cannot be built or started.
//
// Two regtest facts tests must respect: btcd's regtest activates segwit by
// BIP-9 signalling only at height 432 (SegwitHeight), and a coinbase output
// can be spent only after 100 confirmations (CoinbaseMaturity).
package regtest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

// BtcdVersion is the btcd release the node is built from.
const BtcdVersion = "v0.24.2"

const (
	// SegwitHeight is the first height at which btcd's regtest accepts
	// segwit spends (BIP-9 windows of 144 blocks: started at 144, locked in
	// at 288, active at 432).
	SegwitHeight = 432
	// CoinbaseMaturity is how many confirmations a coinbase output needs
	// before it can be spent.
	CoinbaseMaturity = 100
)

// Node is one running btcd regtest node.
type Node struct {
	bin, dir          string
	rpcPort, p2pPort  string
	rpcURL            string
	mu                sync.Mutex
	cmd               *exec.Cmd
	exited            chan struct{} // closed when cmd has exited
	logs              lockedBuffer
	defaultMiningAddr string
}

// Start builds (or reuses) btcd, starts it on regtest on loopback and
// registers its shutdown with t.Cleanup. The node's chain state lives in
// t.TempDir(). On failure the test fails with btcd's output.
func Start(t testing.TB) *Node {
	t.Helper()
	n := &Node{bin: installBtcd(t), dir: t.TempDir(), rpcPort: freePort(t), p2pPort: freePort(t)}
	n.rpcURL = "http://127.0.0.1:" + n.rpcPort
	// btcd's generate needs a mining address: one nobody holds.
	priv, err := btcec.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	a, err := btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(priv.PubKey().SerializeCompressed()), &chaincfg.RegressionNetParams)
	if err != nil {
		t.Fatal(err)
	}
	n.defaultMiningAddr = a.EncodeAddress()
	if err := os.WriteFile(filepath.Join(n.dir, "btcd.conf"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.stop()
		if t.Failed() {
			t.Logf("btcd output:\n%s", n.logs.String())
		}
	})
	n.mu.Lock()
	defer n.mu.Unlock()
	n.start(t)
	return n
}

// URL is the node's JSON-RPC endpoint (user "u", password "p").
func (n *Node) URL() string { return n.rpcURL }

// start runs btcd (its own generate paying the throwaway address) and waits
// for its RPC.
// n.mu is held.
func (n *Node) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(n.bin, "--regtest", "--notls", "--rpcuser=u", "--rpcpass=p", "--txindex",
		"--configfile="+filepath.Join(n.dir, "btcd.conf"), "--datadir="+filepath.Join(n.dir, "data"),
		"--logdir="+filepath.Join(n.dir, "log"), "--rpclisten=127.0.0.1:"+n.rpcPort,
		"--listen=127.0.0.1:"+n.p2pPort, "--nodnsseed", "--miningaddr="+n.defaultMiningAddr)
	cmd.Stdout, cmd.Stderr = &n.logs, &n.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start btcd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	n.cmd, n.exited = cmd, exited
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := n.Call("getblockcount", nil)
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("btcd exited before its RPC came up: %v\n%s", err, n.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("btcd RPC not up within 30s: %v\n%s", err, n.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop shuts btcd down gracefully (so its database is flushed), killing it
// after a grace period. n.mu is held.
func (n *Node) stop() {
	if n.cmd == nil {
		return
	}
	cmd, done := n.cmd, n.exited
	n.cmd, n.exited = nil, nil
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Generate mines blocks paying each coinbase to payTo, a regtest address,
// and returns their hashes.
//
// With payTo "" it runs btcd's own generate (a fresh template each block,
// so everything in the mempool is mined), paying an address nobody holds.
// btcd has no generatetoaddress and wipes its regtest chain on restart, so
// for a named payTo each block is assembled here from getblocktemplate
// (which carries mempool transactions, though btcd may serve a template up
// to a minute stale while the tip does not move) with our own coinbase,
// solved (regtest's target is trivial) and handed to submitblock.
func (n *Node) Generate(t testing.TB, blocks int, payTo string) []string {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	var hashes []string
	if payTo == "" {
		if err := n.Call("generate", &hashes, blocks); err != nil {
			t.Fatal(err)
		}
		if len(hashes) != blocks {
			t.Fatalf("generate %d: node returned %d hashes", blocks, len(hashes))
		}
		return hashes
	}
	addr, err := btcutil.DecodeAddress(payTo, &chaincfg.RegressionNetParams)
	if err != nil || !addr.IsForNet(&chaincfg.RegressionNetParams) {
		t.Fatalf("mining address %q is not a regtest address: %v", payTo, err)
	}
	script, err := txscript.PayToAddrScript(addr)
	if err != nil {
		t.Fatalf("mining address %q: %v", payTo, err)
	}
	for i := 0; i < blocks; i++ {
		h, err := n.mineTo(script)
		if err != nil {
			t.Fatalf("mining block %d of %d to %s: %v", i+1, blocks, payTo, err)
		}
		hashes = append(hashes, h)
	}
	return hashes
}

// blockTemplate is the part of btcd's getblocktemplate answer we use.
type blockTemplate struct {
	Bits          string `json:"bits"`
	CurTime       int64  `json:"curtime"`
	MinTime       int64  `json:"mintime"`
	Height        int64  `json:"height"`
	PreviousHash  string `json:"previousblockhash"`
	Version       int32  `json:"version"`
	CoinbaseValue *int64 `json:"coinbasevalue"`
	Transactions  []struct {
		Data string `json:"data"`
	} `json:"transactions"`
	WitnessCommitment string `json:"default_witness_commitment"`
}

// mineTo builds, solves and submits one block whose coinbase pays script.
func (n *Node) mineTo(script []byte) (string, error) {
	var tmpl blockTemplate
	if err := n.Call("getblocktemplate", &tmpl, map[string]any{"capabilities": []string{"coinbasevalue"}}); err != nil {
		return "", err
	}
	if tmpl.CoinbaseValue == nil {
		return "", fmt.Errorf("template without coinbasevalue")
	}
	prev, err := chainhash.NewHashFromStr(tmpl.PreviousHash)
	if err != nil {
		return "", fmt.Errorf("template previousblockhash: %w", err)
	}
	bits, err := strconv.ParseUint(tmpl.Bits, 16, 32)
	if err != nil {
		return "", fmt.Errorf("template bits: %w", err)
	}

	// BIP-34 coinbase: the height first, then an extra nonce.
	sigScript, err := txscript.NewScriptBuilder().AddInt64(tmpl.Height).AddInt64(0).Script()
	if err != nil {
		return "", err
	}
	coinbase := wire.NewMsgTx(1)
	coinbase.AddTxIn(&wire.TxIn{
		PreviousOutPoint: wire.OutPoint{Index: wire.MaxPrevOutIndex},
		SignatureScript:  sigScript,
		Sequence:         wire.MaxTxInSequenceNum,
	})
	coinbase.AddTxOut(wire.NewTxOut(*tmpl.CoinbaseValue, script))
	if tmpl.WitnessCommitment != "" {
		// The template's commitment assumes an all-zero witness nonce; the
		// coinbase's own wtxid counts as zero, so it holds for our coinbase.
		commitment, err := hex.DecodeString(tmpl.WitnessCommitment)
		if err != nil {
			return "", fmt.Errorf("template witness commitment: %w", err)
		}
		coinbase.AddTxOut(wire.NewTxOut(0, commitment))
		coinbase.TxIn[0].Witness = wire.TxWitness{make([]byte, 32)}
	}
	txs := []*wire.MsgTx{coinbase}
	for i, raw := range tmpl.Transactions {
		b, err := hex.DecodeString(raw.Data)
		if err != nil {
			return "", fmt.Errorf("template transaction %d: %w", i, err)
		}
		var tx wire.MsgTx
		if err := tx.Deserialize(bytes.NewReader(b)); err != nil {
			return "", fmt.Errorf("template transaction %d: %w", i, err)
		}
		txs = append(txs, &tx)
	}

	block := wire.MsgBlock{Header: wire.BlockHeader{
		Version:    tmpl.Version,
		PrevBlock:  *prev,
		MerkleRoot: merkleRoot(txs),
		Timestamp:  time.Unix(max(tmpl.CurTime, tmpl.MinTime), 0),
		Bits:       uint32(bits),
	}, Transactions: txs}
	target := compactToBig(uint32(bits))
	for block.Header.Nonce = 0; ; block.Header.Nonce++ {
		h := block.Header.BlockHash()
		if hashToBig(&h).Cmp(target) <= 0 {
			break
		}
		if block.Header.Nonce == math.MaxUint32 {
			return "", fmt.Errorf("no nonce solves bits %08x", bits)
		}
	}
	var buf bytes.Buffer
	if err := block.Serialize(&buf); err != nil {
		return "", err
	}
	var reject *string
	if err := n.Call("submitblock", &reject, hex.EncodeToString(buf.Bytes())); err != nil {
		return "", err
	}
	if reject != nil {
		return "", fmt.Errorf("submitblock: %s", *reject)
	}
	return block.BlockHash().String(), nil
}

// merkleRoot is the block merkle root over the transactions' txids.
func merkleRoot(txs []*wire.MsgTx) chainhash.Hash {
	level := make([]chainhash.Hash, len(txs))
	for i, tx := range txs {
		level[i] = tx.TxHash()
	}
	for len(level) > 1 {
		if len(level)%2 == 1 {
			level = append(level, level[len(level)-1])
		}
		next := make([]chainhash.Hash, len(level)/2)
		for i := range next {
			next[i] = chainhash.DoubleHashH(append(level[2*i][:], level[2*i+1][:]...))
		}
		level = next
	}
	return level[0]
}

// compactToBig expands a header's compact target ("bits").
func compactToBig(compact uint32) *big.Int {
	mantissa := int64(compact & 0x007fffff)
	exponent := uint(compact >> 24)
	var target *big.Int
	if exponent <= 3 {
		target = big.NewInt(mantissa >> (8 * (3 - exponent)))
	} else {
		target = new(big.Int).Lsh(big.NewInt(mantissa), 8*(exponent-3))
	}
	if compact&0x00800000 != 0 {
		target.Neg(target)
	}
	return target
}

// hashToBig reads a block hash as the little-endian number PoW compares.
func hashToBig(h *chainhash.Hash) *big.Int {
	var be [chainhash.HashSize]byte
	for i := range h {
		be[i] = h[chainhash.HashSize-1-i]
	}
	return new(big.Int).SetBytes(be[:])
}

// Block returns the block with the given hash.
func (n *Node) Block(t testing.TB, hash string) *wire.MsgBlock {
	t.Helper()
	var raw string
	if err := n.Call("getblock", &raw, hash, 0); err != nil {
		t.Fatal(err)
	}
	b, err := hex.DecodeString(raw)
	if err != nil {
		t.Fatal(err)
	}
	var block wire.MsgBlock
	if err := block.Deserialize(bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return &block
}

// Coinbase returns the coinbase transaction of the block with the given hash.
func (n *Node) Coinbase(t testing.TB, blockHash string) *wire.MsgTx {
	t.Helper()
	return n.Block(t, blockHash).Transactions[0]
}

// BlockCount returns the height of the node's best block.
func (n *Node) BlockCount(t testing.TB) int64 {
	t.Helper()
	var h int64
	if err := n.Call("getblockcount", &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// RawTransaction returns a transaction the node knows (mempool, or chain
// through its transaction index).
func (n *Node) RawTransaction(t testing.TB, txid string) *wire.MsgTx {
	t.Helper()
	var raw string
	if err := n.Call("getrawtransaction", &raw, txid, 0); err != nil {
		t.Fatal(err)
	}
	b, err := hex.DecodeString(raw)
	if err != nil {
		t.Fatal(err)
	}
	var tx wire.MsgTx
	if err := tx.Deserialize(bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return &tx
}

// SendRawTransaction submits a raw transaction (hex) to the node's mempool
// and returns the txid the node computed. A refusal is returned, not fatal,
// so tests can assert on it.
func (n *Node) SendRawTransaction(t testing.TB, hexTx string) (string, error) {
	t.Helper()
	var txid string
	err := n.Call("sendrawtransaction", &txid, hexTx)
	return txid, err
}

// TxInfo is part of getrawtransaction's verbose answer.
type TxInfo struct {
	Txid          string `json:"txid"`
	Confirmations int64  `json:"confirmations"`
	Vsize         int64  `json:"vsize"`
	BlockHash     string `json:"blockhash"`
}

// TxInfo returns the node's verbose view of a transaction.
func (n *Node) TxInfo(t testing.TB, txid string) TxInfo {
	t.Helper()
	var info TxInfo
	if err := n.Call("getrawtransaction", &info, txid, 1); err != nil {
		t.Fatal(err)
	}
	return info
}

// Confirmations returns how many blocks confirm txid (0 while in the mempool).
func (n *Node) Confirmations(t testing.TB, txid string) int {
	t.Helper()
	return int(n.TxInfo(t, txid).Confirmations)
}

// Call is a raw JSON-RPC 1.0 call to the node; result may be nil.
func (n *Node) Call(method string, result any, params ...any) error {
	if params == nil {
		params = []any{}
	}
	body, err := json.Marshal(map[string]any{"jsonrpc": "1.0", "id": 1, "method": method, "params": params})
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, n.rpcURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.SetBasicAuth("u", "p")
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return fmt.Errorf("%s: HTTP %d: %w", method, resp.StatusCode, err)
	}
	if out.Error != nil {
		return fmt.Errorf("%s: %d %s", method, out.Error.Code, out.Error.Message)
	}
	if result == nil {
		return nil
	}
	return json.Unmarshal(out.Result, result)
}

var (
	installMu  sync.Mutex
	installBin string
)

// installBtcd builds the pinned btcd with this machine's Go into a cache
// directory under os.TempDir (keyed by btcd and Go version and platform) and
// returns the binary's path. The build goes to a private directory first and
// is renamed into place, so concurrent test processes never see a partial
// binary.
func installBtcd(t testing.TB) string {
	t.Helper()
	installMu.Lock()
	defer installMu.Unlock()
	if installBin != "" {
		return installBin
	}
	key := strings.NewReplacer("/", "_", " ", "_").Replace(fmt.Sprintf("btcd-%s-%s-%s-%s", BtcdVersion, runtime.Version(), runtime.GOOS, runtime.GOARCH))
	cache := filepath.Join(os.TempDir(), "custodysigner-regtest", key)
	bin := filepath.Join(cache, "btcd")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		installBin = bin
		return bin
	}
	if err := os.MkdirAll(cache, 0o700); err != nil {
		t.Fatalf("btcd cache: %v", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp, err := os.MkdirTemp(cache, "build-")
	if err != nil {
		t.Fatalf("btcd cache: %v", err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command(goBin, "install", "github.com/btcsuite/btcd@"+BtcdVersion)
	cmd.Dir = tmp // outside any module: go install pkg@version never edits a go.mod anyway
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOTOOLCHAIN=local", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install github.com/btcsuite/btcd@%s: %v\n%s", BtcdVersion, err, out)
	}
	if err := os.Rename(filepath.Join(tmp, "btcd"), bin); err != nil {
		t.Fatalf("btcd cache: %v", err)
	}
	installBin = bin
	return bin
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// lockedBuffer collects btcd's output from the exec goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
