package backup

import (
	"bytes"
	"crypto/hpke"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Errors callers compare with errors.Is. Returned errors wrap them with
// detail.
var (
	// ErrNotBackup: the input does not start with the archive magic.
	ErrNotBackup = errors.New("backup: not a backup archive")
	// ErrWrongKey: the archive is encrypted to a different recipient key
	// (its header fingerprint is not the key's).
	ErrWrongKey = errors.New("backup: archive is encrypted to a different key")
	// ErrCorrupt: the archive fails authentication, is truncated or has
	// data appended, or its authenticated payload is not a well-formed
	// tar stream.
	ErrCorrupt = errors.New("backup: archive is corrupt or truncated")
	// ErrUnsupportedVersion: a format version or cipher suite this binary
	// does not read.
	ErrUnsupportedVersion = errors.New("backup: unsupported archive version")
	// ErrInvalidMember: an authenticated archive holds a member this
	// package will not hand to a restorer (unsafe name, duplicate, not a
	// regular file, too many or too large). Since anyone holding the
	// public key can write an archive, this is how a malicious one shows.
	ErrInvalidMember = errors.New("backup: invalid archive member")
)

const (
	// Magic opens every archive.
	Magic = "CUSTODY-APPLIANCE-BACKUP"
	// FormatVersion is the archive format this package writes and reads.
	FormatVersion = 1
	// HeaderSize is the length of the plaintext header of a version 1
	// archive.
	HeaderSize = len(Magic) + 2 + 3*2 + 8 + 32 + encSize
	// ChunkSize is the payload carried by every chunk but the last. Small
	// enough that a reader holds little, large enough that the 16-byte tag
	// per chunk is noise.
	ChunkSize = 64 << 10

	encSize     = 32 // X25519 encapsulated key
	tagSize     = 16 // AES-GCM tag
	sealedChunk = ChunkSize + tagSize
	aadSize     = HeaderSize + 8 + 1
)

// hpkeInfo is the HPKE info string: it separates this use of the recipient
// key from any other.
var hpkeInfo = []byte("CUSTODY-APPLIANCE-BACKUP v1 payload")

// Header is the plaintext header of an archive: what can be learned about a
// backup without its key.
type Header struct {
	Version   uint16
	KEM       uint16 // HPKE KEM id, 0x0020
	KDF       uint16 // HPKE KDF id, 0x0001
	AEAD      uint16 // HPKE AEAD id, 0x0002
	Created   time.Time
	Recipient Fingerprint // of the key the archive is encrypted to
	Enc       []byte      // HPKE encapsulated key
}

func (h *Header) marshal() []byte {
	b := make([]byte, 0, HeaderSize)
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint16(b, h.KEM)
	b = binary.BigEndian.AppendUint16(b, h.KDF)
	b = binary.BigEndian.AppendUint16(b, h.AEAD)
	b = binary.BigEndian.AppendUint64(b, uint64(h.Created.Unix()))
	b = append(b, h.Recipient[:]...)
	b = append(b, h.Enc...)
	return b
}

// ReadHeader reads and parses an archive's plaintext header, leaving r at
// the first chunk. It needs no key, and authenticates nothing: the fields
// are as stored, and only Open proves they were not altered.
func ReadHeader(r io.Reader) (*Header, error) {
	h, _, err := readHeader(r)
	return h, err
}

func readHeader(r io.Reader) (*Header, []byte, error) {
	raw := make([]byte, HeaderSize)
	n, err := io.ReadFull(r, raw[:len(Magic)])
	switch {
	case err == nil:
		if string(raw[:len(Magic)]) != Magic {
			return nil, nil, ErrNotBackup
		}
	case n == 0 && errors.Is(err, io.EOF):
		return nil, nil, fmt.Errorf("%w: empty input", ErrNotBackup)
	case errors.Is(err, io.ErrUnexpectedEOF):
		if bytes.HasPrefix([]byte(Magic), raw[:n]) {
			return nil, nil, fmt.Errorf("%w: header truncated after %d bytes", ErrCorrupt, n)
		}
		return nil, nil, ErrNotBackup
	default:
		return nil, nil, fmt.Errorf("backup: read header: %w", err)
	}
	off := len(Magic)
	if err := readFull(r, raw[off:off+2], "header"); err != nil {
		return nil, nil, err
	}
	h := &Header{Version: binary.BigEndian.Uint16(raw[off:])}
	if h.Version != FormatVersion {
		return nil, nil, fmt.Errorf("%w: version %d (this binary reads %d)", ErrUnsupportedVersion, h.Version, FormatVersion)
	}
	off += 2
	if err := readFull(r, raw[off:], "header"); err != nil {
		return nil, nil, err
	}
	h.KEM = binary.BigEndian.Uint16(raw[off:])
	h.KDF = binary.BigEndian.Uint16(raw[off+2:])
	h.AEAD = binary.BigEndian.Uint16(raw[off+4:])
	off += 6
	if h.KEM != kemID || h.KDF != kdfID || h.AEAD != aeadID {
		return nil, nil, fmt.Errorf("%w: HPKE suite %#04x/%#04x/%#04x (this binary reads %#04x/%#04x/%#04x)",
			ErrUnsupportedVersion, h.KEM, h.KDF, h.AEAD, kemID, kdfID, aeadID)
	}
	h.Created = time.Unix(int64(binary.BigEndian.Uint64(raw[off:])), 0).UTC()
	off += 8
	copy(h.Recipient[:], raw[off:])
	off += len(h.Recipient)
	h.Enc = bytes.Clone(raw[off:])
	return h, raw, nil
}

// readFull reads len(b) bytes; running out of input is truncation, so
// ErrCorrupt, while any other failure is the reader's own error.
func readFull(r io.Reader, b []byte, what string) error {
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %s truncated", ErrCorrupt, what)
		}
		return fmt.Errorf("backup: read %s: %w", what, err)
	}
	return nil
}

