// Package loadgen is the end-to-end benchmark harness of docs/BENCHMARKS.md:
// a load generator that signs EIP-1559 transactions and Bitcoin PSBTs
// through a running appliance over keep-alive mutual-TLS connections, and,
// interleaved with it, the raw PKCS#11 C_Sign ceiling of the same token,
// key type and session count, measured in this process through the hsm
// package. It reports signatures per second, latency percentiles, the
// efficiency ratio (end-to-end ÷ raw), the appliance's CPU per signature
// beyond the HSM's own, and the appliance's peak RSS.
package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/internal/app"
	"github.com/custodysigner/appliance/internal/client"
	"github.com/custodysigner/appliance/internal/config"
	"github.com/custodysigner/appliance/internal/store"
)

// Options configure a Harness.
type Options struct {
	// Config is the running appliance's configuration file: its listen
	// address, store, HSM URI, SoftHSM configuration, pool size and dev
	// unseal shares (from which the raw ceiling derives the PIN).
	Config string
	// TLS is the client's certificate; empty fields default to client.crt,
	// client.key and ca.crt beside the configuration's tls.client_ca.
	TLS TLSFiles
	// PID is the appliance process, measured through /proc.
	PID int
	// EthKey and BTCKey are the keys signed with; BTCKey "" skips PSBTs.
	EthKey, BTCKey string
	// Concurrency lists the levels; BTCConcurrency the subset at which
	// PSBTs are signed as well.
	Concurrency, BTCConcurrency []int
	Rounds                      int
	// Warmup precedes each run's measured window of Duration; Settle is
	// the pause between runs.
	Warmup, Duration, Settle time.Duration
	// RawOnly measures only the raw ceiling (to compare pool sizes).
	RawOnly bool
	// Headroom sizes the pre-built bodies of an end-to-end run: the
	// highest raw ceiling measured so far × (Warmup + Duration + 1 s) ×
	// Headroom. (The highest, not the one just measured: a raw run slowed
	// down by other work on the machine must not starve the next run.)
	Headroom float64
	Log      *zap.Logger
	// Progress receives one line per run; nil discards.
	Progress io.Writer
}

// Harness holds what the runs share: the open token, the keys and the
// request body sources.
type Harness struct {
	opts     Options
	cfg      *config.Config
	addr     string
	host     string
	tls      TLSFiles
	module   *hsm.Module
	ref      hsm.KeyRef
	eth, btc bodySource
	ethInfo  keyInfo
	btcInfo  keyInfo
}

// keyInfo is GET /v1/keys/{id}.
type keyInfo struct {
	ID        string `json:"id"`
	Algorithm string `json:"algorithm"`
	Chain     string `json:"chain"`
	Network   string `json:"network"`
	PublicKey string `json:"public_key"`
	Address   string `json:"address"`
}

