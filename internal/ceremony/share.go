package ceremony

import (
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strconv"
	"strings"
)

// ShareVersion is the share text format this package writes and reads.
const ShareVersion = 1

// sharePrefix starts every share text; the version number follows it.
const sharePrefix = "aps"

// maxShareText bounds the input ParseShare looks at: a share of a 255-byte
// secret is under 500 characters, so anything far longer is not a share.
const maxShareText = 1024

// Errors returned by ParseShare; compare with errors.Is. None of them
// carries any part of the text, which may be a nearly-right share.
var (
	// ErrShareFormat reports text that is not laid out as a share.
	ErrShareFormat = errors.New("ceremony: malformed share")
	// ErrShareChecksum reports a share whose checksum does not match: a
	// character was mistyped, lost or changed.
	ErrShareChecksum = errors.New("ceremony: share checksum mismatch")
	// ErrShareVersion reports a share written by another format version.
	ErrShareVersion = errors.New("ceremony: unsupported share version")
)

// Share is one officer's share of the unseal secret.
type Share struct {
	Version    byte    // text format version, ShareVersion
	CeremonyID [8]byte // the ceremony that produced it
	Index      byte    // x-coordinate, 1..Total
	Threshold  byte    // shares needed to unseal (k)
	Total      byte    // shares made (n)
	Data       []byte  // y-values, one per secret byte; secret material
}

// Encode renders the share as a copy-pasteable, self-checking text:
//
//	aps<version>-<ceremony id, 16 hex>-<k>of<n>-<index>-<data, base32>-<checksum, 8 hex>
//
// Hex and base32 are lowercase, base32 unpadded, numbers decimal without
// leading zeros, so every share has exactly one spelling. The checksum is
// CRC-32C of everything before its dash: a CRC detects every error burst
// shorter than its 32 bits, so any single changed character (or any change
// within four adjacent characters) is refused with certainty, which a
// truncated hash only promises with high probability. Integrity against
// forgery is not the checksum's job; the verifier catches a wrong secret.
func (s Share) Encode() string {
	text := s.AppendText(nil)
	defer clear(text)
	return string(text)
}

// AppendText appends the share's text (Encode's, without a newline) to dst
// and returns the extended slice. Unlike Encode's string it can be zeroed:
// write share files from it, then clear it. No other copy is made when dst
// has room.
func (s Share) AppendText(dst []byte) []byte {
	// Room for everything up front: a growing append would leave a
	// partial copy behind in the array it outgrew.
	dst = slices.Grow(dst, len(sharePrefix)+3+1+2*len(s.CeremonyID)+1+3+2+3+1+3+1+shareEncoding().EncodedLen(len(s.Data))+1+8)
	start := len(dst)
	dst = append(dst, sharePrefix...)
	dst = strconv.AppendUint(dst, uint64(s.Version), 10)
	dst = append(dst, '-')
	dst = hex.AppendEncode(dst, s.CeremonyID[:])
	dst = append(dst, '-')
	dst = strconv.AppendUint(dst, uint64(s.Threshold), 10)
	dst = append(dst, "of"...)
	dst = strconv.AppendUint(dst, uint64(s.Total), 10)
	dst = append(dst, '-')
	dst = strconv.AppendUint(dst, uint64(s.Index), 10)
	dst = append(dst, '-')
	dst = shareEncoding().AppendEncode(dst, s.Data)
	sum := checksumBytes(dst[start:])
	dst = append(dst, '-')
	return hex.AppendEncode(dst, []byte{byte(sum >> 24), byte(sum >> 16), byte(sum >> 8), byte(sum)})
}

