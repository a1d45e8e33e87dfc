package signing

import (
	"sync"

	"github.com/custodysigner/appliance/internal/secp"
)

// Every signature the HSM returns is verified against the key's pinned
// public key before it is used (the same computation yields Ethereum's
// recovery parity). A per-key secp.Verifier does that in about half the time
// of the general function, at the price of a 32 KiB table built once
// (about 130 µs). verifiers keeps tables for the keys that sign repeatedly:
// a key gets one at its fourth signature, and at most verifierSlots keys have
// one (oldest out first), so thousands of rarely used keys cost nothing.
const (
	verifierSlots = 128 // 4 MiB of tables at most
	verifierAfter = 4   // signatures before a key gets a table
	verifierSeen  = 4096
)

var verifiers = &verifierCache{tables: map[string]*secp.Verifier{}, uses: map[string]int{}}

type verifierCache struct {
	mu     sync.Mutex
	tables map[string]*secp.Verifier
	order  []string // insertion order of tables, oldest first
	uses   map[string]int
}

// verifyAndParity is secp.VerifyAndParity(pub, digest, sig), through the
// key's table when it has one.
func verifyAndParity(pub, digest, sig []byte) (byte, error) {
	if v := verifiers.get(pub); v != nil {
		return v.VerifyAndParity(digest, sig)
	}
	return secp.VerifyAndParity(pub, digest, sig)
}

func (c *verifierCache) get(pub []byte) *secp.Verifier {
	c.mu.Lock()
	if v, ok := c.tables[string(pub)]; ok {
		c.mu.Unlock()
		return v
	}
	k := string(pub)
	c.uses[k]++
	build := c.uses[k] >= verifierAfter
	if build || len(c.uses) > verifierSeen {
		delete(c.uses, k)
		if len(c.uses) > verifierSeen {
			clear(c.uses)
		}
	}
	c.mu.Unlock()
	if !build {
		return nil
	}
	v, err := secp.NewVerifier(pub)
	if err != nil {
		return nil // the general function reports the same error
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.tables[k]; ok {
		return old
	}
	if len(c.order) >= verifierSlots {
		delete(c.tables, c.order[0])
		c.order = c.order[1:]
	}
	c.tables[k] = v
	c.order = append(c.order, k)
	return v
}
