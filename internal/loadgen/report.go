package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Meta says how, when and where the figures were measured.
type Meta struct {
	Command          string        `json:"command"`
	Date             time.Time     `json:"date"`
	CPUModel         string        `json:"cpu_model"`
	Cores            int           `json:"cores"`
	Kernel           string        `json:"kernel"`
	SoftHSM          string        `json:"softhsm"`
	GoVersion        string        `json:"go_version"`
	ApplianceVersion string        `json:"appliance_version"`
	PoolSize         int           `json:"pool_size"`
	Warmup           time.Duration `json:"warmup_ns"`
	Duration         time.Duration `json:"duration_ns"`
	Rounds           int           `json:"rounds"`
	Concurrency      []int         `json:"concurrency"`
	BTCConcurrency   []int         `json:"btc_concurrency"`
	EthKey           string        `json:"eth_key"`
	EthNetwork       string        `json:"eth_network"`
	BTCKey           string        `json:"btc_key"`
	BTCNetwork       string        `json:"btc_network"`
	Wall             time.Duration `json:"wall_ns"` // the measuring, start to end
}

// Results are every run of a harness invocation.
type Results struct {
	Meta    Meta   `json:"meta"`
	Runs    []Run  `json:"runs"`
	PeakRSS uint64 `json:"peak_rss"` // the appliance's VmHWM at the end
}

// Targets of issue 8.
const (
	TargetEfficiencyC8 = 0.85
	TargetOverheadUS   = 150.0
	TargetP99Ratio     = 3.0
	TargetPeakRSS      = 150 << 20
)

// Summary is one concurrency level of one kind: the medians over the
// rounds in which both it and the raw ceiling at that level were measured.
// Ratios and differences (efficiency, overhead) are taken per round, then
// the median.
type Summary struct {
	Kind        Kind
	Concurrency int
	Rounds      int
	Rate        float64 // signatures per second through the appliance
	RawRate     float64 // C_Sign per second, same level
	Efficiency  float64 // Rate ÷ RawRate
	P50, P99    float64 // ms
	ApplianceUS float64 // appliance CPU per signature
	HSMUS       float64 // this process's CPU per raw C_Sign
	OverheadUS  float64 // ApplianceUS − HSMUS
	ClientUS    float64 // load generator CPU per request
	Busy        float64 // machine utilisation, fraction of all cores
	OtherCores  float64 // cores kept busy by other processes (Run.OtherCores)
	MaxRSS      uint64  // the largest appliance VmRSS sampled in any round
}

func (r *Results) find(k Kind, round, c int) (Run, bool) {
	for _, x := range r.Runs {
		if x.Kind == k && x.Round == round && x.Concurrency == c {
			return x, true
		}
	}
	return Run{}, false
}

// Summaries returns one Summary per concurrency level measured for kind k,
// in the order of Meta.Concurrency.
func (r *Results) Summaries(k Kind) []Summary {
	var out []Summary
	for _, c := range r.Meta.Concurrency {
		var rate, raw, eff, p50, p99, app, hsmUS, over, client, busy, other []float64
		var maxRSS uint64
		for round := 1; round <= r.Meta.Rounds; round++ {
			e, ok1 := r.find(k, round, c)
			w, ok2 := r.find(KindRaw, round, c)
			if !ok1 || !ok2 || e.Count == 0 || w.Count == 0 {
				continue
			}
			rate = append(rate, e.Rate)
			raw = append(raw, w.Rate)
			eff = append(eff, e.Rate/w.Rate)
			p50 = append(p50, ms(e.P50))
			p99 = append(p99, ms(e.P99))
			app = append(app, e.perOp(e.ApplianceCPU))
			hsmUS = append(hsmUS, w.perOp(w.SelfCPU))
			over = append(over, e.perOp(e.ApplianceCPU)-w.perOp(w.SelfCPU))
			client = append(client, e.perOp(e.SelfCPU))
			busy = append(busy, e.MachineBusy)
			other = append(other, max(e.OtherCores(), w.OtherCores()))
			maxRSS = max(maxRSS, e.MaxRSS)
		}
		if len(rate) == 0 {
			continue
		}
		out = append(out, Summary{
			Kind: k, Concurrency: c, Rounds: len(rate),
			Rate: Median(rate), RawRate: Median(raw), Efficiency: Median(eff),
			P50: Median(p50), P99: Median(p99),
			ApplianceUS: Median(app), HSMUS: Median(hsmUS), OverheadUS: Median(over),
			ClientUS: Median(client), Busy: Median(busy), OtherCores: Median(other), MaxRSS: maxRSS,
		})
	}
	return out
}

// DisturbedCores is the median other load (Run.OtherCores) from which a
// report says that other work disturbed the figures.
const DisturbedCores = 0.1

