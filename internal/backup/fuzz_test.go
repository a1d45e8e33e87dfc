package backup

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to ReadHeader and Open. It asserts that
// nothing panics, that every failure is one of the package's errors, and
// that whatever Open accepts in full (Next reaching io.EOF) round-trips:
// written again by a Writer, it reads back as the same members. The
// authenticated body is beyond a fuzzer's reach, so the valid seeds are
// what exercise the tar and name checks; mutations exercise the header,
// chunk framing and error paths.
func FuzzOpen(f *testing.F) {
	priv, pub := testKey(f, 1)
	f.Add(smallArchive(f, pub))
	f.Add(build(f, pub,
		member{"manifest.json", []byte(`{"format_version":1}`)},
		member{"keys/a.wrapped", []byte("wrapped")},
		member{"empty", nil}))
	f.Add(sealRaw(f, pub, rawTar(f, true, &tar.Header{Name: "../evil", Size: 1, Mode: 0o600})))
	f.Add([]byte(Magic))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := ReadHeader(bytes.NewReader(data)); err != nil && !isAny(err, knownErrors...) {
			t.Fatalf("ReadHeader: unexpected error %v", err)
		}
		checkRoundTrip(t, priv, pub, data)
	})
}

// FuzzPayload seals arbitrary payloads, so the fuzzer reaches what only an
// authenticated archive exposes: the tar parsing and the member checks. An
// archive like this is what anyone holding the public key can write.
func FuzzPayload(f *testing.F) {
	priv, pub := testKey(f, 1)
	f.Add(rawTar(f, true, &tar.Header{Name: "manifest.json", Size: 3, Mode: 0o600}))
	f.Add(rawTar(f, true, &tar.Header{Name: "a/b", Size: 1, Mode: 0o600}, &tar.Header{Name: "a", Size: 1, Mode: 0o600}))
	f.Add(sparseTar(f))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		checkRoundTrip(t, priv, pub, sealRaw(t, pub, payload))
	})
}

var knownErrors = []error{ErrNotBackup, ErrWrongKey, ErrCorrupt, ErrUnsupportedVersion, ErrInvalidMember}

// checkRoundTrip reads data; if it is accepted in full, the members must
// survive being written again and read back.
func checkRoundTrip(t *testing.T, priv *PrivateKey, pub *PublicKey, data []byte) {
	t.Helper()
	r, got, err := readAll(data, priv)
	if err != nil {
		if !isAny(err, knownErrors...) {
			t.Fatalf("unexpected error %v", err)
		}
		return
	}
	if r.Header().Created.IsZero() {
		return // authentic, but NewWriter refuses a zero time
	}
	var buf bytes.Buffer
	w, err := NewWriter(&buf, pub, r.Header().Created)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range got {
		if err := w.AddBytes(m.Name, m.Data); err != nil {
			t.Fatalf("accepted member %q is not writable: %v", m.Name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r2, again, err := readAll(buf.Bytes(), priv)
	if err != nil {
		t.Fatalf("rewritten archive: %v", err)
	}
	if !equalMembers(got, again) || !r2.Header().Created.Equal(r.Header().Created) {
		t.Fatal("accepted archive does not round-trip")
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("Next after the end: %v", err)
	}
}
