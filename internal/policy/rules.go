package policy

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strings"
	"time"

	"github.com/custodysigner/appliance/internal/jsonstrict"
	"github.com/custodysigner/appliance/internal/store"
)

// Rules is one version of a key's policy, stored as JSON. Asset names are
// "ETH"/"BTC" for native coins or a token contract address, compared
// case-insensitively. Amounts are decimal strings in base units.
//
// The zero Rules (what a key with no stored rules gets) imposes no limits:
// every intent is allowed except contract calls, which are refused unless a
// contract is listed in Contracts. Give every production key rules.
type Rules struct {
	PerTxMax       map[string]string `json:"per_tx_max,omitempty"`      // asset → max per transaction
	Windows        []Window          `json:"windows,omitempty"`         // rolling-window limits
	RatePerClient  *Rate             `json:"rate_per_client,omitempty"` // token bucket per (key, principal)
	RatePerKey     *Rate             `json:"rate_per_key,omitempty"`    // token bucket per key
	Allowlist      bool              `json:"allowlist,omitempty"`       // only allowlisted destinations may receive
	AllowlistDelay string            `json:"allowlist_delay,omitempty"` // time lock for additions, e.g. "24h"
	// Ethereum fee caps (wei, decimal); "" = none.
	MaxFeePerGas         string `json:"max_fee_per_gas,omitempty"`
	MaxPriorityFeePerGas string `json:"max_priority_fee_per_gas,omitempty"`
	// Bitcoin fee caps: sat/vB (0 = none) and absolute sat ("" = none).
	MaxFeeRate float64 `json:"max_fee_rate,omitempty"`
	MaxFee     string  `json:"max_fee,omitempty"`
	// Contracts lists callable contracts → allowed selectors ("0x" + 8 hex);
	// an empty list allows any selector.
	Contracts map[string][]string `json:"contracts,omitempty"`
	// ApprovalAbove: asset → amount above which a transaction needs M approvals.
	ApprovalAbove             map[string]string `json:"approval_above,omitempty"`
	ApprovalForNonAllowlisted bool              `json:"approval_for_non_allowlisted,omitempty"`
	ApprovalForContractCalls  bool              `json:"approval_for_contract_calls,omitempty"`
	Approvals                 int               `json:"approvals,omitempty"` // M
}

// Window is a rolling-window value limit: at most Max of Asset within any
// Duration ending now. It is exact over the window, not reset at midnight.
type Window struct {
	Asset    string `json:"asset"`
	Duration string `json:"duration"` // Go duration, e.g. "1h", "24h"
	Max      string `json:"max"`
}

// Rate is a token bucket: Burst requests at once, refilled at PerSecond.
type Rate struct {
	PerSecond float64 `json:"per_second"`
	Burst     int     `json:"burst"`
}

// MaxWindow is the longest rolling window any rules may set. Usage recorded
// longer ago than that can never count again, whatever rules come later:
// Prune may delete it.
const MaxWindow = 400 * 24 * time.Hour

// Bounds that keep validation and evaluation cheap on hostile rules.
const (
	maxAmountDigits = 78 // 2^256 has 78 decimal digits
	maxWindow       = MaxWindow
	maxApprovals    = 100
	maxBurst        = 1_000_000
	maxListLen      = 1000
)

var selectorRE = regexp.MustCompile(`^0x[0-9a-f]{8}$`)

// compiled is Rules parsed into the values the evaluator compares.
type compiled struct {
	perTxMax      map[string]*big.Int // canonical asset →
	windows       []window
	ratePerClient *Rate
	ratePerKey    *Rate
	allowlist     bool
	maxFeePerGas  *big.Int
	maxPriority   *big.Int
	maxFeeRate    float64
	maxFee        *big.Int
	contracts     map[string]map[string]bool // canonical contract → selectors (empty: any)
	approvalAbove map[string]*big.Int
	approveNonAL  bool
	approveCalls  bool
	approvals     int
	names         map[string]string // canonical asset → as written in the rules, for messages
}

type window struct {
	asset string
	d     time.Duration
	max   *big.Int
	rule  string
}

// ParseRules decodes JSON strictly (unknown fields, a member name in
// another case or repeated in an object, and trailing data are errors) and
// validates.
func ParseRules(data []byte) (Rules, error) {
	var r Rules
	// Anything after the object, even a stray bracket, is refused; so is a
	// name not exactly a field's or repeated: what a reviewer reads in the
	// rules ("approvals", not an "Approvals" after it) is what is enforced.
	if err := jsonstrict.Decode(bytes.NewReader(data), &r); err != nil {
		return Rules{}, fmt.Errorf("policy: decode rules: %v: %w", err, ErrInvalidRules)
	}
	if err := r.Validate(); err != nil {
		return Rules{}, err
	}
	return r, nil
}

