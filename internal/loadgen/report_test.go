package loadgen

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// run is a Run with the figures the report uses: rate and CPU per
// operation are given directly (Count operations in one second).
func run(k Kind, round, c, count int, p50, p99 time.Duration, appUS, selfUS float64) Run {
	return Run{
		Kind: k, Round: round, Concurrency: c, Window: time.Second, Count: count, Rate: float64(count),
		P50: p50, P99: p99,
		ApplianceCPU: time.Duration(appUS*float64(count)) * time.Microsecond,
		SelfCPU:      time.Duration(selfUS*float64(count)) * time.Microsecond,
		MachineCPU:   2 * time.Second, MachineBusy: 1,
	}
}

func testResults() *Results {
	ms := time.Millisecond
	r := &Results{
		Meta: Meta{
			Command: "make bench-harness", Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC),
			CPUModel: "Test CPU", Cores: 2, Kernel: "Linux 6.1", SoftHSM: "SoftHSM 2.6.1", GoVersion: "go1.26",
			PoolSize: 4, Warmup: time.Second, Duration: 8 * time.Second, Rounds: 3,
			Concurrency: []int{1, 8, 32}, BTCConcurrency: []int{8},
			EthKey: "eth-dev", EthNetwork: "1337", BTCKey: "btc-dev", BTCNetwork: "regtest", Wall: 5 * time.Minute,
		},
		PeakRSS: 100 << 20,
	}
	// Raw ceilings and e2e rates chosen so that the median of the per-round
	// ratios (0.9) differs from the ratio of the medians (900/1100).
	raws := []int{1000, 1100, 1200}
	e2es := []int{900, 1000, 1000} // ratios 0.9, 0.909…, 0.833…
	for i := range 3 {
		round := i + 1
		r.Runs = append(r.Runs,
			run(KindRaw, round, 1, 2000, ms/2, ms, 0, 450),
			run(KindEth, round, 1, 300+100*i, 2*ms, 4*ms, 700, 100),
			run(KindRaw, round, 8, raws[i], 2*ms, 10*ms, 0, 400+10*float64(i)),
			run(KindEth, round, 8, e2es[i], 5*ms, time.Duration(5+i)*ms, 500+10*float64(i), 80),
			run(KindBTC, round, 8, 500, 10*ms, 20*ms, 900, 90),
			run(KindRaw, round, 32, 1500, 5*ms, 20*ms, 0, 450),
			run(KindEth, round, 32, 1200, 20*ms, 60*ms, 600, 70),
		)
		r.Runs[len(r.Runs)-1].MaxRSS = uint64(80+i) << 20
	}
	return r
}

func TestSummariesAreMediansOfPerRoundFigures(t *testing.T) {
	r := testResults()
	eth := r.Summaries(KindEth)
	if len(eth) != 3 || eth[0].Concurrency != 1 || eth[1].Concurrency != 8 || eth[2].Concurrency != 32 {
		t.Fatalf("EIP-1559 summaries for levels %v", eth)
	}
	c8 := eth[1]
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9*math.Max(1, math.Abs(want)) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	near("rate", c8.Rate, 1000)
	near("raw rate", c8.RawRate, 1100)
	near("efficiency (median of per-round ratios)", c8.Efficiency, 0.9)
	near("p50", c8.P50, 5)
	near("p99", c8.P99, 6)
	near("appliance µs", c8.ApplianceUS, 510)
	near("HSM µs", c8.HSMUS, 410)
	near("overhead µs", c8.OverheadUS, 100)
	near("loadgen µs", c8.ClientUS, 80)
	if c8.Rounds != 3 {
		t.Errorf("rounds = %d, want 3", c8.Rounds)
	}
	if got := eth[2].MaxRSS; got != 82<<20 {
		t.Errorf("c32 max RSS = %d, want the largest of the rounds", got)
	}
	btc := r.Summaries(KindBTC)
	if len(btc) != 1 || btc[0].Concurrency != 8 || btc[0].Efficiency != 500.0/1100 {
		t.Errorf("PSBT summaries %+v: want one, at c8, against the raw ceiling of the same rounds", btc)
	}
}

func TestSummariesSkipRoundsWithoutTheirRawRun(t *testing.T) {
	r := testResults()
	var kept []Run
	for _, x := range r.Runs {
		if !(x.Kind == KindRaw && x.Round == 2 && x.Concurrency == 8) {
			kept = append(kept, x)
		}
	}
	r.Runs = kept
	c8 := r.Summaries(KindEth)[1]
	if c8.Rounds != 2 {
		t.Fatalf("rounds = %d, want 2 (round 2 has no raw run at c8)", c8.Rounds)
	}
	if want := (0.9 + 1000.0/1200) / 2; math.Abs(c8.Efficiency-want) > 1e-12 {
		t.Errorf("efficiency = %v, want %v", c8.Efficiency, want)
	}
}

func TestChecks(t *testing.T) {
	r := testResults()
	got := map[string]Check{}
	for _, c := range r.Checks() {
		got[strings.Fields(c.Target)[0]] = c
	}
	for first, want := range map[string]string{
		"efficiency": "met", // 0.90 ≥ 0.85
		"appliance":  "met", // 100 µs ≤ 150
		"p99":        "met", // 6 ms ÷ 2 ms = 3.00, at the bound
		"peak":       "met", // 100 MB < 150 MB
	} {
		if got[first].Result != want {
			t.Errorf("%s: %q (%s), want %q", first, got[first].Result, got[first].Measured, want)
		}
	}
	if m := got["p99"].Measured; !strings.HasPrefix(m, "3.00 ") {
		t.Errorf("p99 ratio measured %q, want 3.00", m)
	}

	// Make every target miss.
	for i := range r.Runs {
		x := &r.Runs[i]
		if x.Kind == KindEth && x.Concurrency == 8 {
			x.Rate, x.Count = 100, 100
			x.ApplianceCPU = 100 * 900 * time.Microsecond
			x.P99 = 50 * time.Millisecond
		}
	}
	r.PeakRSS = 200 << 20
	for _, c := range r.Checks() {
		if c.Result != "**missed**" {
			t.Errorf("%s: %s (%s), want missed", c.Target, c.Result, c.Measured)
		}
	}

	// Levels that were not run are not judged.
	r.Meta.Concurrency = []int{2, 4}
	for _, c := range r.Checks() {
		if c.Result != "not measured" {
			t.Errorf("%s: %s, want not measured", c.Target, c.Result)
		}
	}
}

