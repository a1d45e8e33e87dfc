package hsm_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/miekg/pkcs11"
)

var soTokenCounter atomic.Int64

// newTokenSO makes a fresh token like softhsmtest.NewToken, but also returns
// its SO PIN, which ProvisionWrappingKey needs and softhsmtest does not expose.
// Like NewToken it must not be called while a Module is open.
func newTokenSO(t *testing.T) (uri *hsm.URI, soPIN, userPIN []byte) {
	t.Helper()
	softhsmtest.NewToken(t) // sets up SOFTHSM2_CONF and the token directory
	dirs := func() map[string]bool {
		ents, err := os.ReadDir(softhsmtest.TokenDir())
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, e := range ents {
			out[e.Name()] = true
		}
		return out
	}
	before := dirs()
	label := fmt.Sprintf("so-%d-%d", os.Getpid(), soTokenCounter.Add(1))
	soPIN, userPIN = randomHex(8), randomHex(8)
	if err := hsm.InitToken(softhsmtest.ModulePath(), label, soPIN, userPIN); err != nil {
		t.Fatalf("InitToken: %v", err)
	}
	for d := range dirs() {
		if !before[d] {
			dir := filepath.Join(softhsmtest.TokenDir(), d)
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
		}
	}
	return &hsm.URI{ModulePath: softhsmtest.ModulePath(), Token: label, PinValue: string(userPIN)}, soPIN, userPIN
}

func randomHex(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Appendf(nil, "%x", b)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func openURI(t *testing.T, uri *hsm.URI) *hsm.Module {
	t.Helper()
	m, err := hsm.Open(ctxT(t), hsm.Options{URI: uri, Logger: nopLogger()})
	if err != nil {
		t.Fatalf("Open %s: %v", uri.Token, err)
	}
	return m
}

// objectsWithID counts the objects of any class with this CKA_ID, through
// PKCS#11 directly.
func objectsWithID(t *testing.T, p *pkcs11.Ctx, sh pkcs11.SessionHandle, id []byte) int {
	t.Helper()
	return countObjects(t, p, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)})
}

func countObjects(t *testing.T, p *pkcs11.Ctx, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) int {
	t.Helper()
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		t.Fatal(err)
	}
	objs, _, err := p.FindObjects(sh, 100)
	_ = p.FindObjectsFinal(sh)
	if err != nil {
		t.Fatal(err)
	}
	return len(objs)
}

func findObject(t *testing.T, p *pkcs11.Ctx, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) pkcs11.ObjectHandle {
	t.Helper()
	if err := p.FindObjectsInit(sh, tmpl); err != nil {
		t.Fatal(err)
	}
	objs, _, err := p.FindObjects(sh, 2)
	_ = p.FindObjectsFinal(sh)
	if err != nil || len(objs) != 1 {
		t.Fatalf("found %d objects (%v), want 1", len(objs), err)
	}
	return objs[0]
}

// wantAttrs checks boolean attributes of an object through PKCS#11 directly.
func wantAttrs(t *testing.T, p *pkcs11.Ctx, sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, want map[uint]bool) {
	t.Helper()
	for attr, val := range want {
		got, err := p.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(attr, nil)})
		if err != nil {
			t.Fatalf("attribute %#x: %v", attr, err)
		}
		if v := got[0].Value; len(v) != 1 || (v[0] != 0) != val {
			t.Errorf("attribute %#x = %x, want %t", attr, v, val)
		}
	}
}

func privateByID(id []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
}

func verifyP256(t *testing.T, pub, digest, sig []byte) {
	t.Helper()
	pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pub)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.Verify(pk, digest, new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatalf("P-256 signature %x does not verify", sig)
	}
}

