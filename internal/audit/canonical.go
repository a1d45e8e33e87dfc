package audit

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// appendCanonical writes fields as CanonicalFields defines them: the bytes
// encoding/json gives for the map after each name and value is made valid
// UTF-8 (names sorted byte-wise, strings escaped as encoding/json escapes
// them, HTML characters included). It is written out rather than left to
// encoding/json because every audit entry is built inside the store's single
// write transaction, where reflection over a map cost several microseconds
// per entry; TestCanonicalFieldsMatchesEncodingJSON and its fuzz target hold
// the two to the same bytes.
//
// sensitive's values go through red first (Record.Build: the caller has
// made sure no name is in both maps). Two names that become the same after
// cleaning are an error: encoding/json would keep whichever the map's random
// order put last.
func appendCanonical(b []byte, fields, sensitive map[string]string, red *Redactor) ([]byte, error) {
	if len(fields)+len(sensitive) == 0 {
		return append(b, "{}"...), nil
	}
	type kv struct{ k, v string }
	var buf [16]kv
	pairs := buf[:0]
	for k, v := range fields {
		pairs = append(pairs, kv{valid(k), valid(v)})
	}
	for k, v := range sensitive {
		pairs = append(pairs, kv{valid(k), valid(red.Value(v))})
	}
	slices.SortFunc(pairs, func(a, b kv) int { return strings.Compare(a.k, b.k) })
	size := 2
	for _, p := range pairs {
		size += len(p.k) + len(p.v) + 6 // quotes, colon, comma
	}
	b = slices.Grow(b, size+size/8) // room for a few escapes
	b = append(b, '{')
	for i, p := range pairs {
		if i > 0 {
			if p.k == pairs[i-1].k {
				return nil, fmt.Errorf("audit: two field names are %q once made valid UTF-8", p.k)
			}
			b = append(b, ',')
		}
		b = appendJSONString(b, p.k)
		b = append(b, ':')
		b = appendJSONString(b, p.v)
	}
	return append(b, '}'), nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s, which must be valid UTF-8, exactly as
// encoding/json does with HTML escaping on.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				// Other control characters and <, >, &.
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