// Validate reports the first problem with r, wrapping ErrInvalidRules.
func (r Rules) Validate() error {
	_, err := r.compile()
	return err
}

// AllowlistEffectiveAt returns when an address added at addedAt becomes
// usable: at once when a quorum approved the addition, else after the time lock.
func (r Rules) AllowlistEffectiveAt(addedAt time.Time, byQuorum bool) (time.Time, error) {
	if byQuorum || r.AllowlistDelay == "" {
		return addedAt, nil
	}
	d, err := time.ParseDuration(r.AllowlistDelay)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("policy: allowlist_delay %q: %w", r.AllowlistDelay, ErrInvalidRules)
	}
	return addedAt.Add(d), nil
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("policy: "+format+": %w", append(a, ErrInvalidRules)...)
}

// parseAmount parses a non-negative decimal amount of bounded length.
func parseAmount(field, s string) (*big.Int, error) {
	if s == "" || len(s) > maxAmountDigits || strings.TrimLeft(s, "0123456789") != "" {
		return nil, invalid("%s: %q is not a non-negative decimal amount", field, s)
	}
	v, ok := new(big.Int).SetString(s, 10)
	if !ok {
		return nil, invalid("%s: %q is not a decimal amount", field, s)
	}
	return v, nil
}

// amountMap parses an asset → amount map, refusing two spellings of one asset.
func amountMap(field string, m map[string]string, names map[string]string) (map[string]*big.Int, error) {
	if len(m) > maxListLen {
		return nil, invalid("%s: too many entries", field)
	}
	out := make(map[string]*big.Int, len(m))
	for asset, s := range m {
		c := canonAsset(asset)
		if c == "" {
			return nil, invalid("%s: empty asset", field)
		}
		if _, dup := out[c]; dup {
			return nil, invalid("%s: asset %q listed twice", field, asset)
		}
		v, err := parseAmount(field+" "+asset, s)
		if err != nil {
			return nil, err
		}
		out[c] = v
		names[c] = asset
	}
	return out, nil
}

func validRate(field string, r *Rate) error {
	if r == nil {
		return nil
	}
	if math.IsNaN(r.PerSecond) || math.IsInf(r.PerSecond, 0) || r.PerSecond <= 0 {
		return invalid("%s: per_second must be a positive number", field)
	}
	if r.Burst < 1 || r.Burst > maxBurst {
		return invalid("%s: burst must be between 1 and %d", field, maxBurst)
	}
	return nil
}

