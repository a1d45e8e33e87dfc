// Package jsonstrict decodes JSON as encoding/json does, and refuses what
// encoding/json lets through without a word: an object member whose name
// matches a field only when case is ignored ("KEY_ID", "Key_Id" or
// "\u212aey_id" for key_id), and a member given twice in one object
// (encoding/json keeps the last). With those refused, every reader of the
// same bytes sees the same value: a proxy or policy layer in front of the
// appliance that reads the first "key_id", or only the exact one, is never
// shown another request than the one the appliance acts on.
package jsonstrict

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// ErrTrailingData is Decode's refusal of anything but white space after the
// value. When the decoder failed to read past the value (bad syntax, or an
// error from the reader) its error is wrapped too.
var ErrTrailingData = errors.New("trailing data after the value")

// ErrNotJSON is CheckMembers' answer for bytes that are not one JSON value.
// Decode never returns it: encoding/json has refused such bytes first.
var ErrNotJSON = errors.New("not one JSON value")

// Decode reads one JSON value from r into v, as a json.Decoder with
// DisallowUnknownFields does, reads r to its end, and then refuses:
//
//   - anything but white space after the value: ErrTrailingData;
//   - a member name that is not exactly a field's, or a member repeated in
//     one object, at any depth: a *MemberError (see CheckMembers).
//
// An error from r or from encoding/json is returned as it is, unwrapped,
// so that a caller can tell a body limit or a deadline (errors.As,
// errors.Is) from a malformed value. v is filled even when the member
// check refuses the value: on any error, discard it.
func Decode(r io.Reader, v any) error {
	var body bytes.Buffer
	dec := json.NewDecoder(io.TeeReader(r, &body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	switch _, err := dec.Token(); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return fmt.Errorf("%w: %w", ErrTrailingData, err)
	default:
		return ErrTrailingData
	}
	// The decoder has read the whole of r (up to EOF) and found it one
	// valid JSON value of the right shape; only the names are left.
	return CheckMembers(body.Bytes(), v)
}

// CheckMembers walks the JSON value data as encoding/json fills v (only v's
// type is used: pass what data was, or will be, decoded into), and refuses
// with a *MemberError any object member whose name is not exactly the JSON
// name of a field of the struct being filled, and any name repeated within
// one object. Map keys are free but must not repeat either; so are the
// members of what fills an interface{}. A value whose type unmarshals
// itself (json.RawMessage, a json.Unmarshaler) is left to that type.
//
// data must be JSON that encoding/json has accepted for v's type: the walk
// is then one pass, without allocation on the usual body. Over other bytes
// its answer means nothing (often ErrNotJSON), but it never panics.
func CheckMembers(data []byte, v any) error {
	w := memberWalk{data: data}
	if err := w.value(reflect.TypeOf(v)); err != nil {
		return err
	}
	if w.space(); w.i != len(w.data) {
		return ErrNotJSON
	}
	return nil
}

// A MemberError is an object member CheckMembers refuses.
type MemberError struct {
	// Name is the member's name, escapes decoded.
	Name string
	// Want is the field's name when Name differs from it only in case
	// (as strings.EqualFold sees case), else "".
	Want string
	// Duplicate: Name was given earlier in the same object.
	Duplicate bool

	rpath []string // the members (".name") and elements ("[2]") it is in, innermost first
}

// Path is where the member is: the members and elements holding it, from
// the outermost, then its name, as in "expect.amount" or "[1].key_id".
func (e *MemberError) Path() string {
	var b strings.Builder
	for i := len(e.rpath) - 1; i >= 0; i-- {
		b.WriteString(e.rpath[i])
	}
	return strings.TrimPrefix(b.String()+"."+e.Name, ".")
}

func (e *MemberError) Error() string {
	p := e.Path()
	switch {
	case e.Duplicate:
		return fmt.Sprintf("member %q appears more than once", p)
	case e.Want != "":
		return fmt.Sprintf("unknown member %q (member names are case-sensitive: %q)", p, e.Want)
	}
	return fmt.Sprintf("unknown member %q", p)
}

// within adds the member or element an error was found in to its path.
func within(err error, seg string) error {
	var me *MemberError
	if errors.As(err, &me) {
		me.rpath = append(me.rpath, seg)
	}
	return err
}
