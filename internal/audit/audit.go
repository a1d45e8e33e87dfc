// Package audit is the appliance's tamper-evident record: an append-only
// hash chain of entries kept in SQLite, whose head is signed from time to
// time (a checkpoint) by a P-256 key that never leaves the HSM.
//
// Each entry commits to the one before it: its hash covers its own sequence
// number, time, kind, principal, detail and fields, and the previous entry's
// hash. Changing, inserting, deleting or reordering an entry therefore breaks
// the chain at that entry unless every later hash is recomputed; and a
// recomputed chain no longer matches the heads the audit key signed, which
// only the HSM can sign. The last checkpoint is also kept on the token, so a
// database rolled back or truncated behind it is caught at unseal.
//
// This package holds the format and the offline verifier; it does not touch
// SQLite or the HSM, so an auditor's tool can verify an export with nothing
// but the audit public key. The store appends entries inside the write
// transaction of the operation they describe: if the entry cannot be
// committed, neither can the operation (fail closed).
//
// Sensitive values (idempotency keys, network addresses) are never stored
// raw: a Redactor replaces them with an HMAC under a key derived from the HSM
// PIN, so an auditor holding the key can test a known value, and nobody
// reading an export learns it. While the appliance is sealed there is no key
// and such values are dropped ("redacted").
package audit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// HashSize is the size of entry hashes.
const HashSize = sha256.Size

// Domain tags keep an entry hash, a checkpoint digest and an HMAC key id
// from ever being confused with one another or with another system's hashes.
const (
	entryDomain      = "custodysigner/appliance/v1/audit-entry\x00"
	checkpointDomain = "custodysigner/appliance/v1/audit-checkpoint\x00"
	hmacIDDomain     = "custodysigner/appliance/v1/audit-hmac-id\x00"
)

// Entry is one link of the chain, exactly as stored.
type Entry struct {
	Seq       int64
	At        int64 // Unix nanoseconds, UTC
	Kind      string
	Principal string
	Detail    string
	Fields    string // canonical JSON object (see CanonicalFields); "{}" when empty
	PrevHash  []byte // the previous entry's Hash; 32 zero bytes for the first
	Hash      []byte
}

// Genesis is the PrevHash of the first entry.
func Genesis() []byte { return make([]byte, HashSize) }

// ComputeHash returns the hash an entry must carry given its contents and
// PrevHash. Strings are length-prefixed so no two different entries encode
// alike.
func (e *Entry) ComputeHash() []byte {
	h := sha256.New()
	var b [8]byte
	h.Write([]byte(entryDomain))
	binary.BigEndian.PutUint64(b[:], uint64(e.Seq))
	h.Write(b[:])
	binary.BigEndian.PutUint64(b[:], uint64(e.At))
	h.Write(b[:])
	for _, s := range [...]string{e.Kind, e.Principal, e.Detail, e.Fields} {
		binary.BigEndian.PutUint64(b[:], uint64(len(s)))
		h.Write(b[:])
		h.Write([]byte(s))
	}
	binary.BigEndian.PutUint64(b[:], uint64(len(e.PrevHash)))
	h.Write(b[:])
	h.Write(e.PrevHash)
	return h.Sum(nil)
}

// Record is what a caller asks to append. The store assigns Seq, At and the
// hashes. Sensitive values are passed apart so they can only ever be stored
// through a Redactor.
type Record struct {
	Kind      string
	Principal string
	Detail    string            // never a secret: share indexes, never shares
	Fields    map[string]string // stored as given
	Sensitive map[string]string // stored as an HMAC, or "redacted" while sealed
}

// Build fills in an Entry for r following prev (nil prev: the first entry).
func (r Record) Build(prevSeq int64, prevHash []byte, at int64, red *Redactor) (Entry, error) {
	for k := range r.Sensitive {
		if _, dup := r.Fields[k]; dup {
			return Entry{}, fmt.Errorf("audit: field %q given as both plain and sensitive", k)
		}
	}
	canon, err := appendCanonical(nil, r.Fields, r.Sensitive, red)
	if err != nil {
		return Entry{}, err
	}
	if prevHash == nil {
		prevHash = Genesis()
	}
	e := Entry{
		Seq: prevSeq + 1, At: at,
		Kind: valid(r.Kind), Principal: valid(r.Principal), Detail: valid(r.Detail),
		Fields: string(canon), PrevHash: prevHash,
	}
	if e.Kind == "" {
		return Entry{}, errors.New("audit: an entry needs a kind")
	}
	e.Hash = e.ComputeHash()
	return e, nil
}

