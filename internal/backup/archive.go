package backup

import (
	"archive/tar"
	"bytes"
	"crypto/hpke"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Writer writes an archive: NewWriter, then AddFile or AddBytes once per
// member, then Close. It streams: memory use is one chunk whatever the
// member sizes. It is not safe for concurrent use.
//
// If any call fails after it has begun writing a member, the Writer is
// broken: later calls, including Close, return that error and the final
// chunk is never written, so the output cannot be mistaken for a complete
// archive (a Reader reports it as ErrCorrupt). The caller should delete it.
type Writer struct {
	s       *sealer
	tw      *tar.Writer
	names   nameSet
	modTime time.Time
	err     error
	closed  bool
}

// NewWriter writes the header of an archive encrypted to recipient and
// returns a Writer for its members. created is recorded, to the second, in
// the plaintext header and as each member's modification time. w is not
// closed by the Writer; a caller writing a file should fsync it after Close.
func NewWriter(w io.Writer, recipient *PublicKey, created time.Time) (*Writer, error) {
	if w == nil {
		return nil, errors.New("backup: nil writer")
	}
	if created.IsZero() {
		return nil, errors.New("backup: creation time is required")
	}
	s, err := newSealer(w, recipient, created)
	if err != nil {
		return nil, err
	}
	return &Writer{s: s, tw: tar.NewWriter(s), modTime: time.Unix(created.Unix(), 0).UTC()}, nil
}

// AddBytes adds a member holding b.
func (w *Writer) AddBytes(name string, b []byte) error {
	return w.AddFile(name, bytes.NewReader(b), int64(len(b)))
}

// AddFile adds a member of exactly size bytes read from r. The size is
// needed up front because tar records it before the data. If r yields
// fewer bytes, or more, the Writer is broken: a database file that changed
// length while being archived must not make a backup that looks whole.
// Invalid names (see ValidMemberName), duplicates and sizes beyond the
// package bounds are refused before anything is written, leaving the
// Writer usable.
func (w *Writer) AddFile(name string, r io.Reader, size int64) error {
	if err := w.usable(); err != nil {
		return err
	}
	if r == nil {
		return errors.New("backup: nil reader")
	}
	if err := w.names.add(name, size); err != nil {
		return err
	}
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Size:     size,
		Mode:     0o600,
		ModTime:  w.modTime,
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return w.fail(fmt.Errorf("backup: member %q: %w", name, err))
	}
	n, err := io.CopyN(w.tw, r, size)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("source ended after %d of %d bytes", n, size)
		}
		return w.fail(fmt.Errorf("backup: member %q: %w", name, err))
	}
	var one [1]byte
	switch m, err := io.ReadFull(r, one[:]); {
	case m > 0:
		return w.fail(fmt.Errorf("backup: member %q: source is longer than %d bytes", name, size))
	case !errors.Is(err, io.EOF):
		return w.fail(fmt.Errorf("backup: member %q: %w", name, err))
	}
	return nil
}

// Close ends the tar stream and seals the final chunk. It does not close
// the underlying writer. Calling Close again returns nil.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	if err := w.tw.Close(); err != nil {
		return w.fail(fmt.Errorf("backup: end tar stream: %w", err))
	}
	if err := w.s.Close(); err != nil {
		return w.fail(err)
	}
	w.closed = true
	return nil
}

func (w *Writer) usable() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("backup: writer is closed")
	}
	return nil
}

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return w.err
}

// Entry describes one member as Reader.Next returns it.
type Entry struct {
	Name string
	Size int64
}

// Reader reads an archive's members in order, like archive/tar's Reader:
// Next, then Read until io.EOF, then Next again. Every error is final:
// after one, every call returns it again.
type Reader struct {
	hdr      *Header
	o        *opener
	tr       *tar.Reader
	names    nameSet
	inMember bool
	err      error
}