// OtherLoad is the median over every run of the cores other processes
// kept busy.
func (r *Results) OtherLoad() float64 {
	if len(r.Runs) == 0 {
		return 0
	}
	xs := make([]float64, len(r.Runs))
	for i, x := range r.Runs {
		xs[i] = x.OtherCores()
	}
	return Median(xs)
}

// Check is one target, measured.
type Check struct {
	Target   string
	Measured string
	// Result is "met", "missed" or "not measured".
	Result string
}

// Checks compares the EIP-1559 medians with the targets.
func (r *Results) Checks() []Check {
	at := map[int]Summary{}
	for _, s := range r.Summaries(KindEth) {
		at[s.Concurrency] = s
	}
	result := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	const none = "not measured"
	var out []Check
	c8, ok8 := at[8]
	c1, ok1 := at[1]
	c32, ok32 := at[32]
	if ok8 {
		out = append(out,
			Check{fmt.Sprintf("efficiency at c8 ≥ %.2f", TargetEfficiencyC8), fmt.Sprintf("%.2f", c8.Efficiency), result(c8.Efficiency >= TargetEfficiencyC8)},
			Check{fmt.Sprintf("appliance CPU per signature beyond the HSM's, at c8 ≤ %.0f µs", TargetOverheadUS), fmt.Sprintf("%.0f µs", c8.OverheadUS), result(c8.OverheadUS <= TargetOverheadUS)})
	} else {
		out = append(out, Check{"efficiency at c8", "", none}, Check{"CPU per signature beyond the HSM's at c8", "", none})
	}
	if ok8 && ok1 && c1.P50 > 0 {
		ratio := c8.P99 / c1.P50
		out = append(out, Check{fmt.Sprintf("p99 at c8 ÷ p50 at c1 ≤ %.0f", TargetP99Ratio),
			fmt.Sprintf("%.2f (%.2f ms ÷ %.2f ms)", ratio, c8.P99, c1.P50), result(ratio <= TargetP99Ratio)})
	} else {
		out = append(out, Check{"p99 at c8 ÷ p50 at c1", "", none})
	}
	switch {
	case r.PeakRSS > 0 && ok32:
		out = append(out, Check{fmt.Sprintf("peak RSS at c32 < %d MB", TargetPeakRSS>>20),
			fmt.Sprintf("%s (VmHWM at the end; largest VmRSS sampled during c32: %s)", mb(r.PeakRSS), mb(c32.MaxRSS)), result(r.PeakRSS < TargetPeakRSS)})
	case r.PeakRSS > 0:
		out = append(out, Check{fmt.Sprintf("peak RSS at c32 < %d MB", TargetPeakRSS>>20),
			fmt.Sprintf("%s (VmHWM; c32 was not run)", mb(r.PeakRSS)), none})
	default:
		out = append(out, Check{"peak RSS at c32", "", none})
	}
	return out
}

