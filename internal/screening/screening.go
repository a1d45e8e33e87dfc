// Package screening matches transaction destinations against known-risk
// address lists (for example the OFAC SDN digital-currency addresses) that
// operators manage as plain files, one address per line, per chain.
//
// Lists are reloaded on demand (SIGHUP) or when a file changes, without a
// restart. Every load produces a Version (hash, count, load time) that is
// shown in /v1/status and recorded with each hit, so an auditor can tell
// which list a refusal was based on.
package screening

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Chain names a chain whose addresses a list holds.
type Chain string

// Chains with default normalisers.
const (
	Ethereum Chain = "ethereum"
	Bitcoin  Chain = "bitcoin"
)

var (
	// ErrAddress means an address does not parse for its chain (API code
	// address_invalid when it is a destination).
	ErrAddress = errors.New("address does not parse for the chain")
	// ErrUnknownChain means no normaliser is configured for a chain.
	ErrUnknownChain = errors.New("no address normaliser for chain")
	// ErrList means a list file cannot be read, or the list configuration
	// is unusable.
	ErrList = errors.New("known-risk list unavailable")
)

// Normalizer turns an address into the form it is matched in, or returns
// an error if it does not parse for the chain. It must be deterministic and
// safe for concurrent use: list entries and destinations both go through
// it, and matching is exact on its output.
type Normalizer func(addr string) (string, error)

// ListSource is one operator-managed list file.
type ListSource struct {
	Name  string // e.g. "ofac-eth"; unique, recorded with every hit
	Chain Chain
	Path  string
}

// Version describes the loaded state of one list, as shown in /v1/status.
type Version struct {
	Name     string    `json:"name"`
	Chain    Chain     `json:"chain"`
	Path     string    `json:"path"`
	SHA256   string    `json:"sha256"`   // of the file bytes as loaded
	Count    int       `json:"count"`    // distinct addresses in force
	Rejected int       `json:"rejected"` // lines that did not normalise
	LoadedAt time.Time `json:"loaded_at"`
	// Error is the last reload failure; the list in force is then still
	// the one described by the other fields.
	Error string `json:"error,omitempty"`
}

// Hit is a destination found on a list.
type Hit struct {
	List    string // ListSource.Name
	Version string // the list's SHA256 at the time of the match
	Address string // the normalised address that matched
}

// Screener holds the lists in force. It is safe for concurrent use: Check
// reads an immutable snapshot through an atomic pointer, and reloads build
// a whole new snapshot before swapping it in, so a Check never sees a
// half-loaded list.
type Screener struct {
	sources []ListSource
	norm    map[Chain]Normalizer
	log     *zap.Logger

	reloadMu sync.Mutex // serialises reloads; Check never takes it
	snap     atomic.Pointer[snapshot]
	onChange func(v Version) // hears every reload that changed a list or failed; under reloadMu
}

// OnChange registers fn to hear, after each reload, every list whose
// contents changed or whose reload failed (the audit records them).
func (s *Screener) OnChange(fn func(v Version)) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	s.onChange = fn
}

// snapshot is immutable once published.
type snapshot struct {
	lists []*list // in source order
	// index maps chain → normalised address → position in lists of the
	// first list holding it, so a lookup is one map access per chain
	// however many lists there are.
	index map[Chain]map[string]int
}

// list is one loaded file; immutable once published.
type list struct {
	version Version
	entries map[string]struct{}
	seen    fileStat // what the file looked like at the last load attempt
}

// New loads every source and returns a Screener. A nil norm means
// DefaultNormalizers(); a nil log discards logs. It fails when a source
// is misconfigured or a file cannot be read: starting without a list the
// operator configured would silently screen nothing.
func New(sources []ListSource, norm map[Chain]Normalizer, log *zap.Logger) (*Screener, error) {
	if norm == nil {
		norm = DefaultNormalizers()
	}
	if log == nil {
		log = zap.NewNop()
	}
	names := make(map[string]bool, len(sources))
	for _, src := range sources {
		switch {
		case src.Name == "" || src.Path == "":
			return nil, fmt.Errorf("%w: source %+v needs a name and a path", ErrList, src)
		case names[src.Name]:
			return nil, fmt.Errorf("%w: duplicate list name %q", ErrList, src.Name)
		case norm[src.Chain] == nil:
			return nil, fmt.Errorf("%w: list %q: %w %q", ErrList, src.Name, ErrUnknownChain, src.Chain)
		}
		names[src.Name] = true
	}
	s := &Screener{
		sources: append([]ListSource(nil), sources...),
		norm:    norm,
		log:     log,
	}
	lists := make([]*list, len(sources))
	for i, src := range s.sources {
		l, err := s.load(src, nil)
		if err != nil {
			return nil, err
		}
		lists[i] = l
	}
	s.snap.Store(newSnapshot(lists))
	return s, nil
}

func newSnapshot(lists []*list) *snapshot {
	idx := make(map[Chain]map[string]int)
	for i, l := range lists {
		m := idx[l.version.Chain]
		if m == nil {
			m = make(map[string]int, len(l.entries))
			idx[l.version.Chain] = m
		}
		for a := range l.entries {
			if _, ok := m[a]; !ok {
				m[a] = i
			}
		}
	}
	return &snapshot{lists: lists, index: idx}
}

// Check screens one destination. It returns (nil, nil) when addr is on no
// list of chain, a Hit naming the first list (in source order) that holds
// it, or an error wrapping ErrAddress (addr does not normalise) or
// ErrUnknownChain. An address that cannot be screened must be refused by
// the caller, never treated as clean.
func (s *Screener) Check(chain Chain, addr string) (*Hit, error) {
	n := s.norm[chain]
	if n == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownChain, chain)
	}
	key, err := n(addr)
	if err != nil {
		if errors.Is(err, ErrAddress) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrAddress, err)
	}
	snap := s.snap.Load()
	i, ok := snap.index[chain][key]
	if !ok {
		return nil, nil
	}
	l := snap.lists[i]
	return &Hit{List: l.version.Name, Version: l.version.SHA256, Address: key}, nil
}

// Versions reports every list in source order.
func (s *Screener) Versions() []Version {
	snap := s.snap.Load()
	out := make([]Version, len(snap.lists))
	for i, l := range snap.lists {
		out[i] = l.version
	}
	return out
}