// TestWrappedBackupRestore backs up keys on one token and restores them on a
// second, fresh token holding the same wrapping key value.
func TestWrappedBackupRestore(t *testing.T) {
	const wrapLabel, wrongLabel = "backup-wrap", "other-wrap"
	value, wrong := randomBytes(32), randomBytes(32)
	valueCopy := bytes.Clone(value)
	src, srcSO, srcUser := newTokenSO(t)
	dst, dstSO, dstUser := newTokenSO(t)

	if err := hsm.ProvisionWrappingKey(src.ModulePath, src.Token, srcSO, srcUser, wrapLabel, value); err != nil {
		t.Fatalf("ProvisionWrappingKey: %v", err)
	}
	if !bytes.Equal(value, valueCopy) {
		t.Fatal("ProvisionWrappingKey modified the caller's value")
	}
	if err := hsm.ProvisionWrappingKey(src.ModulePath, src.Token, srcSO, srcUser, wrapLabel, wrong); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("ProvisionWrappingKey over an existing label = %v, want ErrKeyExists", err)
	}
	if err := hsm.ProvisionWrappingKey(dst.ModulePath, dst.Token, dstSO, dstUser, wrapLabel, value); err != nil {
		t.Fatal(err)
	}
	if err := hsm.ProvisionWrappingKey(dst.ModulePath, dst.Token, dstSO, dstUser, wrongLabel, wrong); err != nil {
		t.Fatal(err)
	}

	type backup struct {
		alg  hsm.Algorithm
		key  *hsm.GeneratedKey
		blob []byte
	}
	var backups []backup
	var ordinary *hsm.GeneratedKey

	t.Run("source token", func(t *testing.T) {
		m := openURI(t, src)
		defer m.Close()
		p, sh := rawSession(t, src, m.Slot())

		// The wrapping key is a private, trusted token object, and there is
		// only one: the SO's public session object is gone.
		wk := findObject(t, p, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, wrapLabel)})
		wantAttrs(t, p, sh, wk, map[uint]bool{
			pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_TRUSTED: true,
			pkcs11.CKA_WRAP: true, pkcs11.CKA_UNWRAP: true, pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_DECRYPT: false,
			pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false,
		})
		if has, err := m.HasWrappingKey(ctxT(t), wrapLabel); err != nil || !has {
			t.Fatalf("HasWrappingKey = %t, %v", has, err)
		}
		if has, err := m.HasWrappingKey(ctxT(t), "no-such-key"); err != nil || has {
			t.Fatalf("HasWrappingKey(absent) = %t, %v", has, err)
		}

		for _, alg := range []hsm.Algorithm{hsm.Secp256k1, hsm.P256} {
			k, err := m.GenerateKeyWith(ctxT(t), alg, "backup-"+string(alg), hsm.KeyOptions{WrappedBackup: true})
			if err != nil {
				t.Fatalf("GenerateKeyWith %s: %v", alg, err)
			}
			if !k.WrappedBackup {
				t.Fatalf("GeneratedKey.WrappedBackup = false for a backup-able key")
			}
			priv := findObject(t, p, sh, privateByID(k.ID))
			wantAttrs(t, p, sh, priv, map[uint]bool{
				pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: true,
				pkcs11.CKA_NEVER_EXTRACTABLE: false, pkcs11.CKA_WRAP_WITH_TRUSTED: true, pkcs11.CKA_LOCAL: true,
				pkcs11.CKA_SIGN: true, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: false,
			})
			if _, err := p.GetAttributeValue(sh, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); !isPKCS11(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
				t.Fatalf("reading CKA_VALUE of a backup-able key: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}
			backupRef := hsm.KeyRef{ID: k.ID, Algorithm: alg, WrappedBackup: true}
			if err := m.CheckKey(ctxT(t), backupRef, k.PublicKey); err != nil {
				t.Fatalf("CheckKey as backup-able: %v", err)
			}
			if err := m.CheckKey(ctxT(t), hsm.KeyRef{ID: k.ID, Algorithm: alg}, k.PublicKey); !errors.Is(err, hsm.ErrKeyUnsafe) {
				t.Fatalf("CheckKey of a backup-able key as ordinary = %v, want ErrKeyUnsafe", err)
			}
			blob, err := m.WrapKey(ctxT(t), backupRef, wrapLabel)
			if err != nil {
				t.Fatalf("WrapKey %s: %v", alg, err)
			}
			if len(blob) < 16 || bytes.Contains(blob, k.PublicKey[1:33]) {
				t.Fatalf("wrapped blob %x looks wrong", blob)
			}
			backups = append(backups, backup{alg, k, blob})
		}

		var err error
		ordinary, err = m.GenerateKey(ctxT(t), hsm.Secp256k1, "ordinary")
		if err != nil {
			t.Fatal(err)
		}
		if ordinary.WrappedBackup {
			t.Fatal("GeneratedKey.WrappedBackup = true for an ordinary key")
		}
		ordRef := hsm.KeyRef{ID: ordinary.ID, Algorithm: hsm.Secp256k1}
		if _, err := m.WrapKey(ctxT(t), ordRef, wrapLabel); !errors.Is(err, hsm.ErrKeyNotWrappable) {
			t.Fatalf("WrapKey of an ordinary key = %v, want ErrKeyNotWrappable", err)
		}
		ordRef.WrappedBackup = true
		if err := m.CheckKey(ctxT(t), ordRef, ordinary.PublicKey); !errors.Is(err, hsm.ErrKeyUnsafe) {
			t.Fatalf("CheckKey of an ordinary key as backup-able = %v, want ErrKeyUnsafe", err)
		}
		// Pinning follows the caller's mode, through either field.
		m.SetPinnedKeys([]hsm.PinnedKey{
			{Ref: hsm.KeyRef{ID: backups[0].key.ID, Algorithm: hsm.Secp256k1}, PublicKey: backups[0].key.PublicKey, Backup: true},
			{Ref: hsm.KeyRef{ID: backups[1].key.ID, Algorithm: hsm.P256}, PublicKey: backups[1].key.PublicKey},
			{Ref: hsm.KeyRef{ID: ordinary.ID, Algorithm: hsm.Secp256k1}, PublicKey: ordinary.PublicKey, Backup: true},
		})
		if err := m.KeyError(backups[0].key.ID); err != nil {
			t.Errorf("KeyError(backup-able pinned with Backup) = %v", err)
		}
		if err := m.KeyError(backups[1].key.ID); !errors.Is(err, hsm.ErrKeyUnsafe) {
			t.Errorf("KeyError(backup-able pinned as ordinary) = %v, want ErrKeyUnsafe", err)
		}
		if err := m.KeyError(ordinary.ID); !errors.Is(err, hsm.ErrKeyUnsafe) {
			t.Errorf("KeyError(ordinary pinned as backup-able) = %v, want ErrKeyUnsafe", err)
		}

		// A key generated readable and made sensitive later is not
		// backup-able: CKA_ALWAYS_SENSITIVE is false although CKA_LOCAL is true.
		shRW, err := p.OpenSession(m.Slot(), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		defer p.CloseSession(shRW)
		onceReadable := randomBytes(16)
		_, privH, err := p.GenerateKeyPair(shRW, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_ID, onceReadable),
				pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}),
			},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_ID, onceReadable),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false), pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.SetAttributeValue(shRW, privH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true)}); err != nil {
			t.Fatal(err)
		}
		onceRef := hsm.KeyRef{ID: onceReadable, Algorithm: hsm.Secp256k1, WrappedBackup: true}
		oncePub, err := m.PublicKey(ctxT(t), onceRef)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.CheckKey(ctxT(t), onceRef, oncePub); !errors.Is(err, hsm.ErrKeyUnsafe) || !strings.Contains(err.Error(), "CKA_ALWAYS_SENSITIVE") {
			t.Errorf("CheckKey of a once-readable key as backup-able = %v, want ErrKeyUnsafe for CKA_ALWAYS_SENSITIVE", err)
		}

		// The token, not this package, enforces both rules: an ordinary key
		// is unextractable, and a backup-able key cannot be wrapped by an
		// untrusted key even if the user makes one with the same powers.
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
		if _, err := p.WrapKey(sh, mech, wk, findObject(t, p, sh, privateByID(ordinary.ID))); !isPKCS11(err, pkcs11.CKR_KEY_UNEXTRACTABLE) {
			t.Errorf("raw C_WrapKey of an ordinary key = %v, want CKR_KEY_UNEXTRACTABLE", err)
		}
		untrusted, err := p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.WrapKey(sh, mech, untrusted, findObject(t, p, sh, privateByID(backups[0].key.ID))); !isPKCS11(err, pkcs11.CKR_KEY_NOT_WRAPPABLE) {
			t.Errorf("raw C_WrapKey of a backup-able key under an untrusted key = %v, want CKR_KEY_NOT_WRAPPABLE", err)
		}
		_ = p.DestroyObject(sh, untrusted)
		if _, err := p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		}); !isPKCS11(err, pkcs11.CKR_ATTRIBUTE_READ_ONLY) {
			t.Errorf("user creating a CKA_TRUSTED key = %v, want CKR_ATTRIBUTE_READ_ONLY", err)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("fresh token", func(t *testing.T) {
		m := openURI(t, dst)
		defer m.Close()
		p, sh := rawSession(t, dst, m.Slot())
		k1, p1 := backups[0], backups[1]
		newID := func() []byte { return randomBytes(16) }

		refused := []struct {
			name    string
			blob    []byte
			wrapKey string
			alg     hsm.Algorithm
			pub     []byte
			want    error
		}{
			{"wrong wrapping key", k1.blob, wrongLabel, hsm.Secp256k1, k1.key.PublicKey, hsm.ErrWrappedKeyInvalid},
			{"tampered blob", flipByte(k1.blob, len(k1.blob)/2), wrapLabel, hsm.Secp256k1, k1.key.PublicKey, hsm.ErrWrappedKeyInvalid},
			{"truncated blob", k1.blob[:len(k1.blob)-8], wrapLabel, hsm.Secp256k1, k1.key.PublicKey, hsm.ErrWrappedKeyInvalid},
			{"someone else's public key", k1.blob, wrapLabel, hsm.Secp256k1, ordinary.PublicKey, hsm.ErrKeyMismatch},
			{"secp256k1 blob declared P-256", k1.blob, wrapLabel, hsm.P256, p1.key.PublicKey, hsm.ErrKeyMismatch},
			{"absent wrapping key", k1.blob, "no-such-key", hsm.Secp256k1, k1.key.PublicKey, hsm.ErrKeyNotFound},
		}
		for _, tc := range refused {
			id := newID()
			err := m.UnwrapKey(ctxT(t), tc.blob, tc.wrapKey, tc.alg, id, "refused", tc.pub)
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: UnwrapKey = %v, want %v", tc.name, err, tc.want)
			}
			if n := objectsWithID(t, p, sh, id); n != 0 {
				t.Errorf("%s: %d objects left behind", tc.name, n)
			}
		}
		if h := m.Health(); !h.Healthy || h.Rebuilds != 0 {
			t.Fatalf("Health after refused unwraps = %+v: a bad blob is not a lost token", h)
		}

		for _, b := range backups {
			ref := hsm.KeyRef{ID: b.key.ID, Algorithm: b.alg, WrappedBackup: true}
			if err := m.UnwrapKey(ctxT(t), b.blob, wrapLabel, b.alg, b.key.ID, b.key.Label, b.key.PublicKey); err != nil {
				t.Fatalf("UnwrapKey %s: %v", b.alg, err)
			}
			if err := m.UnwrapKey(ctxT(t), b.blob, wrapLabel, b.alg, b.key.ID, b.key.Label, b.key.PublicKey); !errors.Is(err, hsm.ErrKeyExists) {
				t.Fatalf("second UnwrapKey with the same id = %v, want ErrKeyExists", err)
			}
			if n := objectsWithID(t, p, sh, b.key.ID); n != 2 {
				t.Fatalf("%d objects with the restored id, want 2 (private and public)", n)
			}
			// SoftHSM marks an unwrapped key neither local nor always
			// sensitive; CheckKey allows exactly that for backup-able keys.
			wantAttrs(t, p, sh, findObject(t, p, sh, privateByID(b.key.ID)), map[uint]bool{
				pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: true, pkcs11.CKA_WRAP_WITH_TRUSTED: true,
				pkcs11.CKA_ALWAYS_SENSITIVE: false, pkcs11.CKA_LOCAL: false, pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true,
				pkcs11.CKA_SIGN: true, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: false,
			})
			if err := m.CheckKey(ctxT(t), ref, b.key.PublicKey); err != nil {
				t.Fatalf("CheckKey of the restored %s key: %v", b.alg, err)
			}
			if err := m.CheckKey(ctxT(t), hsm.KeyRef{ID: b.key.ID, Algorithm: b.alg}, b.key.PublicKey); !errors.Is(err, hsm.ErrKeyUnsafe) {
				t.Fatalf("CheckKey of the restored key as ordinary = %v, want ErrKeyUnsafe", err)
			}
			if pub, err := m.PublicKey(ctxT(t), ref); err != nil || !bytes.Equal(pub, b.key.PublicKey) {
				t.Fatalf("PublicKey of the restored key = %x, %v", pub, err)
			}
			for i := range 5 {
				d := sha256.Sum256(fmt.Appendf(nil, "restored %s %d", b.alg, i))
				sig, err := m.Sign(ctxT(t), ref, d[:])
				if err != nil {
					t.Fatalf("Sign with the restored key: %v", err)
				}
				if b.alg == hsm.Secp256k1 {
					verifySecp256k1(t, b.key.PublicKey, d[:], sig)
				} else {
					verifyP256(t, b.key.PublicKey, d[:], sig)
				}
			}
			// A restored key can be backed up again.
			if _, err := m.WrapKey(ctxT(t), ref, wrapLabel); err != nil {
				t.Fatalf("WrapKey of the restored key: %v", err)
			}
		}
		m.SetPinnedKeys([]hsm.PinnedKey{{Ref: hsm.KeyRef{ID: k1.key.ID, Algorithm: hsm.Secp256k1}, PublicKey: k1.key.PublicKey, Backup: true}})
		if err := m.KeyError(k1.key.ID); err != nil {
			t.Fatalf("KeyError of the pinned restored key: %v", err)
		}
	})
}

