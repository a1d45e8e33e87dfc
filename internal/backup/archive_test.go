package backup

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var created = time.Date(2026, 3, 1, 12, 30, 45, 0, time.UTC)

type member struct {
	Name string
	Data []byte
}

func pseudoRandom(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func build(t testing.TB, pub *PublicKey, members ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, pub, created)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if err := w.AddFile(m.Name, bytes.NewReader(m.Data), int64(len(m.Data))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readAll opens an archive and reads every member, returning the first
// error; a nil error means Next reached io.EOF.
func readAll(archive []byte, priv *PrivateKey) (*Reader, []member, error) {
	r, err := Open(bytes.NewReader(archive), priv)
	if err != nil {
		return nil, nil, err
	}
	var out []member
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return r, out, nil
		}
		if err != nil {
			return r, out, err
		}
		data, err := io.ReadAll(r)
		if err != nil {
			return r, out, err
		}
		if int64(len(data)) != e.Size {
			return r, out, fmt.Errorf("member %q: read %d bytes, entry says %d", e.Name, len(data), e.Size)
		}
		out = append(out, member{e.Name, data})
	}
}

func equalMembers(a, b []member) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || !bytes.Equal(a[i].Data, b[i].Data) {
			return false
		}
	}
	return true
}

// smallArchive is one chunk: 104-byte header, then 2048 bytes of tar
// (header, one block of data, trailer) sealed with a 16-byte tag.
func smallArchive(t testing.TB, pub *PublicKey) []byte {
	a := build(t, pub, member{"manifest.json", []byte(`{"hello":"world"}`)})
	if len(a) != HeaderSize+2048+tagSize {
		t.Fatalf("small archive is %d bytes", len(a))
	}
	return a
}

// multiChunk has a payload of about 3.5 chunks.
func multiChunk(t testing.TB, pub *PublicKey) ([]byte, []member) {
	ms := []member{
		{"manifest.json", []byte(`{"format_version":1}`)},
		{"appliance.db", pseudoRandom(ChunkSize*3+ChunkSize/2-3000, 1)},
		{"config.yaml", []byte("listen: 127.0.0.1:8443\n")},
	}
	return build(t, pub, ms...), ms
}

// chunks splits an archive's body into its sealed chunks.
func chunks(archive []byte) (header []byte, cs [][]byte) {
	header, body := archive[:HeaderSize], archive[HeaderSize:]
	for len(body) > sealedChunk {
		cs = append(cs, body[:sealedChunk])
		body = body[sealedChunk:]
	}
	return header, append(cs, body)
}

func join(header []byte, cs ...[]byte) []byte {
	out := bytes.Clone(header)
	for _, c := range cs {
		out = append(out, c...)
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	priv, pub := testKey(t, 1)
	ms := []member{
		{"manifest.json", []byte(`{"format_version":1}`)},
		{"db/appliance.db", pseudoRandom(300<<10, 2)}, // five chunks
		{"empty", nil},
		{strings.Repeat("n", MaxNameLen), []byte("a name too long for ustar")},
		{"config.yaml", []byte("listen: 127.0.0.1:8443\n")},
	}
	archive := build(t, pub, ms...)
	r, got, err := readAll(archive, priv)
	if err != nil {
		t.Fatal(err)
	}
	if !equalMembers(got, ms) {
		t.Fatal("members differ after a round trip")
	}
	h := r.Header()
	if h.Version != FormatVersion || h.KEM != kemID || h.KDF != kdfID || h.AEAD != aeadID ||
		!h.Created.Equal(created) || h.Recipient != pub.Fingerprint() || len(h.Enc) != encSize {
		t.Fatalf("header %+v", h)
	}
	// Next after the end keeps saying io.EOF.
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("Next after the end: %v", err)
	}

	ph, err := ReadHeader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	if !ph.Created.Equal(created) || ph.Recipient != pub.Fingerprint() || !bytes.Equal(ph.Enc, h.Enc) {
		t.Fatalf("ReadHeader %+v, Open's header %+v", ph, h)
	}

	// Two archives of the same content share nothing but the header
	// prefix: the ephemeral key is fresh each time.
	again := build(t, pub, ms...)
	if bytes.Equal(archive[HeaderSize-encSize:HeaderSize+64], again[HeaderSize-encSize:HeaderSize+64]) {
		t.Fatal("two archives have the same encapsulated key and first ciphertext")
	}
}

