package jsonstrict

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"unicode/utf8"
)

// memberWalk is CheckMembers' position in data.
type memberWalk struct {
	data []byte
	i    int
}

func (w *memberWalk) space() {
	for w.i < len(w.data) {
		switch w.data[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

func (w *memberWalk) peek() byte {
	if w.i < len(w.data) {
		return w.data[w.i]
	}
	return 0
}

// value checks the value at w.i, which fills a t.
func (w *memberWalk) value(t reflect.Type) error {
	w.space()
	switch w.peek() {
	case '{':
		return w.object(shapeOf(t))
	case '[':
		s := shapeOf(t)
		switch s.kind {
		case shapeOpaque:
			return w.skip()
		case shapeList:
			return w.array(s.elem)
		}
		return w.array(nil)
	case '"':
		_, _, err := w.str()
		return err
	case 0:
		return ErrNotJSON
	}
	w.literal()
	return nil
}

func (w *memberWalk) object(s *shape) error {
	if s.kind == shapeOpaque {
		return w.skip()
	}
	w.i++ // {
	if w.space(); w.peek() == '}' {
		w.i++
		return nil
	}
	// Which fields were seen: one word for any struct of at most 64.
	var few [1]uint64
	seen := few[:]
	if len(s.types) > 64 {
		seen = make([]uint64, (len(s.types)+63)/64)
	}
	var keys map[string]bool
	for {
		w.space()
		raw, escaped, err := w.str()
		if err != nil {
			return err
		}
		plain := !escaped && ascii(raw)
		if w.space(); w.peek() != ':' {
			return ErrNotJSON
		}
		w.i++
		var elem reflect.Type
		var name string
		if s.kind == shapeStruct && plain {
			// The usual member: no escapes, so its bytes are its name.
			k, ok := s.fields[string(raw)]
			if !ok {
				return s.unknown(string(raw))
			}
			if seen[k/64]&(1<<(k%64)) != 0 {
				return &MemberError{Name: string(raw), Duplicate: true}
			}
			seen[k/64] |= 1 << (k % 64)
			elem, name = s.types[k], s.names[k]
		} else {
			if name, err = unquote(raw, escaped); err != nil {
				return err
			}
			switch s.kind {
			case shapeStruct:
				k, ok := s.fields[name]
				if !ok {
					return s.unknown(name)
				}
				if seen[k/64]&(1<<(k%64)) != 0 {
					return &MemberError{Name: name, Duplicate: true}
				}
				seen[k/64] |= 1 << (k % 64)
				elem = s.types[k]
			default:
				if keys == nil {
					keys = map[string]bool{}
				}
				if keys[name] {
					return &MemberError{Name: name, Duplicate: true}
				}
				keys[name] = true
				if s.kind == shapeMap {
					elem = s.elem
				} // else free all the way down
			}
		}
		if err := w.value(elem); err != nil {
			return within(err, "."+name)
		}
		w.space()
		switch w.peek() {
		case ',':
			w.i++
		case '}':
			w.i++
			return nil
		default:
			return ErrNotJSON
		}
	}
}

func (w *memberWalk) array(elem reflect.Type) error {
	w.i++ // [
	if w.space(); w.peek() == ']' {
		w.i++
		return nil
	}
	for n := 0; ; n++ {
		if err := w.value(elem); err != nil {
			return within(err, "["+strconv.Itoa(n)+"]")
		}
		w.space()
		switch w.peek() {
		case ',':
			w.i++
		case ']':
			w.i++
			return nil
		default:
			return ErrNotJSON
		}
	}
}

// str reads a string at w.i: its bytes between the quotes, and whether
// they hold an escape.
func (w *memberWalk) str() (raw []byte, escaped bool, err error) {
	if w.peek() != '"' {
		return nil, false, ErrNotJSON
	}
	start := w.i + 1
	end := bytes.IndexByte(w.data[start:], '"')
	if end < 0 {
		return nil, false, ErrNotJSON
	}
	raw = w.data[start : start+end]
	if bytes.IndexByte(raw, '\\') < 0 {
		// No escape before the first quote: it ends the string.
		w.i = start + end + 1
		return raw, false, nil
	}
	for i := start; i < len(w.data); i++ {
		switch w.data[i] {
		case '\\':
			i++
		case '"':
			w.i = i + 1
			return w.data[start:i], true, nil
		}
	}
	return nil, false, ErrNotJSON
}

func ascii(b []byte) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// unquote is a string's value as encoding/json reads it: escapes decoded,
// invalid UTF-8 as U+FFFD.
func unquote(raw []byte, escaped bool) (string, error) {
	if !escaped && ascii(raw) {
		return string(raw), nil
	}
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	var s string
	if err := json.Unmarshal(q, &s); err != nil {
		return "", ErrNotJSON
	}
	return s, nil
}

// literal reads a number, true, false or null.
func (w *memberWalk) literal() {
	for w.i < len(w.data) {
		switch w.data[w.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return
		}
		w.i++
	}
}

// skip reads any one value, unchecked.
func (w *memberWalk) skip() error {
	w.space()
	depth := 0
	for w.i < len(w.data) {
		switch w.data[w.i] {
		case '"':
			if _, _, err := w.str(); err != nil {
				return err
			}
			if depth == 0 {
				return nil
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth--; depth <= 0 {
				w.i++
				return nil
			}
		default:
			if depth == 0 {
				w.literal()
				return nil
			}
		}
		w.i++
	}
	return ErrNotJSON
}