func flipByte(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

func isPKCS11(err error, rv uint) bool {
	var pe pkcs11.Error
	return errors.As(err, &pe) && uint(pe) == rv
}

// TestEd25519BackupRefused checks both the refusal and the SoftHSM behaviour
// behind it: C_WrapKey will not wrap an EdDSA private key even when it is
// extractable and the wrapping key is trusted, while an EC key with the same
// attributes wraps under the same key.
func TestEd25519BackupRefused(t *testing.T) {
	uri, so, user := newTokenSO(t)
	if err := hsm.ProvisionWrappingKey(uri.ModulePath, uri.Token, so, user, "wrap", randomBytes(32)); err != nil {
		t.Fatal(err)
	}
	m := openURI(t, uri)
	defer m.Close()
	if _, err := m.GenerateKeyWith(ctxT(t), hsm.Ed25519, "ed", hsm.KeyOptions{WrappedBackup: true}); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("GenerateKeyWith(Ed25519, WrappedBackup) = %v, want ErrUnsupported", err)
	}
	ed, err := m.GenerateKey(ctxT(t), hsm.Ed25519, "ed")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.WrapKey(ctxT(t), hsm.KeyRef{ID: ed.ID, Algorithm: hsm.Ed25519}, "wrap"); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("WrapKey(Ed25519) = %v, want ErrUnsupported", err)
	}

	p, sh := rawSession(t, uri, m.Slot())
	wk := findObject(t, p, sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "wrap")})
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	for _, c := range []struct {
		name    string
		gen     uint
		params  []byte
		wantErr bool
	}{
		{"ed25519", hsm.CKM_EC_EDWARDS_KEY_PAIR_GEN, []byte{0x06, 0x03, 0x2b, 0x65, 0x70}, true},
		{"secp256k1 control", pkcs11.CKM_EC_KEY_PAIR_GEN, []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}, false},
	} {
		_, priv, err := p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(c.gen, nil)},
			[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, c.params)},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			})
		if err != nil {
			t.Fatalf("%s: C_GenerateKeyPair: %v", c.name, err)
		}
		_, err = p.WrapKey(sh, mech, wk, priv)
		if c.wantErr && !isPKCS11(err, pkcs11.CKR_KEY_NOT_WRAPPABLE) {
			t.Errorf("%s: C_WrapKey under the trusted key = %v, want CKR_KEY_NOT_WRAPPABLE (has SoftHSM learnt to wrap EdDSA keys?)", c.name, err)
		}
		if !c.wantErr && err != nil {
			t.Errorf("%s: C_WrapKey under the trusted key: %v", c.name, err)
		}
	}
}

