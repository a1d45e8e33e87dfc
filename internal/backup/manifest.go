package backup

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// ErrInvalidManifest: a manifest is missing a required field or has a
// malformed one.
var ErrInvalidManifest = errors.New("backup: invalid manifest")

const (
	// ManifestName is the member holding the Manifest. Writers add it
	// first, so that a restorer can check the whole archive against it as
	// the other members stream past.
	ManifestName = "manifest.json"
	// ManifestVersion is the Manifest layout this package writes and
	// validates.
	ManifestVersion = 1
	// MaxManifestSize bounds the manifest member, which is read into
	// memory.
	MaxManifestSize = 1 << 20
	// ceremonyIDSize is the length of a ceremony id (ceremony.Ceremony.ID).
	ceremonyIDSize = 8
)

// Manifest describes a backup: what it holds and the state it was taken at.
// It travels inside the encrypted payload, so it is as confidential and as
// authenticated as the rest (and, like the rest, says nothing about who
// wrote the archive).
type Manifest struct {
	FormatVersion    int       `json:"format_version"`    // ManifestVersion
	ApplianceVersion string    `json:"appliance_version"` // binary that took the backup
	CreatedAt        time.Time `json:"created_at"`
	SchemaVersion    int       `json:"schema_version"` // database migration level

	DatabaseMember string `json:"database_member"`
	DatabaseSHA256 string `json:"database_sha256"` // hex, of the member's bytes
	ConfigMember   string `json:"config_member"`
	ConfigSHA256   string `json:"config_sha256"` // hex, of the member's bytes

	Keys      []ManifestKey `json:"keys"`
	AuditHead AuditHead     `json:"audit_head"`
	Ceremony  CeremonyInfo  `json:"ceremony"`
}

// ManifestKey is one registry key. Wrapped keys have their HSM-wrapped
// private key in WrappedMember; unwrapped ones (keys that must not leave the
// HSM) are listed so a restore can say which keys it cannot bring back.
type ManifestKey struct {
	ID            string `json:"id"`
	Label         string `json:"label"`
	Algorithm     string `json:"algorithm"`
	Chain         string `json:"chain"`
	Network       string `json:"network"`
	PublicKey     string `json:"public_key"` // hex
	Address       string `json:"address"`
	Wrapped       bool   `json:"wrapped"`
	WrappedMember string `json:"wrapped_member,omitempty"`
}

// AuditHead is the audit chain's last entry when the backup was taken, so a
// restored appliance can show how far its history reaches.
type AuditHead struct {
	Seq  int64  `json:"seq"`
	Hash string `json:"hash"` // hex, 32 bytes; may be empty only when Seq is 0
}

// CeremonyInfo identifies the key ceremony whose quorum can open the backup.
type CeremonyInfo struct {
	ID        string `json:"id"` // hex, 8 bytes
	Threshold int    `json:"threshold"`
	Total     int    `json:"total"`
}