// chunkAAD returns the additional data for chunk seq: the whole header,
// the sequence number and the final flag. aad must be aadSize long and
// already hold the header.
func chunkAAD(aad []byte, seq uint64, final bool) []byte {
	binary.BigEndian.PutUint64(aad[HeaderSize:], seq)
	aad[HeaderSize+8] = 0
	if final {
		aad[HeaderSize+8] = 1
	}
	return aad
}

// sealer is the write side of the chunk stream: an io.WriteCloser that
// holds back up to one chunk of payload, because whether a full chunk is
// the last one is only known when more data arrives or Close is called.
type sealer struct {
	w      io.Writer
	s      *hpke.Sender
	aad    []byte
	seq    uint64
	buf    []byte
	err    error
	closed bool
}

func newSealer(w io.Writer, recipient *PublicKey, created time.Time) (*sealer, error) {
	if recipient == nil || recipient.k == nil {
		return nil, errors.New("backup: no recipient key")
	}
	enc, s, err := hpke.NewSender(recipient.k, suiteKDF, suiteAEAD, hpkeInfo)
	if err != nil {
		return nil, fmt.Errorf("backup: set up encryption: %w", err)
	}
	h := &Header{
		Version:   FormatVersion,
		KEM:       kemID,
		KDF:       kdfID,
		AEAD:      aeadID,
		Created:   created,
		Recipient: recipient.Fingerprint(),
		Enc:       enc,
	}
	raw := h.marshal()
	if len(raw) != HeaderSize {
		return nil, fmt.Errorf("backup: header is %d bytes, want %d", len(raw), HeaderSize)
	}
	if err := writeAll(w, raw); err != nil {
		return nil, err
	}
	aad := make([]byte, aadSize)
	copy(aad, raw)
	return &sealer{w: w, s: s, aad: aad, buf: make([]byte, 0, ChunkSize)}, nil
}

func (c *sealer) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.closed {
		return 0, errors.New("backup: write after close")
	}
	n := 0
	for len(p) > 0 {
		if len(c.buf) == ChunkSize {
			if err := c.seal(false); err != nil {
				return n, err
			}
		}
		m := copy(c.buf[len(c.buf):ChunkSize], p)
		c.buf = c.buf[:len(c.buf)+m]
		p = p[m:]
		n += m
	}
	return n, nil
}

// Close seals what is buffered as the final chunk. It does not close the
// underlying writer.
func (c *sealer) Close() error {
	if c.err != nil {
		return c.err
	}
	if c.closed {
		return nil
	}
	c.closed = true
	return c.seal(true)
}

func (c *sealer) seal(final bool) error {
	ct, err := c.s.Seal(chunkAAD(c.aad, c.seq, final), c.buf)
	if err == nil {
		err = writeAll(c.w, ct)
	}
	if err != nil {
		c.err = fmt.Errorf("backup: write chunk %d: %w", c.seq, err)
		return c.err
	}
	c.seq++
	c.buf = c.buf[:0]
	return nil
}

func writeAll(w io.Writer, b []byte) error {
	n, err := w.Write(b)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("backup: write: %w", err)
	}
	return nil
}

// opener is the read side: an io.Reader of authenticated payload that
// returns io.EOF only after the final chunk has authenticated. It reads one
// byte past each full chunk to learn whether that chunk is the last.
type opener struct {
	r       io.Reader
	rc      *hpke.Recipient
	aad     []byte
	seq     uint64
	ct      []byte // sealedChunk + 1 lookahead byte
	pending int    // bytes already in ct (the lookahead byte)
	plain   []byte
	final   bool
	err     error
}

func (o *opener) Read(p []byte) (int, error) {
	for len(o.plain) == 0 {
		if o.err != nil {
			return 0, o.err
		}
		if o.final {
			return 0, io.EOF
		}
		o.next()
	}
	n := copy(p, o.plain)
	o.plain = o.plain[n:]
	return n, nil
}

func (o *opener) next() {
	n, err := io.ReadFull(o.r, o.ct[o.pending:])
	total := o.pending + n
	var chunk []byte
	switch {
	case err == nil:
		chunk = o.ct[:sealedChunk]
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		o.final = true
		chunk = o.ct[:total]
	default:
		o.err = fmt.Errorf("backup: read chunk %d: %w", o.seq, err)
		return
	}
	if len(chunk) < tagSize {
		o.err = fmt.Errorf("%w: archive ends inside chunk %d", ErrCorrupt, o.seq)
		return
	}
	pt, err := o.rc.Open(chunkAAD(o.aad, o.seq, o.final), chunk)
	if err != nil {
		o.err = fmt.Errorf("%w: chunk %d does not authenticate (altered, out of place, or the archive was truncated or extended)", ErrCorrupt, o.seq)
		return
	}
	if o.final && len(pt) == 0 && o.seq > 0 {
		// Authentic, but never written: an empty last chunk only ends
		// an empty payload.
		o.err = fmt.Errorf("%w: empty final chunk %d", ErrCorrupt, o.seq)
		return
	}
	o.seq++
	if !o.final {
		o.ct[0] = o.ct[sealedChunk]
		o.pending = 1
	}
	o.plain = pt
}