// TestProvisionWrappingKeyRefusals covers the inputs and states
// ProvisionWrappingKey must refuse, and shows it leaves an open Module alone.
func TestProvisionWrappingKeyRefusals(t *testing.T) {
	uri, so, user := newTokenSO(t)
	mod, tok := uri.ModulePath, uri.Token
	if err := hsm.ProvisionWrappingKey(mod, tok, so, user, "w", randomBytes(16)); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Errorf("16-byte value = %v, want ErrInvalidInput", err)
	}
	if err := hsm.ProvisionWrappingKey(mod, tok, so, user, "", randomBytes(32)); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Errorf("empty label = %v, want ErrInvalidInput", err)
	}
	if err := hsm.ProvisionWrappingKey(mod, "no-such-token", so, user, "w", randomBytes(32)); !errors.Is(err, hsm.ErrTokenNotFound) {
		t.Errorf("unknown token = %v, want ErrTokenNotFound", err)
	}
	err := hsm.ProvisionWrappingKey(mod, tok, []byte("wrong-so-pin"), user, "w", randomBytes(32))
	if !errors.Is(err, hsm.ErrPINIncorrect) || bytes.Contains([]byte(err.Error()), []byte("wrong-so-pin")) {
		t.Errorf("wrong SO PIN = %v, want ErrPINIncorrect without the PIN", err)
	}
	err = hsm.ProvisionWrappingKey(mod, tok, so, []byte("wrong-user-pin"), "w", randomBytes(32))
	if !errors.Is(err, hsm.ErrPINIncorrect) || bytes.Contains([]byte(err.Error()), []byte("wrong-user-pin")) {
		t.Errorf("wrong user PIN = %v, want ErrPINIncorrect without the PIN", err)
	}

	m := openURI(t, uri)
	defer m.Close()
	if has, err := m.HasWrappingKey(ctxT(t), "w"); err != nil || has {
		t.Fatalf("a refused ProvisionWrappingKey left a key behind: %t, %v", has, err)
	}
	if err := hsm.ProvisionWrappingKey(mod, tok, so, user, "w", randomBytes(32)); !errors.Is(err, hsm.ErrAlreadyInitialized) {
		t.Errorf("ProvisionWrappingKey with a Module open = %v, want ErrAlreadyInitialized", err)
	}
	if err := m.Probe(ctxT(t)); err != nil {
		t.Fatalf("the open Module was disturbed: %v", err)
	}
}