// Markdown renders the report: how it was measured, the medians per kind,
// the targets and every round's figures.
func (r *Results) Markdown() string {
	m := r.Meta
	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s with:\n\n```sh\n%s\n```\n\n", m.Date.UTC().Format("2006-01-02 15:04 MST"), m.Command)
	fmt.Fprintf(&b, "Machine: %s, %d cores, %s; %s; %s; appliance %s. SoftHSM pool: %d sessions (the appliance's `hsm.pool_size`, "+
		"and the raw ceiling's). Each run: %s warm-up, then %s measured; %s, interleaved (per level: raw, EIP-1559, PSBT); "+
		"load generator on the same machine. Measuring took %s.\n\n",
		m.CPUModel, m.Cores, m.Kernel, m.SoftHSM, m.GoVersion, orDash(m.ApplianceVersion), m.PoolSize,
		dur(m.Warmup), dur(m.Duration), plural(m.Rounds, "round"), m.Wall.Round(time.Second))

	disturbed := r.OtherLoad() >= DisturbedCores
	if disturbed {
		fmt.Fprintf(&b, "**Disturbed run:** other processes kept a median of %.2f of the %d cores busy during the runs (column "+
			"*other load*). These figures measure a shared machine as much as the appliance; do not judge the targets by them.\n\n",
			r.OtherLoad(), m.Cores)
	}
	table := func(title string, ss []Summary) {
		if len(ss) == 0 {
			return
		}
		fmt.Fprintf(&b, "%s — medians over %s:\n\n", title, plural(m.Rounds, "round"))
		b.WriteString("| c | e2e sig/s | raw C_Sign/s | efficiency | p50 ms | p99 ms | appliance CPU µs/sig | HSM CPU µs/sig | overhead µs/sig | loadgen CPU µs/req | machine busy | other load |\n")
		b.WriteString("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, s := range ss {
			fmt.Fprintf(&b, "| %d | %s | %s | %.2f | %.2f | %.2f | %.0f | %.0f | %.0f | %.0f | %.0f%% | %.2f |\n",
				s.Concurrency, thousands(s.Rate), thousands(s.RawRate), s.Efficiency, s.P50, s.P99,
				s.ApplianceUS, s.HSMUS, s.OverheadUS, s.ClientUS, 100*s.Busy, s.OtherCores)
		}
		b.WriteString("\n")
	}
	table(fmt.Sprintf("**EIP-1559 transfers** (key `%s`, secp256k1, chain %s)", m.EthKey, m.EthNetwork), r.Summaries(KindEth))
	table(fmt.Sprintf("**Bitcoin PSBTs** (key `%s`, one P2WPKH input, %s; raw ceiling: the same secp256k1 C_Sign)", m.BTCKey, m.BTCNetwork), r.Summaries(KindBTC))

	if disturbed {
		b.WriteString("Targets (EIP-1559 medians; a disturbed run, see above):\n\n")
	} else {
		b.WriteString("Targets (EIP-1559 medians):\n\n")
	}
	b.WriteString("| target | measured | result |\n| --- | --- | --- |\n")
	for _, c := range r.Checks() {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", c.Target, orDash(c.Measured), c.Result)
	}
	b.WriteString("\n")

	b.WriteString("Every round (rates in sig/s, latencies p50/p99 in ms, CPU in µs per signature):\n\n")
	b.WriteString("| round | c | raw /s | HSM µs | eth /s | eth p50 / p99 | eth appliance µs | btc /s | btc p50 / p99 | btc appliance µs | other load |\n")
	b.WriteString("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for round := 1; round <= m.Rounds; round++ {
		for _, c := range m.Concurrency {
			w, ok := r.find(KindRaw, round, c)
			if !ok {
				continue
			}
			cells := []string{strconv.Itoa(round), strconv.Itoa(c), thousands(w.Rate), fmt.Sprintf("%.0f", w.perOp(w.SelfCPU))}
			other := w.OtherCores()
			for _, k := range []Kind{KindEth, KindBTC} {
				if e, ok := r.find(k, round, c); ok {
					other = max(other, e.OtherCores())
					cells = append(cells, thousands(e.Rate), fmt.Sprintf("%.2f / %.2f", ms(e.P50), ms(e.P99)), fmt.Sprintf("%.0f", e.perOp(e.ApplianceCPU)))
				} else {
					cells = append(cells, "", "", "")
				}
			}
			cells = append(cells, fmt.Sprintf("%.2f", other))
			fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
		}
	}
	return b.String()
}

// Doc markers and section of docs/BENCHMARKS.md.
const (
	DocBegin   = "<!-- harness:begin -->"
	DocEnd     = "<!-- harness:end -->"
	DocSection = "## End-to-end harness (issue 8)"
)

// WriteDoc puts content between the harness markers of the markdown file
// at path, replacing what was there. Without markers it adds them at the
// end of the harness section, or adds the section at the end of the file.
// The file is replaced atomically.
func WriteDoc(path, content string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := spliceDoc(raw, content)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".benchmarks-*.md")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := errors.Join(tmp.Chmod(fi.Mode().Perm()), tmp.Close()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func spliceDoc(doc []byte, content string) ([]byte, error) {
	block := DocBegin + "\n" + strings.TrimRight(content, "\n") + "\n" + DocEnd
	bi, ei := bytes.Index(doc, []byte(DocBegin)), bytes.Index(doc, []byte(DocEnd))
	switch {
	case bi >= 0 && ei > bi:
		return slices.Concat(doc[:bi], []byte(block), doc[ei+len(DocEnd):]), nil
	case bi >= 0 || ei >= 0:
		return nil, errors.New("harness markers are incomplete or out of order")
	}
	doc = bytes.TrimRight(doc, "\n")
	si := bytes.Index(doc, []byte("\n"+DocSection+"\n"))
	if si < 0 {
		return slices.Concat(doc, []byte("\n\n"+DocSection+"\n\n"+block+"\n")), nil
	}
	// The end of the harness section: the next heading of level 2 or less.
	body := si + len(DocSection) + 2
	end := len(doc)
	if ni := bytes.Index(doc[body:], []byte("\n## ")); ni >= 0 {
		end = body + ni
	}
	if ni := bytes.Index(doc[body:], []byte("\n# ")); ni >= 0 && body+ni < end {
		end = body + ni
	}
	sec := bytes.TrimRight(doc[:end], "\n")
	rest := doc[end:]
	out := slices.Concat(sec, []byte("\n\n"+block+"\n"))
	if len(rest) > 0 {
		out = slices.Concat(out, []byte("\n"), bytes.TrimLeft(rest, "\n"), []byte("\n"))
	}
	return out, nil
}

// thousands formats a rate rounded to an integer with comma separators.
func thousands(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "–"
	}
	s := strconv.FormatInt(int64(math.Round(x)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func mb(b uint64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

func dur(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%d s", d/time.Second)
	}
	return d.String()
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
