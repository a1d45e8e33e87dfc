package signing

import (
	"crypto/rand"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"

	"github.com/custodysigner/appliance/internal/secp"
)

// The cached path answers exactly as the general function does — valid
// signatures with the right parity, tampered ones refused — before and
// after a key gets its table, and the cache stays within its bound.
func TestVerifierCacheAgreesWithGeneralFunction(t *testing.T) {
	verifiers = &verifierCache{tables: map[string]*secp.Verifier{}, uses: map[string]int{}}
	keys := make([]*secp256k1.PrivateKey, verifierSlots+8)
	for i := range keys {
		k, err := secp256k1.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	for round := range verifierAfter + 2 {
		for i, k := range keys {
			pub := k.PubKey().SerializeUncompressed()
			digest := make([]byte, 32)
			if _, err := rand.Read(digest); err != nil {
				t.Fatal(err)
			}
			compact := ecdsa.SignCompact(k, digest, false)
			sig, want := compact[1:], compact[0]-27
			got, err := verifyAndParity(pub, digest, sig)
			if err != nil || got != want {
				t.Fatalf("round %d key %d: parity %d err %v, want %d", round, i, got, err, want)
			}
			bad := append([]byte(nil), sig...)
			bad[40] ^= 1
			_, gerr := secp.VerifyAndParity(pub, digest, bad)
			if _, err := verifyAndParity(pub, digest, bad); err == nil || gerr == nil || err.Error() != gerr.Error() {
				t.Fatalf("round %d key %d: tampered signature: cached %v, general %v", round, i, err, gerr)
			}
		}
	}
	verifiers.mu.Lock()
	defer verifiers.mu.Unlock()
	if len(verifiers.tables) != verifierSlots || len(verifiers.order) != verifierSlots {
		t.Fatalf("%d tables (%d in order), want the bound %d", len(verifiers.tables), len(verifiers.order), verifierSlots)
	}
}
