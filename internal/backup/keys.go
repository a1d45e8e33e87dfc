package backup

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// The one HPKE suite of format version 1. Fixed rather than negotiated: a
// backup is read years after it is written, and every option is one more
// thing a restorer must still support then.
const (
	kemID  uint16 = 0x0020 // DHKEM(X25519, HKDF-SHA256)
	kdfID  uint16 = 0x0001 // HKDF-SHA256
	aeadID uint16 = 0x0002 // AES-256-GCM
)

var (
	suiteKEM  = hpke.DHKEM(ecdh.X25519())
	suiteKDF  = hpke.HKDFSHA256()
	suiteAEAD = hpke.AES256GCM()
)

// SeedSize is the length of the seed KeyPairFromSeed takes.
const SeedSize = 32

// PublicKey is a backup recipient key: what the appliance encrypts to. It is
// not secret.
type PublicKey struct {
	k hpke.PublicKey
}

// PrivateKey is the key that opens backups. It should exist only while a
// restore runs, derived from the reconstructed quorum secret.
type PrivateKey struct {
	k   hpke.PrivateKey
	pub *PublicKey
}

// KeyPairFromSeed derives the recipient key pair from a 32-byte seed with
// RFC 9180's DeriveKeyPair for DHKEM(X25519, HKDF-SHA256). The derivation is
// a published, test-vectored function rather than something of ours because
// a restore years from now must arrive at the same key from the same seed.
// The caller derives the seed from the quorum secret with HKDF and a label
// of its own, so the backup key is independent of every other key derived
// from that secret.
//
// An all-zero seed is refused: it is what an uninitialised buffer looks
// like, and a key derived from it would be readable by anyone.
func KeyPairFromSeed(seed []byte) (*PrivateKey, *PublicKey, error) {
	if len(seed) != SeedSize {
		return nil, nil, fmt.Errorf("backup: key seed is %d bytes, want %d", len(seed), SeedSize)
	}
	if subtle.ConstantTimeCompare(seed, make([]byte, SeedSize)) == 1 {
		return nil, nil, errors.New("backup: key seed is all zero")
	}
	k, err := suiteKEM.DeriveKeyPair(seed)
	if err != nil {
		return nil, nil, fmt.Errorf("backup: derive key pair: %w", err)
	}
	pub := &PublicKey{k: k.PublicKey()}
	return &PrivateKey{k: k, pub: pub}, pub, nil
}

// Public returns the public half.
func (k *PrivateKey) Public() *PublicKey {
	if k == nil {
		return nil
	}
	return k.pub
}

// Bytes returns the 32-byte X25519 public key.
func (k *PublicKey) Bytes() []byte {
	if k == nil || k.k == nil {
		return nil
	}
	return k.k.Bytes()
}

// Equal reports whether k and o are the same key.
func (k *PublicKey) Equal(o *PublicKey) bool {
	a, b := k.Bytes(), o.Bytes()
	return a != nil && b != nil && subtle.ConstantTimeCompare(a, b) == 1
}

// Fingerprint identifies a recipient key. It is stored in the clear in every
// archive header so that an archive can be matched to its key, and a wrong
// key reported as such, without decrypting anything.
type Fingerprint [32]byte

// String is lower-case hex.
func (f Fingerprint) String() string { return hex.EncodeToString(f[:]) }

// fingerprintLabel separates the fingerprint from any other SHA-256 of the
// same key bytes.
const fingerprintLabel = "CUSTODY-APPLIANCE-BACKUP recipient\x00"

// Fingerprint is SHA-256("CUSTODY-APPLIANCE-BACKUP recipient" || 0x00 ||
// kem id (2 bytes) || public key). The zero Fingerprint is returned for a nil
// key.
func (k *PublicKey) Fingerprint() Fingerprint {
	b := k.Bytes()
	if b == nil {
		return Fingerprint{}
	}
	h := sha256.New()
	h.Write([]byte(fingerprintLabel))
	h.Write(binary.BigEndian.AppendUint16(nil, kemID))
	h.Write(b)
	return Fingerprint(h.Sum(nil))
}

// PublicKeyPrefix starts the text form of a PublicKey. The "1" is the text
// form's version, tied to the X25519 suite.
const PublicKeyPrefix = "apbk1-"

const pubChecksumSize = 4

// String is MarshalPublicKey(k).
func (k *PublicKey) String() string { return MarshalPublicKey(k) }

// MarshalPublicKey returns the text form of k, for configuration files and
// for officers to compare by eye:
//
//	"apbk1-" || base64url-unpadded(public key (32 bytes) || checksum (4 bytes))
//
// where checksum is the first 4 bytes of SHA-256("apbk1-" || public key). The
// checksum catches a key damaged in transcription before backups are
// encrypted to a key nobody holds. A nil key marshals to "".
func MarshalPublicKey(k *PublicKey) string {
	b := k.Bytes()
	if b == nil {
		return ""
	}
	return PublicKeyPrefix + base64.RawURLEncoding.EncodeToString(append(b, pubChecksum(b)...))
}

// ParsePublicKey parses the text form written by MarshalPublicKey.
// Surrounding white space is ignored (keys are read from files). Keys of
// small order are refused: encrypting to one would yield a shared secret
// anyone can compute.
func ParsePublicKey(s string) (*PublicKey, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, PublicKeyPrefix)
	if !ok {
		return nil, fmt.Errorf("backup: public key does not start with %q", PublicKeyPrefix)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("backup: public key: %w", err)
	}
	const keySize = 32
	if len(b) != keySize+pubChecksumSize {
		return nil, fmt.Errorf("backup: public key is %d bytes, want %d", len(b), keySize+pubChecksumSize)
	}
	key, sum := b[:keySize], b[keySize:]
	if subtle.ConstantTimeCompare(sum, pubChecksum(key)) != 1 {
		return nil, errors.New("backup: public key checksum mismatch (mistyped or truncated?)")
	}
	epk, err := ecdh.X25519().NewPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("backup: public key: %w", err)
	}
	if _, err := probeKey.ECDH(epk); err != nil {
		return nil, fmt.Errorf("backup: public key is not usable: %w", err)
	}
	k, err := suiteKEM.NewPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("backup: public key: %w", err)
	}
	return &PublicKey{k: k}, nil
}

func pubChecksum(key []byte) []byte {
	sum := sha256.Sum256(append([]byte(PublicKeyPrefix), key...))
	return sum[:pubChecksumSize]
}

// probeKey is a fixed X25519 scalar used only to test a public key: X25519
// with a small-order point gives the all-zero output, which crypto/ecdh
// reports as an error, whatever the scalar.
var probeKey = func() *ecdh.PrivateKey {
	sum := sha256.Sum256([]byte("CUSTODY-APPLIANCE-BACKUP small-order probe"))
	k, err := ecdh.X25519().NewPrivateKey(sum[:])
	if err != nil {
		panic(err) // unreachable: every 32-byte string is an X25519 scalar
	}
	return k
}()