func (r Rules) compile() (*compiled, error) {
	c := &compiled{
		ratePerClient: r.RatePerClient, ratePerKey: r.RatePerKey, allowlist: r.Allowlist,
		approveNonAL: r.ApprovalForNonAllowlisted, approveCalls: r.ApprovalForContractCalls,
		approvals: r.Approvals, names: map[string]string{},
	}
	var err error
	if c.perTxMax, err = amountMap("per_tx_max", r.PerTxMax, c.names); err != nil {
		return nil, err
	}
	if c.approvalAbove, err = amountMap("approval_above", r.ApprovalAbove, c.names); err != nil {
		return nil, err
	}
	if len(r.Windows) > maxListLen {
		return nil, invalid("windows: too many entries")
	}
	for i, w := range r.Windows {
		asset := canonAsset(w.Asset)
		if asset == "" {
			return nil, invalid("windows[%d]: empty asset", i)
		}
		d, err := time.ParseDuration(w.Duration)
		if err != nil || d <= 0 || d > maxWindow {
			return nil, invalid("windows[%d]: duration %q must be positive and at most %s", i, w.Duration, maxWindow)
		}
		limit, err := parseAmount(fmt.Sprintf("windows[%d] max", i), w.Max)
		if err != nil {
			return nil, err
		}
		c.names[asset] = w.Asset
		c.windows = append(c.windows, window{asset: asset, d: d, max: limit,
			rule: fmt.Sprintf("windows[%d] %s %s max %s", i, w.Asset, w.Duration, w.Max)})
	}
	if err := validRate("rate_per_client", r.RatePerClient); err != nil {
		return nil, err
	}
	if err := validRate("rate_per_key", r.RatePerKey); err != nil {
		return nil, err
	}
	if _, err := r.AllowlistEffectiveAt(time.Time{}, false); err != nil {
		return nil, err
	}
	for field, p := range map[string]struct {
		s   string
		dst **big.Int
	}{
		"max_fee_per_gas":          {r.MaxFeePerGas, &c.maxFeePerGas},
		"max_priority_fee_per_gas": {r.MaxPriorityFeePerGas, &c.maxPriority},
		"max_fee":                  {r.MaxFee, &c.maxFee},
	} {
		if p.s == "" {
			continue
		}
		if *p.dst, err = parseAmount(field, p.s); err != nil {
			return nil, err
		}
	}
	if math.IsNaN(r.MaxFeeRate) || math.IsInf(r.MaxFeeRate, 0) || r.MaxFeeRate < 0 {
		return nil, invalid("max_fee_rate must be a non-negative number")
	}
	c.maxFeeRate = r.MaxFeeRate
	if len(r.Contracts) > maxListLen {
		return nil, invalid("contracts: too many entries")
	}
	c.contracts = make(map[string]map[string]bool, len(r.Contracts))
	for addr, sels := range r.Contracts {
		a := canonAddress(addr)
		if a == "" {
			return nil, invalid("contracts: empty address")
		}
		if _, dup := c.contracts[a]; dup {
			return nil, invalid("contracts: %q listed twice", addr)
		}
		if len(sels) > maxListLen {
			return nil, invalid("contracts %s: too many selectors", addr)
		}
		set := make(map[string]bool, len(sels))
		for _, s := range sels {
			s = strings.ToLower(s)
			if !selectorRE.MatchString(s) {
				return nil, invalid("contracts %s: selector %q is not 0x + 8 hex digits", addr, s)
			}
			set[s] = true
		}
		c.contracts[a] = set
	}
	needsM := len(r.ApprovalAbove) > 0 || r.ApprovalForNonAllowlisted || r.ApprovalForContractCalls
	switch {
	case r.Approvals < 0 || r.Approvals > maxApprovals:
		return nil, invalid("approvals must be between 0 and %d", maxApprovals)
	case needsM && r.Approvals < 1:
		return nil, invalid("approval rules are configured but approvals (M) is not at least 1")
	}
	return c, nil
}

// canonAsset is the comparison form of an asset: native symbols and token
// contracts alike compare case-insensitively (EIP-55 is only a checksum).
func canonAsset(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// canonAddress is the comparison form of a destination. Hex (0x…) and
// bech32 addresses are case-insensitive; base58 addresses are not, so they
// are kept exactly as given.
func canonAddress(s string) string {
	s = strings.TrimSpace(s)
	l := strings.ToLower(s)
	for _, p := range []string{"0x", "bc1", "tb1", "bcrt1"} {
		if strings.HasPrefix(l, p) {
			return l
		}
	}
	return s
}

// SetRules validates r and records it as keyID's next version, returning
// that version (1 for the first). It never updates a version in place. The
// caller runs it inside the transaction that executes the quorum proposal.
func SetRules(ctx context.Context, tx *store.Tx, keyID string, r Rules, by string) (int, error) {
	if keyID == "" || by == "" {
		return 0, fmt.Errorf("policy: set rules needs a key id and an author: %w", ErrInvalidRules)
	}
	if err := r.Validate(); err != nil {
		return 0, err
	}
	body, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("policy: encode rules: %w", err)
	}
	var v int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) + 1 FROM policy_rules WHERE key_id = ?`,
		keyID).Scan(&v); err != nil {
		return 0, fmt.Errorf("policy: next rules version for %q: %w", keyID, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO policy_rules (key_id, version, rules, created_by, created_at)
		VALUES (?, ?, ?, ?, ?)`, keyID, v, string(body), by, time.Now().UTC().UnixNano()); err != nil {
		return 0, fmt.Errorf("policy: insert rules v%d for %q: %w", v, keyID, err)
	}
	return v, nil
}

// CurrentRules returns keyID's latest rules and their version. A key with no
// stored rules gets the zero Rules and version 0: no limits, contract calls
// refused (see Rules).
func CurrentRules(ctx context.Context, q Queryer, keyID string) (Rules, int, error) {
	var body string
	var v int
	err := q.QueryRowContext(ctx, currentRulesQuery, keyID).Scan(&v, &body)
	if errors.Is(err, sql.ErrNoRows) {
		return Rules{}, 0, nil
	}
	if err != nil {
		return Rules{}, 0, fmt.Errorf("policy: read rules for %q: %w", keyID, err)
	}
	r, err := decodeStored(body)
	if err != nil {
		return Rules{}, 0, fmt.Errorf("policy: rules v%d for %q: %w", v, keyID, err)
	}
	return r, v, nil
}

