// Package jsonstricttest judges strict JSON decoders (jsonstrict.Decode,
// and the decoders built on it) against an oracle that shares no code with
// package jsonstrict: it knows the member names allowed for a type only
// from what encoding/json writes for an example value, and reads the input
// with json.Decoder tokens. It is for tests, fuzz targets above all.
package jsonstricttest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Marks, as string values in an example, of what a strict decoder does not
// check (OpaqueMark: a type that unmarshals itself, such as
// json.RawMessage) or checks for repeated names only (FreeMark: an
// interface{}). In an example, a map has the single key "*", standing for
// any key.
const (
	OpaqueMark = "*opaque"
	FreeMark   = "*free"
)

// A Type is a Go type a strict decoder fills.
type Type struct {
	Name    string
	New     func() any // a fresh pointer to decode into
	Example any        // a value whose JSON names every member allowed, with the marks above
}

// Check is the property of a strict decoder: decode accepts data into each
// of types exactly when encoding/json accepts it (DisallowUnknownFields,
// nothing but white space after the value) and ExactNames finds each member
// name exactly one the type's example names, none twice in one object. The
// error says which type, and how decode disagrees.
func Check(decode func(io.Reader, any) error, data []byte, types ...Type) error {
	for _, typ := range types {
		strictErr := decode(bytes.NewReader(data), typ.New())
		loose := looseDecode(data, typ.New()) == nil
		exact, err := ExactNames(data, typ.Example)
		if err != nil {
			return fmt.Errorf("%s: %w", typ.Name, err)
		}
		if (strictErr == nil) != (loose && exact) {
			return fmt.Errorf("%s %q: decoded with error %v; encoding/json accepts it: %v, names exact and single: %v", typ.Name, data, strictErr, loose, exact)
		}
	}
	return nil
}

// looseDecode is a strict decoder without the member check.
func looseDecode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("trailing data")
	}
	return nil
}

// ExactNames walks data with json.Decoder tokens beside the JSON of example
// (whose objects name the members allowed there) and reports whether every
// object member is one the example names, exactly, and no object repeats a
// name. It answers true for anything that is not JSON: encoding/json
// refuses that anyway. The error is example's, when it does not encode.
func ExactNames(data []byte, example any) (bool, error) {
	raw, err := json.Marshal(example)
	if err != nil {
		return false, fmt.Errorf("example: %w", err)
	}
	var schema any
	if err := json.Unmarshal(raw, &schema); err != nil {
		return false, fmt.Errorf("example: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	ok, err := walkNames(dec, schema)
	return ok || err != nil, nil
}

func walkNames(dec *json.Decoder, schema any) (bool, error) {
	tok, err := dec.Token()
	if err != nil {
		return false, err
	}
	if schema == OpaqueMark {
		return true, skipValue(dec, tok)
	}
	switch tok {
	case json.Delim('{'):
		fields, _ := schema.(map[string]any)
		seen := map[string]bool{}
		good := true
		for dec.More() {
			nt, err := dec.Token()
			if err != nil {
				return false, err
			}
			name := nt.(string)
			if seen[name] {
				good = false
			}
			seen[name] = true
			var sub any = FreeMark
			if schema != FreeMark {
				var known bool
				if sub, known = fields[name]; !known {
					sub, known = fields["*"]
				}
				good = good && known
			}
			ok, err := walkNames(dec, sub)
			if err != nil {
				return false, err
			}
			good = good && ok
		}
		_, err := dec.Token()
		return good, err
	case json.Delim('['):
		var elem any = FreeMark
		if schema != FreeMark {
			elems, _ := schema.([]any)
			elem = nil
			if len(elems) > 0 {
				elem = elems[0]
			}
		}
		good := true
		for dec.More() {
			ok, err := walkNames(dec, elem)
			if err != nil {
				return false, err
			}
			good = good && ok
		}
		_, err := dec.Token()
		return good, err
	}
	return true, nil
}

func skipValue(dec *json.Decoder, tok json.Token) error {
	if tok != json.Delim('{') && tok != json.Delim('[') {
		return nil
	}
	for depth := 1; depth > 0; {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return nil
}