func TestCreatedIsStoredToTheSecond(t *testing.T) {
	priv, pub := testKey(t, 1)
	var buf bytes.Buffer
	w, err := NewWriter(&buf, pub, created.Add(999*time.Millisecond).In(time.FixedZone("X", 3600)))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, got, err := readAll(buf.Bytes(), priv)
	if err != nil || len(got) != 0 {
		t.Fatalf("empty archive: %v, %d members", err, len(got))
	}
	if h := r.Header(); !h.Created.Equal(created) || h.Created.Location() != time.UTC {
		t.Fatalf("Created = %v, want %v", h.Created, created)
	}
	if _, err := NewWriter(&buf, pub, time.Time{}); err == nil {
		t.Fatal("NewWriter with a zero creation time succeeded")
	}
}

// A payload that is an exact multiple of ChunkSize ends in a full final
// chunk: the reader must tell it from a full non-final one by the end of
// the file alone.
func TestChunkAlignedPayload(t *testing.T) {
	priv, pub := testKey(t, 1)
	const tarOverhead = 512 + 1024 // member header + trailer
	for _, n := range []int{1, 2, 3} {
		ms := []member{{"x", pseudoRandom(n*ChunkSize-tarOverhead, uint64(n))}}
		archive := build(t, pub, ms...)
		if want := HeaderSize + n*sealedChunk; len(archive) != want {
			t.Fatalf("%d chunks: archive is %d bytes, want %d", n, len(archive), want)
		}
		if _, got, err := readAll(archive, priv); err != nil || !equalMembers(got, ms) {
			t.Fatalf("%d chunks: %v", n, err)
		}
		_, cs := chunks(archive)
		if n > 1 {
			// Without its final chunk, the archive ends on a full
			// chunk sealed as not final.
			if _, _, err := readAll(join(archive[:HeaderSize], cs[:n-1]...), priv); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%d chunks, last dropped: %v, want ErrCorrupt", n, err)
			}
		}
	}
}

func TestWrongKey(t *testing.T) {
	_, pub := testKey(t, 1)
	other, _ := testKey(t, 2)
	_, _, err := readAll(smallArchive(t, pub), other)
	if !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Open with another key: %v, want ErrWrongKey", err)
	}
}

// A change to any one byte, in the header or the body, is an error. Most
// are ErrCorrupt; a changed fingerprint is ErrWrongKey, a changed magic
// ErrNotBackup, a changed version or suite ErrUnsupportedVersion.
func TestEveryByteFlipIsDetected(t *testing.T) {
	priv, pub := testKey(t, 1)
	archive := smallArchive(t, pub)
	for i := range archive {
		masks := []byte{0x01}
		if i < HeaderSize {
			masks = append(masks, 0x80, 0xff) // header fields are parsed, so try more
		}
		for _, mask := range masks {
			mod := bytes.Clone(archive)
			mod[i] ^= mask
			_, _, err := readAll(mod, priv)
			if err == nil {
				t.Fatalf("byte %d ^ %#x: archive accepted", i, mask)
			}
			wantAny := []error{ErrCorrupt, ErrWrongKey, ErrNotBackup, ErrUnsupportedVersion}
			if !isAny(err, wantAny...) {
				t.Fatalf("byte %d ^ %#x: unexpected error %v", i, mask, err)
			}
			if i >= HeaderSize && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("body byte %d ^ %#x: %v, want ErrCorrupt", i, mask, err)
			}
		}
	}
}

func isAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// A sample of flips in a multi-chunk archive, in each chunk, including
// its tag.
func TestByteFlipsAcrossChunks(t *testing.T) {
	priv, pub := testKey(t, 1)
	archive, _ := multiChunk(t, pub)
	for i := HeaderSize; i < len(archive); i += 4099 {
		for _, j := range []int{i, min(i+sealedChunk-1, len(archive)-1)} {
			mod := bytes.Clone(archive)
			mod[j] ^= 0x40
			if _, _, err := readAll(mod, priv); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("byte %d: %v, want ErrCorrupt", j, err)
			}
		}
	}
}

