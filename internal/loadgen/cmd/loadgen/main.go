// Command loadgen runs the end-to-end benchmark harness against a running
// appliance (scripts/bench.sh starts one and calls it; docs/BENCHMARKS.md
// explains the figures). It prints the report as markdown and can write it
// into docs/BENCHMARKS.md between the harness markers. It exits non-zero
// when any request or C_Sign fails; missed targets are reported, not fatal.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/custodysigner/appliance/internal/loadgen"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		o                     loadgen.Options
		conc, btcConc         string
		doc, command, jsonOut string
		applianceVersion      string
	)
	flag.StringVar(&o.Config, "config", "var/bench/appliance.yaml", "the running appliance's configuration file")
	flag.IntVar(&o.PID, "pid", 0, "the appliance's process id (CPU and memory from /proc)")
	flag.StringVar(&o.TLS.Cert, "cert", "", "client certificate (default: client.crt beside tls.client_ca)")
	flag.StringVar(&o.TLS.Key, "key", "", "client key (default: client.key beside tls.client_ca)")
	flag.StringVar(&o.TLS.CA, "ca", "", "CA of the server certificate (default: ca.crt beside tls.client_ca)")
	flag.StringVar(&o.EthKey, "eth-key", "eth-dev", "Ethereum key to sign EIP-1559 transactions with")
	flag.StringVar(&o.BTCKey, "btc-key", "btc-dev", "Bitcoin key to sign PSBTs with (empty: none)")
	flag.StringVar(&conc, "c", "1,2,4,8,16,32", "concurrency levels (connections, and goroutines for the raw ceiling)")
	flag.StringVar(&btcConc, "btc-c", "1,8,32", "levels at which PSBTs are signed too (empty: none)")
	flag.IntVar(&o.Rounds, "rounds", 3, "interleaved rounds")
	flag.DurationVar(&o.Warmup, "warmup", time.Second, "warm-up of each run, not measured")
	flag.DurationVar(&o.Duration, "duration", 8*time.Second, "measured window of each run")
	flag.DurationVar(&o.Settle, "settle", 500*time.Millisecond, "pause between runs")
	flag.BoolVar(&o.RawOnly, "raw-only", false, "measure only the raw C_Sign ceiling (e.g. to compare pool sizes)")
	flag.Float64Var(&o.Headroom, "headroom", 1.5, "pre-built bodies per run: raw ceiling × run time × headroom")
	flag.StringVar(&doc, "doc", "", "markdown file to write the report into, between the harness markers (empty: only print)")
	flag.StringVar(&command, "command", "", "the command to record in the report (default: this one)")
	flag.StringVar(&applianceVersion, "appliance-version", "", "the appliance's version, for the report")
	flag.StringVar(&jsonOut, "json", "", "file to write every run's figures to, as JSON")
	flag.Parse()

	var err error
	if o.Concurrency, err = levels(conc); err != nil {
		return fmt.Errorf("-c: %w", err)
	}
	if o.BTCConcurrency, err = levels(btcConc); err != nil {
		return fmt.Errorf("-btc-c: %w", err)
	}
	if command == "" {
		command = strings.Join(os.Args, " ")
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zapcore.WarnLevel)
	log, err := zc.Build()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	o.Log, o.Progress = log, os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := loadgen.Open(ctx, o)
	if err != nil {
		return err
	}
	defer h.Close()
	res, runErr := h.Run(ctx)
	res.Meta.Command, res.Meta.ApplianceVersion = command, applianceVersion
	report := res.Markdown()
	if runErr != nil {
		fmt.Printf("PARTIAL RESULTS (the harness stopped: %v)\n\n%s", runErr, report)
	} else {
		fmt.Print(report)
	}
	if jsonOut != "" {
		raw, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return errors.Join(runErr, err)
		}
		if err := os.WriteFile(jsonOut, raw, 0o644); err != nil {
			return errors.Join(runErr, err)
		}
	}
	if runErr != nil {
		return runErr
	}
	if doc != "" {
		if err := loadgen.WriteDoc(doc, report); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "loadgen: report written to %s\n", doc)
	}
	return nil
}

// levels parses "1,2,4" into distinct positive integers, in order.
func levels(s string) ([]int, error) {
	var out []int
	seen := map[int]bool{}
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, nil
}