// ParseShare reads a share written by Encode. Surrounding whitespace and
// newlines are ignored; everything else must match exactly.
func ParseShare(text string) (Share, error) {
	text = strings.TrimSpace(text)
	if len(text) > maxShareText {
		return Share{}, fmt.Errorf("%w: %d characters is too long", ErrShareFormat, len(text))
	}
	fields := strings.Split(text, "-")
	if len(fields) != 6 || !strings.HasPrefix(fields[0], sharePrefix) {
		return Share{}, fmt.Errorf("%w: want 6 dash-separated fields starting %q", ErrShareFormat, sharePrefix)
	}
	// The version decides the rest of the layout, so it is checked first: a
	// newer share should say "version", not "checksum".
	version, ok := parseDecimal(fields[0][len(sharePrefix):], 255)
	if !ok {
		return Share{}, fmt.Errorf("%w: version", ErrShareFormat)
	}
	if version != ShareVersion {
		return Share{}, fmt.Errorf("%w: version %d, this build reads %d", ErrShareVersion, version, ShareVersion)
	}

	sumText := fields[5]
	want, ok := parseLowerHex(sumText, 4)
	if !ok {
		return Share{}, fmt.Errorf("%w: checksum field", ErrShareFormat)
	}
	body := text[:len(text)-len(sumText)-1]
	if checksum(body) != uint32(want[0])<<24|uint32(want[1])<<16|uint32(want[2])<<8|uint32(want[3]) {
		return Share{}, ErrShareChecksum
	}

	s := Share{Version: byte(version)}
	id, ok := parseLowerHex(fields[1], len(s.CeremonyID))
	if !ok {
		return Share{}, fmt.Errorf("%w: ceremony id", ErrShareFormat)
	}
	copy(s.CeremonyID[:], id)

	kText, nText, found := strings.Cut(fields[2], "of")
	k, kOK := parseDecimal(kText, 255)
	n, nOK := parseDecimal(nText, 255)
	if !found || !kOK || !nOK || k < 2 || n < k {
		return Share{}, fmt.Errorf("%w: threshold field", ErrShareFormat)
	}
	s.Threshold, s.Total = byte(k), byte(n)

	index, ok := parseDecimal(fields[3], n)
	if !ok || index < 1 {
		return Share{}, fmt.Errorf("%w: index", ErrShareFormat)
	}
	s.Index = byte(index)

	data, ok := decodeData(fields[4])
	if !ok {
		return Share{}, fmt.Errorf("%w: data", ErrShareFormat)
	}
	s.Data = data
	return s, nil
}

// decodeData decodes the share's base32 data field into a fresh slice the
// caller zeroes. Every intermediate copy is zeroed here: the decoder's
// working copy of the text, and the re-encoding that proves the spelling
// canonical (the decoder tolerates non-zero trailing bits; one spelling per
// share is kept).
func decodeData(field string) ([]byte, bool) {
	enc := shareEncoding()
	// DecodeString decodes in place in its own copy of the text and returns
	// a prefix of it: zeroing up to the capacity zeroes that copy.
	work, err := enc.DecodeString(field)
	defer clear(work[:cap(work)])
	if err != nil || len(work) == 0 {
		return nil, false
	}
	data := make([]byte, len(work))
	copy(data, work)
	again := make([]byte, enc.EncodedLen(len(data)))
	defer clear(again)
	enc.Encode(again, data)
	if !equalText(again, field) {
		clear(data)
		return nil, false
	}
	return data, true
}

// equalText compares b with s without converting either, in time that
// depends only on their lengths.
func equalText(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	var diff byte
	for i := range b {
		diff |= b[i] ^ s[i]
	}
	return diff == 0
}

// String names the share without revealing its data.
func (s Share) String() string {
	return fmt.Sprintf("share(ceremony %x, index %d, %d of %d)", s.CeremonyID[:], s.Index, s.Threshold, s.Total)
}

// GoString is String: %#v must not dump Data either.
func (s Share) GoString() string { return s.String() }

// Format makes every verb (%x, %v, %+v, %#v, …) print String, so no
// formatting path reaches Data.
func (s Share) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// shareEncoding is base32 with a lowercase alphabet and no padding, easy to
// read aloud and free of the characters 0, 1 and 8 that look like letters.
func shareEncoding() *base32.Encoding {
	return base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
}

// castagnoli is the CRC-32C table.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksum is CRC-32C of body, fed through a small stack buffer that is
// zeroed afterwards: converting the whole text to []byte would leave a heap
// copy of the share behind.
func checksum(body string) uint32 {
	var chunk [64]byte
	var sum uint32
	for len(body) > 0 {
		n := copy(chunk[:], body)
		sum = crc32.Update(sum, castagnoli, chunk[:n])
		body = body[n:]
	}
	clear(chunk[:])
	return sum
}

func checksumBytes(body []byte) uint32 { return crc32.Checksum(body, castagnoli) }

// parseDecimal accepts 1–3 ASCII digits without a leading zero, at most limit.
func parseDecimal(s string, limit int) (int, bool) {
	if len(s) == 0 || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.Atoi(s)
	if err != nil || v > limit {
		return 0, false
	}
	return v, true
}

// parseLowerHex decodes exactly size bytes of lowercase hex; uppercase is
// refused so that changing a letter's case is a detected change.
func parseLowerHex(s string, size int) ([]byte, bool) {
	if len(s) != 2*size || strings.ToLower(s) != s {
		return nil, false
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, false
	}
	return b, true
}