func TestTruncation(t *testing.T) {
	priv, pub := testKey(t, 1)
	archive, _ := multiChunk(t, pub)
	cuts := map[int]bool{}
	for n := 0; n <= HeaderSize+1; n++ {
		cuts[n] = true
	}
	for b := HeaderSize; b < len(archive); b += sealedChunk {
		for _, d := range []int{0, 1, tagSize - 1, tagSize, tagSize + 1, sealedChunk / 2, sealedChunk - 1} {
			if b+d < len(archive) {
				cuts[b+d] = true
			}
		}
	}
	cuts[len(archive)-1] = true
	for n := range cuts {
		_, _, err := readAll(archive[:n], priv)
		want := ErrCorrupt
		if n == 0 {
			want = ErrNotBackup
		}
		if !errors.Is(err, want) {
			t.Errorf("truncated to %d of %d bytes: %v, want %v", n, len(archive), err, want)
		}
	}
}

func TestChunkSurgery(t *testing.T) {
	priv, pub := testKey(t, 1)
	archive, _ := multiChunk(t, pub)
	hdr, cs := chunks(archive)
	if len(cs) != 4 {
		t.Fatalf("multiChunk has %d chunks, want 4", len(cs))
	}
	otherArchive, _ := multiChunk(t, pub) // same key, same content, new ephemeral key
	otherHdr, otherCs := chunks(otherArchive)

	cases := map[string][]byte{
		"drop first":              join(hdr, cs[1:]...),
		"drop middle":             join(hdr, cs[0], cs[2], cs[3]),
		"drop last":               join(hdr, cs[:3]...),
		"duplicate first":         join(hdr, cs[0], cs[0], cs[1], cs[2], cs[3]),
		"duplicate middle":        join(hdr, cs[0], cs[1], cs[1], cs[2], cs[3]),
		"duplicate last":          join(hdr, cs[0], cs[1], cs[2], cs[3], cs[3]),
		"swap 0,1":                join(hdr, cs[1], cs[0], cs[2], cs[3]),
		"swap 1,2":                join(hdr, cs[0], cs[2], cs[1], cs[3]),
		"move last forward":       join(hdr, cs[0], cs[1], cs[3], cs[2]),
		"append a byte":           append(bytes.Clone(archive), 0),
		"append a full chunk":     join(hdr, cs[0], cs[1], cs[2], cs[3], cs[2]),
		"chunk from another":      join(hdr, cs[0], otherCs[1], cs[2], cs[3]),
		"header from another":     join(otherHdr, cs...),
		"headers swapped enc":     join(append(bytes.Clone(hdr[:HeaderSize-encSize]), otherHdr[HeaderSize-encSize:]...), cs...),
		"only the header":         bytes.Clone(hdr),
		"two archives end to end": append(bytes.Clone(archive), otherArchive...),
	}
	for name, mod := range cases {
		if _, _, err := readAll(mod, priv); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

func TestHeaderErrors(t *testing.T) {
	priv, pub := testKey(t, 1)
	archive := smallArchive(t, pub)
	edit := func(off int, b ...byte) []byte {
		mod := bytes.Clone(archive)
		copy(mod[off:], b)
		return mod
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrNotBackup},
		{"text", []byte("hello, this is not a backup archive at all\n"), ErrNotBackup},
		{"short non-magic", []byte("CUSTARD"), ErrNotBackup},
		{"magic prefix only", []byte(Magic[:10]), ErrCorrupt},
		{"magic only", []byte(Magic), ErrCorrupt},
		{"lower-case magic", edit(0, []byte(strings.ToLower(Magic))...), ErrNotBackup},
		{"version 0", edit(len(Magic), 0, 0), ErrUnsupportedVersion},
		{"version 2", edit(len(Magic), 0, 2), ErrUnsupportedVersion},
		{"kem P-256", edit(len(Magic)+2, 0x00, 0x10), ErrUnsupportedVersion},
		{"kdf sha512", edit(len(Magic)+4, 0x00, 0x03), ErrUnsupportedVersion},
		{"aead chacha", edit(len(Magic)+6, 0x00, 0x03), ErrUnsupportedVersion},
		{"aead aes128", edit(len(Magic)+6, 0x00, 0x01), ErrUnsupportedVersion},
		{"created", edit(len(Magic)+8, 0x7f), ErrCorrupt},
		{"fingerprint", edit(len(Magic)+16, 0xff), ErrWrongKey},
		{"enc zero (small order)", edit(HeaderSize-encSize, make([]byte, encSize)...), ErrCorrupt},
	}
	for _, c := range cases {
		_, err := ReadHeader(bytes.NewReader(c.in))
		_, _, oerr := readAll(c.in, priv)
		if !errors.Is(oerr, c.want) {
			t.Errorf("%s: Open: %v, want %v", c.name, oerr, c.want)
		}
		// ReadHeader checks only the plaintext: it has no key.
		if c.want != ErrCorrupt && c.want != ErrWrongKey && !errors.Is(err, c.want) {
			t.Errorf("%s: ReadHeader: %v, want %v", c.name, err, c.want)
		}
	}
}

// sealRaw encrypts an arbitrary payload as an archive, authenticated but
// not checked: what anyone holding the public key could produce.
func sealRaw(t testing.TB, pub *PublicKey, payload []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	s, err := newSealer(&buf, pub, created)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rawTar builds a tar stream with no checks. Each entry gets a tar.Writer of
// its own, so a header may claim more data than follows (members larger
// than 1 MiB get none). close appends the two-block trailer.
func rawTar(t testing.TB, close bool, entries ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	for _, h := range entries {
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("%q: %v", h.Name, err)
		}
		if h.Typeflag == tar.TypeReg && h.Size <= 1<<20 {
			if _, err := tw.Write(bytes.Repeat([]byte{'x'}, int(h.Size))); err != nil {
				t.Fatal(err)
			}
			if err := tw.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if close {
		buf.Write(make([]byte, 1024))
	}
	return buf.Bytes()
}

// sparseTar is a GNU sparse (PAX 0.1) member of 1 MiB logical size holding
// five physical bytes, built by hand because archive/tar will not write one.
func sparseTar(t testing.TB) []byte {
	t.Helper()
	var records []byte
	for _, kv := range [][2]string{
		{"GNU.sparse.major", "0"}, {"GNU.sparse.minor", "1"},
		{"GNU.sparse.name", "sparse"}, {"GNU.sparse.size", "1048576"},
		{"GNU.sparse.numblocks", "1"}, {"GNU.sparse.map", "0,5"},
	} {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + 1 // the record's length counts its own digits
		for len(fmt.Sprint(n))+len(rec) != n {
			n = len(fmt.Sprint(n)) + len(rec)
		}
		records = append(records, fmt.Sprint(n)+rec...)
	}
	pax := rawTar(t, false, &tar.Header{Name: "PaxHeaders/sparse", Size: int64(len(records)), Mode: 0o600, Format: tar.FormatUSTAR})
	copy(pax[512:], records)
	pax[156] = tar.TypeXHeader
	fixChecksum(pax[:512])
	file := rawTar(t, true, &tar.Header{Name: "sparse", Size: 5, Mode: 0o600, Format: tar.FormatUSTAR})
	out := append(pax, file...)

	// Check that archive/tar does read it as sparse: the case must test
	// the package's refusal, not a malformed header.
	tr := tar.NewReader(bytes.NewReader(out))
	h, err := tr.Next()
	if err != nil || h.Size != 1<<20 || h.PAXRecords["GNU.sparse.map"] == "" {
		t.Fatalf("hand-made sparse member reads as %+v, %v", h, err)
	}
	return out
}

// fixChecksum recomputes a tar header block's checksum after it was edited.
func fixChecksum(block []byte) {
	copy(block[148:156], "        ")
	sum := 0
	for _, c := range block[:512] {
		sum += int(c)
	}
	copy(block[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// tarWithName is a one-byte member called name. Names archive/tar refuses
// to write are patched into a USTAR header by hand, as a hostile writer
// would; ok is false if the tar format cannot carry the name at all (a NUL
// ends it), so there is nothing to test at the archive level.
func tarWithName(t testing.TB, name string) (b []byte, ok bool) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Size: 1, Mode: 0o600, Typeflag: tar.TypeReg}); err == nil {
		if _, err := tw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := tw.Flush(); err != nil {
			t.Fatal(err)
		}
		b = buf.Bytes()
	} else {
		if len(name) > 100 {
			t.Fatalf("%q: %v", name, err)
		}
		b = rawTar(t, false, &tar.Header{Name: strings.Repeat("p", max(len(name), 1)), Size: 1, Mode: 0o600, Format: tar.FormatUSTAR})
		clear(b[:100])
		copy(b, name)
		fixChecksum(b[:512])
	}
	h, err := tar.NewReader(bytes.NewReader(b)).Next()
	return b, err == nil && h.Name == name
}

var unsafeNames = []string{
	"../evil", "/etc/passwd", "a/../../b", "a/../b", "..", ".", "./a", "a/.", "a/",
	"a//b", `a\b`, `..\..\evil`, "a\x00b", "a\nb", "\x7f", "\xff\xfe", "",
	strings.Repeat("n", MaxNameLen+1),
}

func TestMaliciousMembersRefused(t *testing.T) {
	priv, pub := testKey(t, 1)
	f := func(name string, size int64) *tar.Header { return &tar.Header{Name: name, Size: size, Mode: 0o600} }

	cases := map[string][]byte{}
	for _, n := range unsafeNames {
		b, ok := tarWithName(t, n)
		if !ok {
			t.Logf("name %q cannot be carried by tar; ValidMemberName covers it", n)
			continue
		}
		cases[fmt.Sprintf("name %q", n)] = append(append(rawTar(t, false, f("ok", 1)), b...), make([]byte, 1024)...)
	}
	cases["duplicate"] = rawTar(t, true, f("a", 1), f("b", 1), f("a", 2))
	cases["file then dir"] = rawTar(t, true, f("a", 1), f("a/b", 1))
	cases["dir then file"] = rawTar(t, true, f("a/b", 1), f("a", 1))
	cases["symlink"] = rawTar(t, true, &tar.Header{Name: "db", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"})
	cases["hard link"] = rawTar(t, true, f("a", 1), &tar.Header{Name: "b", Typeflag: tar.TypeLink, Linkname: "a"})
	cases["directory"] = rawTar(t, true, &tar.Header{Name: "d", Typeflag: tar.TypeDir, Mode: 0o700})
	cases["fifo"] = rawTar(t, true, &tar.Header{Name: "p", Typeflag: tar.TypeFifo})
	cases["huge member"] = rawTar(t, false, f("db", MaxMemberSize+1))
	cases["sparse"] = sparseTar(t)
	many := make([]*tar.Header, MaxMembers+1)
	for i := range many {
		many[i] = f(fmt.Sprintf("m%d", i), 0)
	}
	cases["too many"] = rawTar(t, true, many...)

	for name, payload := range cases {
		_, got, err := readAll(sealRaw(t, pub, payload), priv)
		if !errors.Is(err, ErrInvalidMember) {
			t.Errorf("%s: %v, want ErrInvalidMember (after %d members)", name, err, len(got))
		}
	}

	// Malformed tar, authenticated: ErrCorrupt.
	badSum := rawTar(t, true, f("x", 1))
	badSum[0] = 'y' // the checksum no longer matches
	for name, payload := range map[string][]byte{
		"broken tar header":   badSum,
		"member data missing": rawTar(t, false, f("a", 600)),
		"data after trailer":  append(rawTar(t, true, f("a", 1)), make([]byte, 512)...),
		"garbage payload":     []byte("not a tar stream"),
	} {
		if name == "member data missing" {
			payload = payload[:512+100]
		}
		if _, _, err := readAll(sealRaw(t, pub, payload), priv); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

func TestWriterRefusesUnsafeMembers(t *testing.T) {
	priv, pub := testKey(t, 1)
	var buf bytes.Buffer
	w, err := NewWriter(&buf, pub, created)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range unsafeNames {
		if err := w.AddBytes(n, []byte("x")); !errors.Is(err, ErrInvalidMember) {
			t.Errorf("AddBytes(%q): %v, want ErrInvalidMember", n, err)
		}
	}
	if err := w.AddBytes("a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "a/b"} {
		if err := w.AddBytes(n, []byte("2")); !errors.Is(err, ErrInvalidMember) {
			t.Errorf("AddBytes(%q) after \"a\": %v, want ErrInvalidMember", n, err)
		}
	}
	if err := w.AddFile("big", strings.NewReader(""), MaxMemberSize+1); !errors.Is(err, ErrInvalidMember) {
		t.Errorf("oversized AddFile: %v", err)
	}
	if err := w.AddFile("neg", strings.NewReader(""), -1); !errors.Is(err, ErrInvalidMember) {
		t.Errorf("negative AddFile: %v", err)
	}
	// Refusals before writing leave the writer usable.
	if err := w.AddBytes("b", []byte("3")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := w.AddBytes("c", nil); err == nil {
		t.Fatal("AddBytes after Close succeeded")
	}
	_, got, err := readAll(buf.Bytes(), priv)
	if err != nil || !equalMembers(got, []member{{"a", []byte("1")}, {"b", []byte("3")}}) {
		t.Fatalf("read back: %v, %q", err, got)
	}
}

// A source that is not the size it was declared to be breaks the writer,
// and what was written does not read as a complete archive.
func TestWriterBrokenBySizeMismatch(t *testing.T) {
	priv, pub := testKey(t, 1)
	for name, src := range map[string]struct {
		data []byte
		size int64
	}{
		"short": {pseudoRandom(ChunkSize+10, 3), ChunkSize + 11},
		"long":  {pseudoRandom(ChunkSize+10, 3), ChunkSize + 9},
	} {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, pub, created)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.AddBytes("first", []byte("ok")); err != nil {
			t.Fatal(err)
		}
		if err := w.AddFile("db", bytes.NewReader(src.data), src.size); err == nil {
			t.Fatalf("%s: AddFile succeeded", name)
		}
		if err := w.AddBytes("later", []byte("x")); err == nil {
			t.Fatalf("%s: AddBytes on a broken writer succeeded", name)
		}
		if err := w.Close(); err == nil {
			t.Fatalf("%s: Close on a broken writer succeeded", name)
		}
		if _, _, err := readAll(buf.Bytes(), priv); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: output of a broken writer: %v, want ErrCorrupt", name, err)
		}
	}
}

type failingWriter struct{ n int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n < len(p) {
		return 0, errors.New("disk full")
	}
	f.n -= len(p)
	return len(p), nil
}

func TestWriterReportsWriteErrors(t *testing.T) {
	_, pub := testKey(t, 1)
	if _, err := NewWriter(&failingWriter{n: 10}, pub, created); err == nil {
		t.Fatal("NewWriter on a failing writer succeeded")
	}
	w, err := NewWriter(&failingWriter{n: HeaderSize + sealedChunk}, pub, created)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AddBytes("db", pseudoRandom(3*ChunkSize, 4)); err == nil {
		t.Fatal("AddBytes past the writer's capacity succeeded")
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close after a write error succeeded")
	}
}

// Read before Next, and after a member is consumed, is io.EOF; skipping a
// member without reading it is allowed.
func TestReaderSkipsAndEOF(t *testing.T) {
	priv, pub := testKey(t, 1)
	archive, ms := multiChunk(t, pub)
	r, err := Open(bytes.NewReader(archive), priv)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("Read before Next: %d, %v", n, err)
	}
	var names []string
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, e.Name)
	}
	if len(names) != len(ms) {
		t.Fatalf("skipping: got %q", names)
	}
}

// The total bound needs tens of gigabytes to reach through an archive; it
// is checked on the set directly.
func TestNameSetBounds(t *testing.T) {
	var s nameSet
	if err := s.add("a", MaxMemberSize); err != nil {
		t.Fatal(err)
	}
	if err := s.add("b", MaxMemberSize); err != nil {
		t.Fatal(err)
	}
	if err := s.add("c", 1); !errors.Is(err, ErrInvalidMember) {
		t.Fatalf("past MaxTotalSize: %v", err)
	}
	if err := s.add("d", 0); err != nil {
		t.Fatalf("an empty member at the bound: %v", err)
	}
	for _, ok := range []string{"manifest.json", "db/appliance.db", "keys/eth-dev.wrapped", "a.b-c_d", "ünïcode"} {
		if err := ValidMemberName(ok); err != nil {
			t.Errorf("ValidMemberName(%q): %v", ok, err)
		}
	}
}