// valid makes s valid UTF-8, so an entry survives a JSON export byte for byte.
func valid(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// CanonicalFields is the stored form of fields: a JSON object with sorted
// keys and valid UTF-8, the same bytes every time for the same map.
func CanonicalFields(fields map[string]string) (string, error) {
	b, err := appendCanonical(nil, fields, nil, nil)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// Redactor turns a sensitive value into an HMAC-SHA256 under a key that
// only the unsealed appliance (and whoever holds the HSM PIN) can derive.
// The stored form names the key by a short id, so values from before and
// after a PIN change are not confused. A nil *Redactor redacts.
type Redactor struct {
	key []byte
	id  string
}

// NewRedactor keeps a copy of key (32 bytes).
func NewRedactor(key []byte) (*Redactor, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("audit: HMAC key has %d bytes, want 32", len(key))
	}
	id := sha256.Sum256(append([]byte(hmacIDDomain), key...))
	return &Redactor{key: append([]byte(nil), key...), id: hex.EncodeToString(id[:8])}, nil
}

// Redacted is what a sensitive value becomes when no key is available.
const Redacted = "redacted"

// Value returns "hmac-sha256:<key id>:<hex>", or Redacted for a nil receiver.
func (r *Redactor) Value(v string) string {
	if r == nil {
		return Redacted
	}
	m := hmac.New(sha256.New, r.key)
	m.Write([]byte(v))
	return "hmac-sha256:" + r.id + ":" + hex.EncodeToString(m.Sum(nil))
}

// ID is the key id that Value embeds.
func (r *Redactor) ID() string {
	if r == nil {
		return ""
	}
	return r.id
}

// Checkpoint is a signed statement by the audit key: "the chain's entry Seq
// has hash Hash", made at At.
type Checkpoint struct {
	Seq       int64
	Hash      []byte
	At        int64  // Unix nanoseconds, UTC
	KeyID     string // KeyID of the signing audit key
	Signature []byte // P-256 ECDSA over Digest, r||s, 64 bytes
}

// Digest is what the audit key signs.
func (c *Checkpoint) Digest() []byte {
	h := sha256.New()
	var b [8]byte
	h.Write([]byte(checkpointDomain))
	binary.BigEndian.PutUint64(b[:], uint64(c.Seq))
	h.Write(b[:])
	binary.BigEndian.PutUint64(b[:], uint64(len(c.Hash)))
	h.Write(b[:])
	h.Write(c.Hash)
	binary.BigEndian.PutUint64(b[:], uint64(c.At))
	h.Write(b[:])
	binary.BigEndian.PutUint64(b[:], uint64(len(c.KeyID)))
	h.Write(b[:])
	h.Write([]byte(c.KeyID))
	return h.Sum(nil)
}

// Verify checks the checkpoint's signature under pub.
func (c *Checkpoint) Verify(pub *ecdsa.PublicKey) bool {
	if len(c.Signature) != 64 || pub == nil {
		return false
	}
	r := new(big.Int).SetBytes(c.Signature[:32])
	s := new(big.Int).SetBytes(c.Signature[32:])
	return ecdsa.Verify(pub, c.Digest(), r, s)
}

// KeyID names an audit public key: the first 8 bytes of SHA-256 over its
// uncompressed point, in hex.
func KeyID(pub *ecdsa.PublicKey) string {
	pt, err := pub.Bytes()
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(pt)
	return hex.EncodeToString(sum[:8])
}

// ParsePublicKey accepts an audit public key as a 65-byte uncompressed P-256
// point, a PKIX DER SubjectPublicKeyInfo, or either of those in PEM.
func ParsePublicKey(b []byte) (*ecdsa.PublicKey, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	if len(b) == 65 && b[0] == 4 {
		return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), b)
	}
	k, err := x509.ParsePKIXPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("audit: public key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("audit: public key is not P-256")
	}
	return ek, nil
}

// MarshalPublicKey renders pub as a PEM "PUBLIC KEY" block.
func MarshalPublicKey(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
