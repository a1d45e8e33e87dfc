package hsm_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
)

// TestCheckKeysAgreesWithCheckKey: the one-pass checks (CheckKeys over the
// whole token, CheckKey with one search for the CKA_ID) give, for every kind
// of key and every way a key can fail, exactly the answer of the check with
// one search per object (as CheckKey was), error text included, with foreign
// objects (an RSA key pair with a key's CKA_ID) and a duplicated key on the
// token.
func TestCheckKeysAgreesWithCheckKey(t *testing.T) {
	m, uri := openModule(t, nil)
	gen := func(alg hsm.Algorithm, backup bool) *hsm.GeneratedKey {
		t.Helper()
		k, err := m.GenerateKeyWith(ctxT(t), alg, "k-"+string(alg), hsm.KeyOptions{WrappedBackup: backup})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k1, p256, ed, backup1, backupP256, dup, halfGone := gen(hsm.Secp256k1, false), gen(hsm.P256, false), gen(hsm.Ed25519, false),
		gen(hsm.Secp256k1, true), gen(hsm.P256, true), gen(hsm.Secp256k1, false), gen(hsm.Secp256k1, false)

	p, sh := rawSession(t, uri, m.Slot())
	shRW, err := p.OpenSession(m.Slot(), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseSession(shRW)
	// A second private object with dup's CKA_ID: either would be a guess.
	if _, err := p.CopyObject(shRW, findObject(t, p, sh, privateByID(dup.ID)), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}); err != nil {
		t.Fatal(err)
	}
	// A private key whose public half is gone.
	pubOf := func(id []byte) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_ID, id)}
	}
	if err := p.DestroyObject(shRW, findObject(t, p, sh, pubOf(halfGone.ID))); err != nil {
		t.Fatal(err)
	}
	// A key that was readable once (CKA_SENSITIVE false, then set true).
	unsafeID := randomBytes(16)
	_, privH, err := p.GenerateKeyPair(shRW, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, unsafeID),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_ID, unsafeID),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false), pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetAttributeValue(shRW, privH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true)}); err != nil {
		t.Fatal(err)
	}
	unsafeRef := hsm.KeyRef{ID: unsafeID, Algorithm: hsm.Secp256k1}
	unsafePub, err := m.PublicKey(ctxT(t), unsafeRef)
	if err != nil {
		t.Fatal(err)
	}
	// Foreign objects no template of ours selects: an RSA key pair, with
	// k1's CKA_ID even.
	if _, _, err := p.GenerateKeyPair(shRW, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, k1.ID),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1})},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_ID, k1.ID)}); err != nil {
		t.Fatal(err)
	}

	ref := func(k *hsm.GeneratedKey) hsm.KeyRef { return hsm.KeyRef{ID: k.ID, Algorithm: k.Algorithm} }
	cases := []struct {
		name string
		key  hsm.PinnedKey
		want error
	}{
		{"secp256k1", hsm.PinnedKey{Ref: ref(k1), PublicKey: k1.PublicKey}, nil},
		{"p256", hsm.PinnedKey{Ref: ref(p256), PublicKey: p256.PublicKey}, nil},
		{"ed25519 (two encodings of its curve)", hsm.PinnedKey{Ref: ref(ed), PublicKey: ed.PublicKey}, nil},
		{"backup-able secp256k1", hsm.PinnedKey{Ref: hsm.KeyRef{ID: backup1.ID, Algorithm: hsm.Secp256k1, WrappedBackup: true}, PublicKey: backup1.PublicKey}, nil},
		{"backup-able p256, by PinnedKey.Backup", hsm.PinnedKey{Ref: ref(backupP256), PublicKey: backupP256.PublicKey, Backup: true}, nil},
		{"backup-able checked as ordinary", hsm.PinnedKey{Ref: ref(backup1), PublicKey: backup1.PublicKey}, hsm.ErrKeyUnsafe},
		{"ordinary checked as backup-able", hsm.PinnedKey{Ref: hsm.KeyRef{ID: k1.ID, Algorithm: hsm.Secp256k1, WrappedBackup: true}, PublicKey: k1.PublicKey}, hsm.ErrKeyUnsafe},
		{"once readable", hsm.PinnedKey{Ref: unsafeRef, PublicKey: unsafePub}, hsm.ErrKeyUnsafe},
		{"wrong pinned key", hsm.PinnedKey{Ref: ref(k1), PublicKey: p256.PublicKey}, hsm.ErrKeyMismatch},
		{"pinned key one bit off", hsm.PinnedKey{Ref: ref(k1), PublicKey: flipByte(k1.PublicKey, 40)}, hsm.ErrKeyMismatch},
		{"unknown id", hsm.PinnedKey{Ref: hsm.KeyRef{ID: []byte("no such key"), Algorithm: hsm.Secp256k1}, PublicKey: k1.PublicKey}, hsm.ErrKeyNotFound},
		{"right id, wrong curve", hsm.PinnedKey{Ref: hsm.KeyRef{ID: k1.ID, Algorithm: hsm.P256}, PublicKey: k1.PublicKey}, hsm.ErrKeyNotFound},
		{"public half gone", hsm.PinnedKey{Ref: ref(halfGone), PublicKey: halfGone.PublicKey}, hsm.ErrKeyNotFound},
		{"two private objects", hsm.PinnedKey{Ref: ref(dup), PublicKey: dup.PublicKey}, hsm.ErrKeyAmbiguous},
		{"empty id", hsm.PinnedKey{Ref: hsm.KeyRef{Algorithm: hsm.Secp256k1}, PublicKey: k1.PublicKey}, hsm.ErrInvalidInput},
		{"unknown algorithm", hsm.PinnedKey{Ref: hsm.KeyRef{ID: k1.ID, Algorithm: "rsa"}, PublicKey: k1.PublicKey}, hsm.ErrInvalidInput},
	}
	keys := make([]hsm.PinnedKey, len(cases))
	for i, c := range cases {
		keys[i] = c.key
	}
	same := func(a, b error) bool { return (a == nil) == (b == nil) && (a == nil || a.Error() == b.Error()) }
	var batch []error
	// With the one-call attribute reads, and with every read through the
	// binding (what a token without them gets).
	for _, direct := range []bool{true, false} {
		restore := hsm.SetDirectAttrReads(direct)
		batch = m.CheckKeys(ctxT(t), keys)
		if len(batch) != len(cases) {
			t.Fatalf("CheckKeys returned %d results for %d keys", len(batch), len(cases))
		}
		for i, c := range cases {
			t.Run(fmt.Sprintf("%s/direct=%t", c.name, direct), func(t *testing.T) {
				r := c.key.Ref
				r.WrappedBackup = r.WrappedBackup || c.key.Backup
				ref := m.CheckKeySearching(ctxT(t), r, c.key.PublicKey)
				if !errors.Is(ref, c.want) || (c.want == nil) != (ref == nil) {
					t.Fatalf("searching: %v, want %v", ref, c.want)
				}
				if one := m.CheckKey(ctxT(t), r, c.key.PublicKey); !same(one, ref) {
					t.Fatalf("CheckKey = %v\n searching = %v", one, ref)
				}
				if !same(batch[i], ref) {
					t.Fatalf("CheckKeys = %v\n searching = %v", batch[i], ref)
				}
			})
		}
		restore()
	}

	// PinKeys answers the same and pins every key: Sign refuses the failed ones.
	pinned := m.PinKeys(ctxT(t), keys)
	for i, c := range cases {
		if !same(pinned[i], batch[i]) {
			t.Errorf("%s: PinKeys = %v, CheckKeys = %v", c.name, pinned[i], batch[i])
		}
	}
	// (KeyError is by CKA_ID, and several cases share k1's: ask about keys
	// pinned once.)
	d := sha256.Sum256([]byte("pinned"))
	if err := m.KeyError(p256.ID); err != nil {
		t.Fatalf("KeyError(good) = %v", err)
	}
	if _, err := m.Sign(ctxT(t), ref(p256), d[:]); err != nil {
		t.Fatalf("Sign with a good pinned key: %v", err)
	}
	if err := m.KeyError(halfGone.ID); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("KeyError(public half gone) = %v, want ErrKeyNotFound", err)
	}
	if _, err := m.Sign(ctxT(t), ref(halfGone), d[:]); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("Sign with a pinned key that failed = %v, want its check's error", err)
	}
}