// Open reads the header of an archive from r, checks that it is encrypted
// to priv's public key (ErrWrongKey if not, before decrypting anything) and
// authenticates the first chunk, so that a damaged header or a wrong file
// is reported here rather than at the first Next.
func Open(r io.Reader, priv *PrivateKey) (*Reader, error) {
	if r == nil {
		return nil, errors.New("backup: nil reader")
	}
	if priv == nil || priv.k == nil {
		return nil, errors.New("backup: no private key")
	}
	h, raw, err := readHeader(r)
	if err != nil {
		return nil, err
	}
	if want := priv.Public().Fingerprint(); h.Recipient != want {
		return nil, fmt.Errorf("%w: archive is for key %s, this key is %s", ErrWrongKey, h.Recipient, want)
	}
	rc, err := hpke.NewRecipient(h.Enc, priv.k, suiteKDF, suiteAEAD, hpkeInfo)
	if err != nil {
		// X25519 rejects an encapsulated key of small order: an
		// edited header, since a real sender never produces one.
		return nil, fmt.Errorf("%w: encapsulated key: %v", ErrCorrupt, err)
	}
	aad := make([]byte, aadSize)
	copy(aad, raw)
	o := &opener{r: r, rc: rc, aad: aad, ct: make([]byte, sealedChunk+1)}
	o.next()
	if o.err != nil {
		return nil, o.err
	}
	return &Reader{hdr: h, o: o, tr: tar.NewReader(o)}, nil
}

// Header returns the archive's header. After Open it is authenticated: the
// first chunk binds every byte of it.
func (r *Reader) Header() Header {
	h := *r.hdr
	h.Enc = bytes.Clone(h.Enc)
	return h
}

// Next advances to the next member. It returns io.EOF only when the tar
// stream has ended exactly at the end of the authenticated final chunk:
// until then, a restorer must not act on what it has extracted.
func (r *Reader) Next() (Entry, error) {
	if r.err != nil {
		return Entry{}, r.err
	}
	r.inMember = false
	h, err := r.tr.Next()
	if errors.Is(err, io.EOF) {
		// The tar trailer is the end of the payload; anything after
		// it is not something the Writer produces.
		var one [1]byte
		n, err := io.ReadFull(r.o, one[:])
		switch {
		case n > 0:
			return Entry{}, r.fail(fmt.Errorf("%w: data after the end of the tar stream", ErrCorrupt))
		case !errors.Is(err, io.EOF):
			return Entry{}, r.fail(err)
		}
		r.err = io.EOF
		return Entry{}, io.EOF
	}
	if err != nil {
		return Entry{}, r.fail(err)
	}
	if h.Typeflag != tar.TypeReg {
		return Entry{}, r.fail(fmt.Errorf("%w: member %q has tar type %q; only regular files are restored", ErrInvalidMember, h.Name, h.Typeflag))
	}
	for k := range h.PAXRecords {
		// Sparse members would let a small archive expand into a
		// large file of zeros on the restorer's disk.
		if strings.HasPrefix(k, "GNU.sparse.") {
			return Entry{}, r.fail(fmt.Errorf("%w: member %q is a sparse file", ErrInvalidMember, h.Name))
		}
	}
	if err := r.names.add(h.Name, h.Size); err != nil {
		return Entry{}, r.fail(err)
	}
	r.inMember = true
	return Entry{Name: h.Name, Size: h.Size}, nil
}

// Read reads the current member's data, returning io.EOF at its end (and
// before the first Next).
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if !r.inMember {
		return 0, io.EOF
	}
	n, err := r.tr.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, r.fail(err)
	}
	return n, err
}

// fail records the first error for good. An error from the chunk stream
// (authentication, truncation, I/O) is reported as it is; any other error
// from archive/tar means the authenticated payload is not a well-formed tar
// stream, which is ErrCorrupt.
func (r *Reader) fail(err error) error {
	switch {
	case r.o.err != nil:
		err = r.o.err
	case errors.Is(err, ErrCorrupt) || errors.Is(err, ErrInvalidMember):
	default:
		err = fmt.Errorf("%w: malformed payload: %v", ErrCorrupt, err)
	}
	r.err = err
	r.inMember = false
	return err
}
