package ceremony

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/custodysigner/appliance/internal/secret"
	"github.com/custodysigner/appliance/internal/shamir"
)

// DefaultProgressTTL is the time an unseal attempt may take, from its
// first share, when NewProgress is given no positive TTL.
const DefaultProgressTTL = 10 * time.Minute

// Errors returned by Progress.Add besides those of ParseShare; compare
// with errors.Is.
var (
	// ErrWrongCeremony reports a share made by another ceremony.
	ErrWrongCeremony = errors.New("ceremony: share belongs to another ceremony")
	// ErrWrongThreshold reports a share whose k (or n) differs from the
	// attempt's.
	ErrWrongThreshold = errors.New("ceremony: share threshold does not match")
	// ErrDuplicateShare reports a share already submitted in this attempt.
	ErrDuplicateShare = errors.New("ceremony: share already submitted")
	// ErrProgressExpired reports an attempt older than its TTL; it has been
	// cleared and the share refused, so the officers start again.
	ErrProgressExpired = errors.New("ceremony: unseal attempt expired")
	// ErrWrongCombination reports K shares that do not rebuild the secret
	// the verifier was made from; the attempt has been cleared.
	ErrWrongCombination = errors.New("ceremony: shares do not combine to the unseal secret")
)

// Progress collects shares towards the threshold during one unseal
// attempt, the way Vault's unseal does: a nonce names the attempt, shares
// are checked as they arrive, and at K shares they are combined, checked
// against the verifier and wiped whatever the outcome. A malformed share
// is refused without disturbing the attempt, so one typo does not cost the
// other officers their submissions. Progress is safe for concurrent use.
type Progress struct {
	mu         sync.Mutex
	ceremonyID [8]byte
	threshold  int
	verifier   []byte
	skipVerify bool // Recover: the verifier is checked later by the caller
	ttl        time.Duration
	now        func() time.Time

	nonce   string
	started time.Time // first share of the attempt
	total   byte      // n carried by the attempt's first share
	// held keeps the attempt's shares, shamir layout (y-values then x), one
	// row of SecretSize+1 bytes per share, in a secret.Buffer: outside the
	// Go heap, excluded from core dumps, locked where allowed. nil while no
	// share is held; destroyed (zeroed) at every reset.
	held *secret.Buffer
	have int
}

// shareRow is the length of a held share: its y-values and its x.
const shareRow = SecretSize + 1

// rows returns the held shares as views into the buffer; p.mu is held.
func (p *Progress) rows() [][]byte {
	rows := make([][]byte, p.have)
	b := p.held.Bytes()
	for i := range rows {
		rows[i] = b[i*shareRow : (i+1)*shareRow : (i+1)*shareRow]
	}
	return rows
}

// NewProgress starts collecting shares for the given ceremony. The
// verifier is the one stored at init; ttl bounds an attempt from its first
// share (DefaultProgressTTL if not positive); now is the clock (time.Now
// if nil), injectable for tests.
func NewProgress(ceremonyID [8]byte, threshold int, verifier []byte, ttl time.Duration, now func() time.Time) *Progress {
	if ttl <= 0 {
		ttl = DefaultProgressTTL
	}
	if now == nil {
		now = time.Now
	}
	return &Progress{
		ceremonyID: ceremonyID,
		threshold:  threshold,
		verifier:   append([]byte(nil), verifier...),
		ttl:        ttl,
		now:        now,
		nonce:      rand.Text(),
	}
}

// Add submits one share as text. It returns how many shares the attempt
// holds. When this share completes the threshold and the combination
// matches the verifier it returns the secret (which the caller destroys)
// and have = threshold; on ErrWrongCombination or ErrProgressExpired the
// attempt has been reset and have = 0. Errors never contain share data.
func (p *Progress) Add(text string) (combined *Secret, have int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()

	if p.have > 0 && p.now().Sub(p.started) > p.ttl {
		p.resetLocked()
		return nil, 0, fmt.Errorf("%w: older than %v", ErrProgressExpired, p.ttl)
	}

	s, err := ParseShare(text)
	if err != nil {
		return nil, p.have, err
	}
	// s.Data is ours (ParseShare allocated it); wipe it on every path.
	defer clear(s.Data)

	if s.CeremonyID != p.ceremonyID {
		return nil, p.have, fmt.Errorf("%w: share is from %x, expected %x", ErrWrongCeremony, s.CeremonyID[:], p.ceremonyID[:])
	}
	if int(s.Threshold) != p.threshold || (p.have > 0 && s.Total != p.total) {
		return nil, p.have, fmt.Errorf("%w: share is %d of %d, expected %d", ErrWrongThreshold, s.Threshold, s.Total, p.threshold)
	}
	if len(s.Data) != SecretSize {
		return nil, p.have, fmt.Errorf("%w: share carries %d bytes, expected %d", ErrShareFormat, len(s.Data), SecretSize)
	}

	// Compare against every held share without stopping early, and
	// compare data in constant time: how long a refusal takes must not
	// tell a submitter how close their bytes came to another officer's.
	dup := 0
	for _, held := range p.rows() {
		dup |= subtle.ConstantTimeByteEq(held[SecretSize], s.Index)
		dup |= subtle.ConstantTimeCompare(held[:SecretSize], s.Data)
	}
	if dup == 1 {
		return nil, p.have, fmt.Errorf("%w: index %d", ErrDuplicateShare, s.Index)
	}

	if p.have == 0 {
		p.started = p.now()
		p.total = s.Total
		p.held = secret.New(p.threshold * shareRow)
	}
	row := p.held.Bytes()[p.have*shareRow : (p.have+1)*shareRow]
	copy(row, s.Data)
	row[SecretSize] = s.Index
	p.have++
	if p.have < p.threshold {
		return nil, p.have, nil
	}

	// Threshold reached: whatever happens next, this attempt is over. The
	// shares combine straight into the secret's buffer.
	combined = newSecret(p.ceremonyID)
	err = shamir.CombineInto(combined.st.buf, p.rows())
	p.resetLocked()
	if err != nil {
		// Unreachable after the checks above; refuse rather than trust it.
		combined.Destroy()
		return nil, 0, fmt.Errorf("%w: %w", ErrWrongCombination, err)
	}
	if !p.skipVerify && !combined.Verify(p.verifier) {
		combined.Destroy()
		return nil, 0, ErrWrongCombination
	}
	return combined, p.threshold, nil
}

// Have returns the number of shares held by the current attempt.
func (p *Progress) Have() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.have
}

// Nonce names the current attempt; it changes on every reset, so a client
// can tell that the shares it submitted have been discarded.
func (p *Progress) Nonce() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nonce
}

// Reset wipes the held shares and starts a new attempt.
func (p *Progress) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetLocked()
}

func (p *Progress) resetLocked() {
	p.held.Destroy()
	p.held = nil
	p.have = 0
	p.started = time.Time{}
	p.total = 0
	p.nonce = rand.Text()
}