// TestCheckKeysManyKeys: a few hundred keys checked at once, every one of
// them good, then one pinned key tampered with: only that one fails.
func TestCheckKeysManyKeys(t *testing.T) {
	m, _ := openModule(t, func(o *hsm.Options) { o.PoolSize = 4 })
	n := 200
	if testing.Short() {
		n = 40
	}
	keys := make([]hsm.PinnedKey, n)
	for i := range keys {
		alg := []hsm.Algorithm{hsm.Secp256k1, hsm.P256, hsm.Ed25519}[i%3]
		k, err := m.GenerateKeyWith(ctxT(t), alg, "many", hsm.KeyOptions{WrappedBackup: i%5 == 0 && alg != hsm.Ed25519})
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = hsm.PinnedKey{Ref: hsm.KeyRef{ID: k.ID, Algorithm: alg, WrappedBackup: k.WrappedBackup}, PublicKey: k.PublicKey}
	}
	for i, err := range m.CheckKeys(ctxT(t), keys) {
		if err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
	}
	keys[n/2].PublicKey = keys[n/3].PublicKey
	for i, err := range m.PinKeys(ctxT(t), keys) {
		if (i == n/2) != errors.Is(err, hsm.ErrKeyMismatch) || (i != n/2 && err != nil) {
			t.Fatalf("key %d: %v", i, err)
		}
	}
}

// TestCheckKeysTokenGone: with the token directory gone, the batched check
// reports the HSM unavailable (not the keys missing) and breaks the
// module, as CheckKey does; the rebuild then re-checks the pins.
func TestCheckKeysTokenGone(t *testing.T) {
	m, uri := openModule(t, func(o *hsm.Options) { o.ReconnectMin = 10 * time.Millisecond; o.ReconnectMax = 50 * time.Millisecond })
	k, err := m.GenerateKey(ctxT(t), hsm.Secp256k1, "gone")
	if err != nil {
		t.Fatal(err)
	}
	pin := hsm.PinnedKey{Ref: hsm.KeyRef{ID: k.ID, Algorithm: hsm.Secp256k1}, PublicKey: k.PublicKey}
	dir := softhsmtest.TokenPath(t, uri.Token)
	away := filepath.Join(filepath.Dir(softhsmtest.TokenDir()), "gone-"+uri.Token)
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	for _, err := range m.PinKeys(ctxT(t), []hsm.PinnedKey{pin}) {
		if !errors.Is(err, hsm.ErrUnavailable) || errors.Is(err, hsm.ErrKeyNotFound) {
			t.Fatalf("PinKeys with the token gone = %v, want ErrUnavailable", err)
		}
	}
	if err := m.KeyError(k.ID); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("KeyError with the token gone = %v, want ErrUnavailable", err)
	}
	eventually(t, 5*time.Second, "module turning unhealthy", func() bool { return !m.Health().Healthy })
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "module healthy again", func() bool { return m.Health().Healthy })
	eventually(t, 5*time.Second, "pin re-checked by the rebuild", func() bool { return m.KeyError(k.ID) == nil })
}