func TestMarkdown(t *testing.T) {
	md := testResults().Markdown()
	for _, want := range []string{
		"```sh\nmake bench-harness\n```",
		"Test CPU, 2 cores, Linux 6.1; SoftHSM 2.6.1; go1.26",
		"SoftHSM pool: 4 sessions",
		"1 s warm-up, then 8 s measured; 3 rounds, interleaved",
		"**EIP-1559 transfers** (key `eth-dev`, secp256k1, chain 1337) — medians over 3 rounds",
		"| 8 | 1,000 | 1,100 | 0.90 | 5.00 | 6.00 | 510 | 410 | 100 | 80 | 100% | ",
		"**Bitcoin PSBTs** (key `btc-dev`",
		"| efficiency at c8 ≥ 0.85 | 0.90 | met |",
		"| 2 | 8 | 1,100 | 410 | 1,000 | 5.00 / 6.00 | 510 | 500 | 10.00 / 20.00 | 900 |",
		"| 3 | 32 | 1,500 | 450 | 1,200 | 20.00 / 60.00 | 600 |  |  |  |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestMarkdownFlagsADisturbedRun(t *testing.T) {
	r := testResults() // MachineCPU of 2 s a second: the machine is full
	if md := r.Markdown(); !strings.Contains(md, "**Disturbed run:**") || !strings.Contains(md, "a disturbed run, see above") {
		t.Errorf("a run on a full machine is not flagged:\n%s", md)
	}
	for i := range r.Runs {
		x := &r.Runs[i]
		x.MachineCPU = x.ApplianceCPU + x.SelfCPU + x.Window/100 // 0.01 cores of others
	}
	if got := r.OtherLoad(); math.Abs(got-0.01) > 1e-9 {
		t.Errorf("OtherLoad = %v, want 0.01", got)
	}
	if md := r.Markdown(); strings.Contains(md, "isturbed") {
		t.Errorf("a quiet run is flagged:\n%s", md)
	}
}

func TestSpliceDoc(t *testing.T) {
	const report = "| a | b |\n"
	block := DocBegin + "\n| a | b |\n" + DocEnd
	for _, tc := range []struct {
		name, doc, want string
	}{
		{
			name: "markers: replaced between them, the rest kept byte for byte",
			doc:  "# B\n\n" + DocSection + "\n\nHow to run.\n\n" + DocBegin + "\nold\nfigures\n" + DocEnd + "\n\n## Next\n\ntext\n",
			want: "# B\n\n" + DocSection + "\n\nHow to run.\n\n" + block + "\n\n## Next\n\ntext\n",
		},
		{
			name: "section without markers: added at the section's end",
			doc:  "# B\n\n" + DocSection + "\n\nHow to run.\n\n## Next\n\ntext\n",
			want: "# B\n\n" + DocSection + "\n\nHow to run.\n\n" + block + "\n\n## Next\n\ntext\n",
		},
		{
			name: "section last in the file",
			doc:  "# B\n\n" + DocSection + "\n\nHow to run.\n",
			want: "# B\n\n" + DocSection + "\n\nHow to run.\n\n" + block + "\n",
		},
		{
			name: "no section: added at the end",
			doc:  "# B\n\n## Other\n\ntext\n\n",
			want: "# B\n\n## Other\n\ntext\n\n" + DocSection + "\n\n" + block + "\n",
		},
	} {
		got, err := spliceDoc([]byte(tc.doc), report)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if string(got) != tc.want {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", tc.name, got, tc.want)
		}
		// Splicing again replaces, never duplicates.
		again, err := spliceDoc(got, report)
		if err != nil || string(again) != tc.want {
			t.Errorf("%s: a second splice changed the document (%v):\n%s", tc.name, err, again)
		}
	}
	for _, doc := range []string{"x\n" + DocBegin + "\n", "x\n" + DocEnd + "\n", DocEnd + "\n" + DocBegin + "\n"} {
		if _, err := spliceDoc([]byte(doc), report); err == nil {
			t.Errorf("markers %q: no error", doc)
		}
	}
}

func TestWriteDocKeepsModeAndReplacesAtomically(t *testing.T) {
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	if err := os.WriteFile(path, []byte("# B\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := WriteDoc(path, "first"); err != nil {
		t.Fatal(err)
	}
	if err := WriteDoc(path, "second"); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "# B\n\n" + DocSection + "\n\n" + DocBegin + "\nsecond\n" + DocEnd + "\n"; string(raw) != want {
		t.Errorf("document:\n%s\nwant\n%s", raw, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("%d files left in the directory, want only the document", len(entries))
	}
	if err := WriteDoc(filepath.Join(t.TempDir(), "missing.md"), "x"); err == nil {
		t.Error("WriteDoc of a missing file: no error")
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999.4: "999", 999.5: "1,000", 1234567: "1,234,567", -4321: "-4,321", math.NaN(): "–"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}