// Validate checks that every required field is present and well formed:
// hashes are 32 bytes of lower-case hex, member names are valid
// (ValidMemberName), distinct and not ManifestName, key ids are unique, a
// key is wrapped exactly when it names a wrapped member, and the ceremony
// is a k-of-n with 2 ≤ k ≤ n ≤ 255. Errors wrap ErrInvalidManifest, or
// ErrUnsupportedVersion for another FormatVersion.
func (m *Manifest) Validate() error {
	if m == nil {
		return fmt.Errorf("%w: nil", ErrInvalidManifest)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidManifest, fmt.Sprintf(format, args...))
	}
	if m.FormatVersion != ManifestVersion {
		return fmt.Errorf("%w: manifest version %d (this binary reads %d)", ErrUnsupportedVersion, m.FormatVersion, ManifestVersion)
	}
	if m.ApplianceVersion == "" {
		return bad("appliance_version is empty")
	}
	if m.CreatedAt.IsZero() {
		return bad("created_at is missing")
	}
	if m.SchemaVersion < 1 {
		return bad("schema_version %d", m.SchemaVersion)
	}
	members := map[string]string{ManifestName: "the manifest"}
	member := func(what, name string) error {
		if err := ValidMemberName(name); err != nil {
			return bad("%s: %v", what, err)
		}
		if other, dup := members[name]; dup {
			return bad("%s %q is also %s", what, name, other)
		}
		members[name] = what
		return nil
	}
	if err := member("database_member", m.DatabaseMember); err != nil {
		return err
	}
	if err := checkHex(m.DatabaseSHA256, 32); err != nil {
		return bad("database_sha256: %v", err)
	}
	if err := member("config_member", m.ConfigMember); err != nil {
		return err
	}
	if err := checkHex(m.ConfigSHA256, 32); err != nil {
		return bad("config_sha256: %v", err)
	}
	ids := make(map[string]bool, len(m.Keys))
	for i, k := range m.Keys {
		switch {
		case k.ID == "":
			return bad("keys[%d]: id is empty", i)
		case ids[k.ID]:
			return bad("keys[%d]: duplicate id %q", i, k.ID)
		case k.Algorithm == "":
			return bad("key %q: algorithm is empty", k.ID)
		}
		ids[k.ID] = true
		if err := checkHex(k.PublicKey, -1); err != nil {
			return bad("key %q: public_key: %v", k.ID, err)
		}
		switch {
		case k.Wrapped:
			if err := member(fmt.Sprintf("key %q wrapped_member", k.ID), k.WrappedMember); err != nil {
				return err
			}
		case k.WrappedMember != "":
			return bad("key %q is not wrapped but names wrapped_member %q", k.ID, k.WrappedMember)
		}
	}
	if m.AuditHead.Seq < 0 {
		return bad("audit_head.seq %d", m.AuditHead.Seq)
	}
	if m.AuditHead.Seq > 0 || m.AuditHead.Hash != "" {
		if err := checkHex(m.AuditHead.Hash, 32); err != nil {
			return bad("audit_head.hash: %v", err)
		}
	}
	if err := checkHex(m.Ceremony.ID, ceremonyIDSize); err != nil {
		return bad("ceremony.id: %v", err)
	}
	if c := m.Ceremony; c.Threshold < 2 || c.Total < c.Threshold || c.Total > 255 {
		return bad("ceremony is %d of %d (want 2 ≤ k ≤ n ≤ 255)", c.Threshold, c.Total)
	}
	return nil
}

// Members returns the names of the members the manifest refers to, besides
// itself: the database, the configuration and each wrapped key. A restorer
// should require the archive to hold exactly these and ManifestName.
func (m *Manifest) Members() []string {
	out := []string{m.DatabaseMember, m.ConfigMember}
	for _, k := range m.Keys {
		if k.Wrapped {
			out = append(out, k.WrappedMember)
		}
	}
	return out
}

// Marshal validates m and encodes it as indented JSON.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("backup: encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// ParseManifest decodes and validates a manifest of at most MaxManifestSize
// bytes. Unknown fields are refused: a manifest written by a newer binary
// carries a newer format_version, so an unknown field in a version this
// binary knows is damage, not extension.
func ParseManifest(r io.Reader) (*Manifest, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("backup: read manifest: %w", err)
	}
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalidManifest, MaxManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrInvalidManifest)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// checkHex requires canonical lower-case hex of n bytes (n < 0: any
// non-zero length), so that one value has one spelling and comparisons of
// hashes as strings are sound.
func checkHex(s string, n int) error {
	b, err := hex.DecodeString(s)
	switch {
	case err != nil:
		return err
	case hex.EncodeToString(b) != s:
		return errors.New("not lower-case hex")
	case n < 0 && len(b) == 0:
		return errors.New("empty")
	case n >= 0 && len(b) != n:
		return fmt.Errorf("%d bytes, want %d", len(b), n)
	}
	return nil
}