// Open checks the options, finds the keys through the API, derives the
// token PIN from the dev unseal shares (the same library call the CLI
// uses) and opens the token with the appliance's pool size.
func Open(ctx context.Context, o Options) (*Harness, error) {
	if o.Log == nil {
		return nil, errors.New("loadgen: a logger is required")
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Rounds < 1 || len(o.Concurrency) == 0 || o.Duration <= 0 || o.Warmup < 0 {
		return nil, errors.New("loadgen: rounds, concurrency levels and a positive duration are required")
	}
	for _, c := range append(slices.Clone(o.Concurrency), o.BTCConcurrency...) {
		if c < 1 || c > 1024 {
			return nil, fmt.Errorf("loadgen: concurrency %d is outside 1..1024", c)
		}
	}
	if o.Headroom < 1.1 {
		o.Headroom = 1.5
	}
	cfg, err := config.Load(o.Config)
	if err != nil {
		return nil, err
	}
	h := &Harness{opts: o, cfg: cfg, addr: cfg.Listen, tls: o.TLS}
	if h.host, _, err = net.SplitHostPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen %q: %w", cfg.Listen, err)
	}
	pki := filepath.Dir(cfg.TLS.ClientCA)
	for _, f := range []struct {
		p    *string
		name string
	}{{&h.tls.Cert, "client.crt"}, {&h.tls.Key, "client.key"}, {&h.tls.CA, "ca.crt"}} {
		if *f.p == "" {
			*f.p = filepath.Join(pki, f.name)
		}
	}
	if err := h.findKeys(ctx); err != nil {
		return nil, err
	}
	if err := h.openToken(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

// Close logs out of the token.
func (h *Harness) Close() error {
	if h.module == nil {
		return nil
	}
	return h.module.Close()
}

// PoolSize is the session count of both the appliance and the raw ceiling.
func (h *Harness) PoolSize() int { return h.cfg.HSM.PoolSize }

func (h *Harness) findKeys(ctx context.Context) error {
	c, err := client.New(client.Options{URL: "https://" + h.addr, Cert: h.tls.Cert, Key: h.tls.Key, CA: h.tls.CA})
	if err != nil {
		return err
	}
	get := func(id string) (keyInfo, error) {
		var k keyInfo
		if err := c.Do(ctx, "GET", "/v1/keys/"+id, nil, &k); err != nil {
			return k, fmt.Errorf("GET /v1/keys/%s: %w", id, err)
		}
		return k, nil
	}
	tag := time.Now().UTC().Format("20060102T150405")
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tag += "-" + hex.EncodeToString(rnd[:])

	if h.ethInfo, err = get(h.opts.EthKey); err != nil {
		return err
	}
	if h.ethInfo.Chain != "ethereum" || h.ethInfo.Algorithm != string(hsm.Secp256k1) {
		return fmt.Errorf("key %s is %s/%s, want an ethereum secp256k1 key", h.ethInfo.ID, h.ethInfo.Chain, h.ethInfo.Algorithm)
	}
	chainID, err := strconv.ParseInt(h.ethInfo.Network, 10, 64)
	if err != nil {
		return fmt.Errorf("key %s: network %q is not a chain id", h.ethInfo.ID, h.ethInfo.Network)
	}
	if h.eth, err = newEthSource(h.ethInfo.ID, chainID, tag); err != nil {
		return err
	}
	if h.opts.BTCKey == "" {
		return nil
	}
	if h.btcInfo, err = get(h.opts.BTCKey); err != nil {
		return err
	}
	if h.btcInfo.Chain != "bitcoin" {
		return fmt.Errorf("key %s is a %s key, want bitcoin", h.btcInfo.ID, h.btcInfo.Chain)
	}
	pub, err := hex.DecodeString(h.btcInfo.PublicKey)
	if err != nil {
		return fmt.Errorf("key %s: public_key: %w", h.btcInfo.ID, err)
	}
	h.btc, err = newBTCSource(h.btcInfo.ID, h.btcInfo.Network, pub, tag)
	return err
}

// openToken opens the appliance's token in this process for the raw
// ceiling: same module, token and pool size (from the same configuration
// file), the PIN reconstructed from the dev unseal shares by
// app.PINFromShares, the key found by its registered CKA_ID.
func (h *Harness) openToken(ctx context.Context) error {
	if len(h.cfg.Seal.DevUnsealShares) == 0 {
		return errors.New("the raw ceiling needs the token PIN: the configuration must list seal.dev_unseal_shares (a dev or bench instance)")
	}
	st, err := store.Open(ctx, h.cfg.Store.Path, h.opts.Log.Named("store"))
	if err != nil {
		return err
	}
	k, err := st.GetKey(ctx, h.ethInfo.ID)
	if err != nil {
		_ = st.Close()
		return fmt.Errorf("registry key %s: %w", h.ethInfo.ID, err)
	}
	pin, err := app.PINFromShares(ctx, st, h.cfg.Seal.DevUnsealShares)
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("PIN from the dev unseal shares: %w", err)
	}
	defer clear(pin)
	if h.module, err = app.OpenHSM(ctx, h.cfg, h.opts.Log, pin); err != nil {
		return err
	}
	h.ref = hsm.KeyRef{ID: k.CKAID, Algorithm: hsm.Algorithm(k.Algorithm), WrappedBackup: k.WrappedBackup}
	// One signature up front: a wrong key or PIN fails here, not mid-run.
	if _, err := h.module.Sign(ctx, h.ref, make([]byte, 32)); err != nil {
		return fmt.Errorf("raw ceiling: sign with %s: %w", h.ethInfo.ID, err)
	}
	return nil
}

// Run measures every round: for each concurrency level the raw ceiling,
// then EIP-1559 signing through the appliance, then (at the PSBT levels)
// PSBT signing. It stops at the first run with an error and returns what
// it has with the error.
func (h *Harness) Run(ctx context.Context) (*Results, error) {
	o := h.opts
	res := &Results{Meta: Meta{
		Date: time.Now(), PoolSize: h.PoolSize(), Warmup: o.Warmup, Duration: o.Duration, Rounds: o.Rounds,
		Concurrency: o.Concurrency, BTCConcurrency: o.BTCConcurrency,
		EthKey: h.ethInfo.ID, EthNetwork: h.ethInfo.Network, BTCKey: h.btcInfo.ID, BTCNetwork: h.btcInfo.Network,
	}}
	res.Meta.fillMachine(ctx, h.module)
	start := time.Now()
	t := timing{pid: o.PID, warmup: o.Warmup, duration: o.Duration}
	btcAt := map[int]bool{}
	if h.btc != nil {
		for _, c := range o.BTCConcurrency {
			btcAt[c] = true
		}
	}
	var ceiling float64 // the highest raw rate so far
	for round := 1; round <= o.Rounds; round++ {
		for _, c := range o.Concurrency {
			if !sleep(ctx, o.Settle) {
				return res, ctx.Err()
			}
			raw, err := t.rawRun(ctx, h.module, h.ref, c)
			raw.Round = round
			if err := h.record(res, raw, err); err != nil {
				return res, err
			}
			ceiling = max(ceiling, raw.Rate)
			var kinds []Kind
			if !o.RawOnly {
				kinds = append(kinds, KindEth)
			}
			if btcAt[c] && !o.RawOnly {
				kinds = append(kinds, KindBTC)
			}
			for _, k := range kinds {
				if !sleep(ctx, o.Settle) {
					return res, ctx.Err()
				}
				r, err := h.e2e(ctx, t, k, c, ceiling)
				r.Kind, r.Round = k, round
				if err := h.record(res, r, err); err != nil {
					return res, err
				}
			}
		}
	}
	res.Meta.Wall = time.Since(start)
	if o.PID > 0 {
		m, err := ProcessMemory(o.PID)
		if err != nil {
			return res, fmt.Errorf("appliance memory: %w", err)
		}
		res.PeakRSS = m.HWM
	}
	return res, nil
}

// record appends r and reports it; a run error or failed operations end
// the harness.
func (h *Harness) record(res *Results, r Run, err error) error {
	res.Runs = append(res.Runs, r)
	fmt.Fprintf(h.opts.Progress, "round %d c=%-2d %-3s %7.0f /s  p50 %7.2f ms  p99 %7.2f ms  µs/op: appliance %5.0f self %4.0f  busy %3.0f%% others %.2f cores  errors %d\n",
		r.Round, r.Concurrency, r.Kind, r.Rate, ms(r.P50), ms(r.P99), r.perOp(r.ApplianceCPU), r.perOp(r.SelfCPU), 100*r.MachineBusy, r.OtherCores(), r.Errors)
	// Failed operations first: they explain most other errors (bodies
	// run out fast when every answer is an error).
	if r.Errors > 0 {
		return fmt.Errorf("round %d c=%d %s: %d operations failed, the first: %s", r.Round, r.Concurrency, r.Kind, r.Errors, strings.Join(r.ErrorSamples, "; "))
	}
	if err != nil {
		return fmt.Errorf("round %d c=%d %s: %w", r.Round, r.Concurrency, r.Kind, err)
	}
	return nil
}

// e2e pre-builds the bodies, opens one connection per worker and runs.
func (h *Harness) e2e(ctx context.Context, t timing, k Kind, c int, ceiling float64) (Run, error) {
	src := h.eth
	if k == KindBTC {
		src = h.btc
	}
	n := int(math.Ceil(ceiling*(t.warmup+t.duration+time.Second).Seconds()*h.opts.Headroom)) + 64*c
	bodies, err := src.build(n)
	if err != nil {
		return Run{}, fmt.Errorf("build %d bodies: %w", n, err)
	}
	tcfg, err := clientTLS(h.tls, h.host)
	if err != nil {
		return Run{}, err
	}
	conns := make([]*conn, c)
	defer func() {
		for _, cn := range conns {
			if cn != nil {
				cn.close()
			}
		}
	}()
	for i := range conns {
		conns[i] = newConn(h.addr, h.addr, "/v1/sign", tcfg)
		if err := conns[i].dial(10 * time.Second); err != nil {
			return Run{}, fmt.Errorf("connect to %s: %w", h.addr, err)
		}
	}
	return t.e2eRun(ctx, conns, bodies)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
