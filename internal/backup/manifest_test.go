package backup

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func validManifest() *Manifest {
	return &Manifest{
		FormatVersion:    ManifestVersion,
		ApplianceVersion: "1.4.0",
		CreatedAt:        time.Date(2026, 3, 1, 12, 30, 45, 0, time.UTC),
		SchemaVersion:    6,
		DatabaseMember:   "appliance.db",
		DatabaseSHA256:   strings.Repeat("ab", 32),
		ConfigMember:     "appliance.yaml",
		ConfigSHA256:     strings.Repeat("cd", 32),
		Keys: []ManifestKey{
			{ID: "eth-dev", Label: "eth-dev", Algorithm: "secp256k1", Chain: "ethereum", Network: "1337",
				PublicKey: "04" + strings.Repeat("11", 64), Address: "0x0000000000000000000000000000000000000001",
				Wrapped: true, WrappedMember: "keys/eth-dev.wrapped"},
			{ID: "btc-cold", Label: "btc-cold", Algorithm: "secp256k1", Chain: "bitcoin", Network: "regtest",
				PublicKey: "02" + strings.Repeat("22", 32)},
		},
		AuditHead: AuditHead{Seq: 42, Hash: strings.Repeat("ef", 32)},
		Ceremony:  CeremonyInfo{ID: "0102030405060708", Threshold: 3, Total: 5},
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := validManifest()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"format_version": 1`, `"database_sha256"`, `"wrapped_member": "keys/eth-dev.wrapped"`, `"audit_head"`, `"threshold": 3`} {
		if !bytes.Contains(b, []byte(field)) {
			t.Errorf("encoded manifest lacks %s:\n%s", field, b)
		}
	}
	got, err := ParseManifest(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	again, _ := got.Marshal()
	if !bytes.Equal(b, again) {
		t.Fatalf("manifest changed in a round trip:\n%s\n%s", b, again)
	}
	if want := []string{"appliance.db", "appliance.yaml", "keys/eth-dev.wrapped"}; strings.Join(got.Members(), ",") != strings.Join(want, ",") {
		t.Fatalf("Members() = %q, want %q", got.Members(), want)
	}

	// An empty audit chain has no head hash.
	m.AuditHead = AuditHead{}
	m.Keys = nil
	if err := m.Validate(); err != nil {
		t.Fatalf("manifest with no keys and an empty audit chain: %v", err)
	}
}

func TestManifestValidateRefuses(t *testing.T) {
	cases := map[string]func(m *Manifest){
		"no appliance version":    func(m *Manifest) { m.ApplianceVersion = "" },
		"no created_at":           func(m *Manifest) { m.CreatedAt = time.Time{} },
		"schema 0":                func(m *Manifest) { m.SchemaVersion = 0 },
		"no database member":      func(m *Manifest) { m.DatabaseMember = "" },
		"database traversal":      func(m *Manifest) { m.DatabaseMember = "../appliance.db" },
		"database absolute":       func(m *Manifest) { m.DatabaseMember = "/var/lib/appliance.db" },
		"database is manifest":    func(m *Manifest) { m.DatabaseMember = ManifestName },
		"database hash short":     func(m *Manifest) { m.DatabaseSHA256 = strings.Repeat("ab", 31) },
		"database hash upper":     func(m *Manifest) { m.DatabaseSHA256 = strings.Repeat("AB", 32) },
		"database hash not hex":   func(m *Manifest) { m.DatabaseSHA256 = strings.Repeat("zz", 32) },
		"no config member":        func(m *Manifest) { m.ConfigMember = "" },
		"config same as database": func(m *Manifest) { m.ConfigMember = m.DatabaseMember },
		"config hash missing":     func(m *Manifest) { m.ConfigSHA256 = "" },
		"key without id":          func(m *Manifest) { m.Keys[1].ID = "" },
		"duplicate key id":        func(m *Manifest) { m.Keys[1].ID = m.Keys[0].ID },
		"key without algorithm":   func(m *Manifest) { m.Keys[0].Algorithm = "" },
		"key public key empty":    func(m *Manifest) { m.Keys[0].PublicKey = "" },
		"key public key not hex":  func(m *Manifest) { m.Keys[0].PublicKey = "04xyz" },
		"wrapped without member":  func(m *Manifest) { m.Keys[0].WrappedMember = "" },
		"member without wrapped":  func(m *Manifest) { m.Keys[1].WrappedMember = "keys/btc.wrapped" },
		"wrapped member unsafe":   func(m *Manifest) { m.Keys[0].WrappedMember = "keys/../../etc/cron.d/x" },
		"wrapped member is db":    func(m *Manifest) { m.Keys[0].WrappedMember = m.DatabaseMember },
		"two keys one member": func(m *Manifest) {
			m.Keys[1].Wrapped, m.Keys[1].WrappedMember = true, m.Keys[0].WrappedMember
		},
		"audit seq negative":   func(m *Manifest) { m.AuditHead.Seq = -1 },
		"audit hash missing":   func(m *Manifest) { m.AuditHead.Hash = "" },
		"audit hash short":     func(m *Manifest) { m.AuditHead.Hash = "abcd" },
		"ceremony id missing":  func(m *Manifest) { m.Ceremony.ID = "" },
		"ceremony id 16 bytes": func(m *Manifest) { m.Ceremony.ID = strings.Repeat("01", 16) },
		"threshold 1":          func(m *Manifest) { m.Ceremony.Threshold = 1 },
		"threshold > total":    func(m *Manifest) { m.Ceremony.Threshold, m.Ceremony.Total = 4, 3 },
		"total 256":            func(m *Manifest) { m.Ceremony.Total = 256 },
	}
	for name, mutate := range cases {
		m := validManifest()
		mutate(m)
		if err := m.Validate(); !errors.Is(err, ErrInvalidManifest) {
			t.Errorf("%s: Validate = %v, want ErrInvalidManifest", name, err)
		}
		if _, err := m.Marshal(); err == nil {
			t.Errorf("%s: Marshal succeeded", name)
		}
	}
	m := validManifest()
	m.FormatVersion = 2
	if err := m.Validate(); !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("format_version 2: %v, want ErrUnsupportedVersion", err)
	}
	if err := (*Manifest)(nil).Validate(); !errors.Is(err, ErrInvalidManifest) {
		t.Errorf("nil manifest: %v", err)
	}
}

func TestParseManifestRefuses(t *testing.T) {
	good, err := validManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	unknown := bytes.Replace(good, []byte(`"format_version"`), []byte(`"surprise": true, "format_version"`), 1)
	for name, in := range map[string][]byte{
		"empty":         nil,
		"not json":      []byte("format_version: 1"),
		"unknown field": unknown,
		"trailing data": append(bytes.Clone(good), []byte(`{}`)...),
		"two objects":   append(bytes.Clone(good), good...),
		"too large":     append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxManifestSize)...),
		"invalid":       []byte(`{"format_version": 1}`),
	} {
		if _, err := ParseManifest(bytes.NewReader(in)); !errors.Is(err, ErrInvalidManifest) {
			t.Errorf("%s: %v, want ErrInvalidManifest", name, err)
		}
	}
}
