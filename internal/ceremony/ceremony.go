// Package ceremony implements the key ceremony behind sealing: creating
// the unseal secret and its officer shares at init, the share text format,
// deriving the HSM PIN and the stored verifier, and collecting shares
// towards the threshold at unseal.
package ceremony

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/custodysigner/appliance/internal/shamir"
)

// ErrInvalidThreshold reports a k-of-n outside 2 ≤ k ≤ n ≤ 255.
var ErrInvalidThreshold = errors.New("ceremony: invalid threshold")

// Ceremony is the outcome of init: the shares to hand out, one per
// officer, and the verifier to store. Secret is the live unseal secret,
// needed to set the HSM PIN once; the caller destroys it afterwards
// (Destroy, or Secret.Destroy), which zeroes the shares' data too: write
// the shares out first.
type Ceremony struct {
	ID        [8]byte
	Threshold int
	Total     int
	Shares    []Share // Shares[i] has Index i+1
	Verifier  []byte  // not secret: store it to check combinations at unseal
	Secret    *Secret
}

// NewCeremony makes a random 256-bit unseal secret, splits it k-of-n and
// returns the shares, a random ceremony id and the verifier; the caller
// writes the shares to files, stores the verifier, derives and sets the
// PIN, then calls Secret.Destroy.
func NewCeremony(k, n int) (*Ceremony, error) {
	if k < shamir.MinThreshold || n < k || n > shamir.MaxShares {
		return nil, fmt.Errorf("%w: %d of %d (want 2 ≤ k ≤ n ≤ 255)", ErrInvalidThreshold, k, n)
	}
	secret := newSecret([8]byte{})
	if _, err := rand.Read(secret.st.buf); err != nil {
		secret.Destroy()
		return nil, fmt.Errorf("ceremony: reading randomness: %w", err)
	}
	c, err := split(secret.st.buf, k, n)
	secret.Destroy()
	return c, err
}

// Reshare splits the same secret again, k-of-n, under a new ceremony id:
// the PIN (salted with the ceremony id) changes, so once the caller has set
// it on the token and stored the new verifier, the old shares neither pass
// the appliance's checks nor derive a PIN the token accepts. Backups keep
// working: their keys do not depend on the ceremony id.
func Reshare(old *Secret, k, n int) (*Ceremony, error) {
	if k < shamir.MinThreshold || n < k || n > shamir.MaxShares {
		return nil, fmt.Errorf("%w: %d of %d (want 2 ≤ k ≤ n ≤ 255)", ErrInvalidThreshold, k, n)
	}
	var c *Ceremony
	err := errors.New("ceremony: the secret has been destroyed")
	old.locked(func(st *secretState) { c, err = split(st.buf, k, n) })
	return c, err
}

// split makes a ceremony with a random id around a copy of raw.
func split(raw []byte, k, n int) (*Ceremony, error) {
	c := &Ceremony{Threshold: k, Total: n}
	if _, err := rand.Read(c.ID[:]); err != nil {
		return nil, fmt.Errorf("ceremony: reading randomness: %w", err)
	}
	secret := newSecret(c.ID)
	copy(secret.st.buf, raw)
	parts, err := shamir.Split(secret.st.buf, n, k)
	if err != nil {
		secret.Destroy()
		return nil, fmt.Errorf("ceremony: splitting secret: %w", err)
	}
	// The shares are heap memory (they are written out as text); they are
	// zeroed when the secret is destroyed.
	secret.st.attached = parts
	c.Shares = make([]Share, n)
	for i, r := range parts {
		c.Shares[i] = Share{
			Version:    ShareVersion,
			CeremonyID: c.ID,
			Index:      r[len(r)-1],
			Threshold:  byte(k),
			Total:      byte(n),
			Data:       r[:len(r)-1],
		}
	}
	c.Verifier = secret.Verifier()
	c.Secret = secret
	return c, nil
}

// Destroy zeroes the ceremony's shares and destroys its secret. It is
// idempotent.
func (c *Ceremony) Destroy() {
	if c != nil {
		c.Secret.Destroy()
	}
}

// Recover combines share texts into the secret without a stored verifier
// (a restore, before the database exists): the shares must come from one
// ceremony and reach its threshold. The caller checks the result against
// the verifier it later finds (Secret.Verify) before trusting it.
func Recover(texts []string) (*Secret, [8]byte, error) {
	var id [8]byte
	p := (*Progress)(nil)
	for _, t := range texts {
		sh, err := ParseShare(t)
		if err != nil {
			return nil, id, err
		}
		clear(sh.Data)
		if p == nil {
			id = sh.CeremonyID
			p = NewProgress(id, int(sh.Threshold), nil, time.Hour, time.Now)
			p.skipVerify = true
		}
		secret, _, err := p.Add(t)
		if err != nil {
			return nil, id, err
		}
		if secret != nil {
			return secret, id, nil
		}
	}
	return nil, id, fmt.Errorf("%w: %d shares are below the threshold", ErrWrongCombination, len(texts))
}

// String names the ceremony without any share data.
func (c Ceremony) String() string {
	return fmt.Sprintf("ceremony(%x, %d of %d)", c.ID[:], c.Threshold, c.Total)
}

// GoString is String, so %#v cannot dump shares either.
func (c Ceremony) GoString() string { return c.String() }

// Format makes every verb print String.
func (c Ceremony) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }
