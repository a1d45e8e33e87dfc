package backup

import (
	"bytes"
	"crypto/ecdh"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseManifest: the manifest member of a backup, read before anything
// in the archive is trusted (it is authenticated only by the HMAC the
// restore checks afterwards). Refusals wrap ErrInvalidManifest or
// ErrUnsupportedVersion; an accepted manifest validates, encodes
// canonically (Marshal, then ParseManifest and Marshal again: the same
// bytes, the same manifest), and names distinct, valid members other than
// the manifest itself.
func FuzzParseManifest(f *testing.F) {
	b, err := validManifest().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	m := validManifest()
	m.Keys, m.AuditHead = nil, AuditHead{}
	b2, _ := m.Marshal()
	f.Add(b2)
	f.Add([]byte(`{"format_version":2}`))
	f.Add(append(append([]byte{}, b...), []byte(`{}`)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(bytes.NewReader(data))
		if err != nil {
			if m != nil || (!errors.Is(err, ErrInvalidManifest) && !errors.Is(err, ErrUnsupportedVersion)) {
				t.Fatalf("refusal %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted manifest does not validate: %v", err)
		}
		enc, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseManifest(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("encoded manifest refused: %v\n%s", err, enc)
		}
		enc2, _ := back.Marshal()
		if !bytes.Equal(enc, enc2) || !back.CreatedAt.Equal(m.CreatedAt) {
			t.Fatalf("manifest is not canonical:\n%s\n%s", enc, enc2)
		}
		a, c := *m, *back
		a.CreatedAt, c.CreatedAt = a.CreatedAt.UTC(), c.CreatedAt.UTC()
		if len(a.Keys) == 0 && len(c.Keys) == 0 {
			a.Keys, c.Keys = nil, nil
		}
		if !reflect.DeepEqual(a, c) {
			t.Fatalf("manifest reads back differently:\n%+v\n%+v", a, c)
		}
		seen := map[string]bool{ManifestName: true}
		for _, name := range m.Members() {
			if err := ValidMemberName(name); err != nil || seen[name] {
				t.Fatalf("member %q: %v (duplicate %v)", name, err, seen[name])
			}
			seen[name] = true
		}
	})
}

// FuzzParseBackupKey: the backup recipient key as operators paste it
// (backup.public_key, appliance backup --key). One key has one spelling,
// up to white space: what is accepted, marshalled again, is the input
// without surrounding white space and without the line breaks base64
// decoding skips (a key wrapped across lines reads as that key; the
// checksum still covers every character that counts). No small-order
// point is accepted.
func FuzzParseBackupKey(f *testing.F) {
	_, pub := testKey(f, 1)
	f.Add(MarshalPublicKey(pub))
	f.Add(" " + MarshalPublicKey(pub) + "\n")
	f.Add(PublicKeyPrefix + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("apbk2-")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParsePublicKey(s)
		if err != nil {
			if k != nil {
				t.Fatal("refusal with a key")
			}
			return
		}
		if got := MarshalPublicKey(k); got != strings.NewReplacer("\r", "", "\n", "").Replace(strings.TrimSpace(s)) {
			t.Fatalf("%q reads as the key %q", s, got)
		}
		raw := k.Bytes()
		epk, err := ecdh.X25519().NewPublicKey(raw)
		if err != nil || len(raw) != 32 {
			t.Fatalf("key bytes %x: %v", raw, err)
		}
		if _, err := probeKey.ECDH(epk); err != nil {
			t.Fatalf("accepted a small-order key %x", raw)
		}
	})
}