// evaluationRead is the statement an evaluation starts with: the key's
// current rules and the rows of its two rate buckets for the principal
// (?1 the key, ?2 the principal). No row: the key has no rules. (+?: see
// sumTable in usage.go.)
const evaluationRead = `SELECT version, rules,
		(SELECT tokens FROM policy_buckets WHERE scope = 'client' AND key_id = +?1 AND principal = +?2),
		(SELECT updated_at FROM policy_buckets WHERE scope = 'client' AND key_id = +?1 AND principal = +?2),
		(SELECT tokens FROM policy_buckets WHERE scope = 'key' AND key_id = +?1 AND principal = ''),
		(SELECT updated_at FROM policy_buckets WHERE scope = 'key' AND key_id = +?1 AND principal = '')
	FROM policy_rules WHERE key_id = +?1 ORDER BY version DESC LIMIT 1`

// currentCompiled is CurrentRules, compiled, with the rows of the key's rate
// buckets for principal. The stored text of each key's current rules is read
// on every evaluation (inside the caller's transaction, so a change
// committed by anyone is seen at once); parsing and compiling it is skipped
// when the text is the one compiled last time for that key. A compiled rule
// set is never modified after compile returns.
func (e *Engine) currentCompiled(ctx context.Context, q Queryer, keyID, principal string) (*compiled, int, storedBuckets, error) {
	var body string
	var v int
	var ct, kt sql.NullFloat64
	var ca, ka sql.NullInt64
	err := q.QueryRowContext(ctx, evaluationRead, keyID, principal).Scan(&v, &body, &ct, &ca, &kt, &ka)
	if errors.Is(err, sql.ErrNoRows) {
		c, err := Rules{}.compile()
		return c, 0, storedBuckets{}, err
	}
	if err != nil {
		return nil, 0, storedBuckets{}, fmt.Errorf("policy: read rules for %q: %w", keyID, err)
	}
	var st storedBuckets
	st.from(ct, ca, kt, ka)
	e.compiledMu.Lock()
	hit, ok := e.compiled[keyID]
	e.compiledMu.Unlock()
	if ok && hit.version == v && hit.body == body {
		return hit.c, v, st, nil
	}
	r, err := decodeStored(body)
	if err != nil {
		return nil, 0, storedBuckets{}, fmt.Errorf("policy: rules v%d for %q: %w", v, keyID, err)
	}
	c, err := r.compile()
	if err != nil {
		return nil, 0, storedBuckets{}, fmt.Errorf("policy: rules v%d for %q: %w: %w", v, keyID, ErrCorrupt, err)
	}
	e.compiledMu.Lock()
	if e.compiled == nil || len(e.compiled) >= maxCompiled {
		e.compiled = map[string]compiledRules{}
	}
	e.compiled[keyID] = compiledRules{version: v, body: body, c: c}
	e.compiledMu.Unlock()
	return c, v, st, nil
}

// maxCompiled bounds the compiled rules kept (one set per key in use).
const maxCompiled = 4096

type compiledRules struct {
	version int
	body    string
	c       *compiled
}

// currentRulesQuery reads a key's newest rules. (+?: compiled once, not on
// every use; see sumTable in usage.go.)
const currentRulesQuery = `SELECT version, rules FROM policy_rules WHERE key_id = +?
		ORDER BY version DESC LIMIT 1`

// RulesVersion returns one recorded version of keyID's rules, or an error
// wrapping ErrNotFound.
func RulesVersion(ctx context.Context, q Queryer, keyID string, version int) (Rules, error) {
	var body string
	err := q.QueryRowContext(ctx, `SELECT rules FROM policy_rules WHERE key_id = ? AND version = ?`,
		keyID, version).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return Rules{}, fmt.Errorf("policy: rules v%d for %q: %w", version, keyID, ErrNotFound)
	}
	if err != nil {
		return Rules{}, fmt.Errorf("policy: read rules v%d for %q: %w", version, keyID, err)
	}
	r, err := decodeStored(body)
	if err != nil {
		return Rules{}, fmt.Errorf("policy: rules v%d for %q: %w", version, keyID, err)
	}
	return r, nil
}

func decodeStored(body string) (Rules, error) {
	r, err := ParseRules([]byte(body))
	if err != nil {
		return Rules{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return r, nil
}
