package hsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"unicode"
)

// URI is an RFC 7512 PKCS#11 URI naming a module, a token and where its user
// PIN comes from, e.g.
//
//	pkcs11:token=appliance-dev?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/var/lib/x/pin
//
// smallstep's form, with module-path among the path attributes, is accepted too:
//
//	pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=appliance-dev?pin-source=/var/lib/x/pin
type URI struct {
	ModulePath string // absolute path of the PKCS#11 library
	Token      string // token label (CKA_LABEL of the token, not a slot id)
	PinSource  string // "file:/abs", "file:///abs" or a plain absolute path
	PinValue   string // the PIN itself; discouraged outside tests
}

// maxPINFile bounds how much of a pin-source file is read: a PIN is short, and a
// mistaken path to a large file should fail rather than fill memory.
const maxPINFile = 1024

// ParseURI parses an RFC 7512 PKCS#11 URI. module-path, pin-source and
// pin-value are accepted both as path and as query attributes; values are
// percent-decoded ('+' is a literal plus, as RFC 7512 says). Attributes this
// package would not honour (slot-id, serial, module-name, ...) are rejected
// rather than silently ignored, because ignoring a selector would pick the
// wrong token or library without anyone noticing.
func ParseURI(s string) (*URI, error) {
	const scheme = "pkcs11:"
	if len(s) < len(scheme) || !strings.EqualFold(s[:len(scheme)], scheme) {
		return nil, fmt.Errorf("hsm: URI must start with %q", scheme)
	}
	// A raw control character (a stray newline or tab from a configuration
	// file) is refused rather than carried into a module path or a token
	// label; percent-encoded, it is taken. A raw space is accepted, though
	// RFC 7512 wants %20: labels such as "My Token" are common, and
	// refusing them would stop a configuration that has always worked.
	if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
		return nil, fmt.Errorf("hsm: URI has a control character at byte %d; percent-encode it", i)
	}
	rest := s[len(scheme):]
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	parse := func(part, sep, where string) error {
		if part == "" {
			return nil
		}
		for _, kv := range strings.Split(part, sep) {
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				// Not quoted: "pin-value:1234" would put the PIN in an error.
				return fmt.Errorf("hsm: URI has a %s attribute without '='", where)
			}
			val, err := url.PathUnescape(v)
			if err != nil {
				return fmt.Errorf("hsm: URI attribute %q: bad percent-encoding", k)
			}
			k = strings.ToLower(k)
			if seen[k] {
				return fmt.Errorf("hsm: URI attribute %q given twice", k)
			}
			seen[k] = true
			switch k {
			case "token":
				if where != "path" {
					return fmt.Errorf("hsm: URI attribute token must be a path attribute")
				}
				u.Token = val
			case "module-path":
				u.ModulePath = val
			case "pin-source":
				u.PinSource = val
			case "pin-value":
				u.PinValue = val
			default:
				return fmt.Errorf("hsm: URI attribute %q is not supported", k)
			}
		}
		return nil
	}
	if err := parse(path, ";", "path"); err != nil {
		return nil, err
	}
	if err := parse(query, "&", "query"); err != nil {
		return nil, err
	}
	if err := u.validate(); err != nil {
		return nil, err
	}
	return u, nil
}

func (u *URI) validate() error {
	switch {
	case u.Token == "":
		return errors.New("hsm: URI has no token attribute")
	case len(u.Token) > 32:
		return errors.New("hsm: URI token label is longer than 32 bytes")
	case u.ModulePath == "":
		return errors.New("hsm: URI has no module-path attribute")
	case !filepath.IsAbs(u.ModulePath):
		// A relative path would be resolved by the dynamic loader's search
		// path: that is a library-injection risk for a signing process.
		return errors.New("hsm: URI module-path must be absolute")
	case u.PinSource != "" && u.PinValue != "":
		return errors.New("hsm: URI has both pin-source and pin-value")
	}
	if u.PinSource != "" {
		if _, err := pinSourcePath(u.PinSource); err != nil {
			return err
		}
	}
	return nil
}

// pinSourcePath turns a pin-source into a local absolute file path.
func pinSourcePath(src string) (string, error) {
	p := src
	if strings.HasPrefix(strings.ToLower(src), "file:") {
		fu, err := url.Parse(src)
		if err != nil {
			return "", fmt.Errorf("hsm: pin-source is not a valid file URI")
		}
		if fu.Host != "" && fu.Host != "localhost" {
			return "", fmt.Errorf("hsm: pin-source file URI must be local")
		}
		p = fu.Path
		if p == "" {
			p = fu.Opaque
		}
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("hsm: pin-source must be an absolute path")
	}
	return filepath.Clean(p), nil
}

// String renders the URI in RFC 7512 form. A pin-value is replaced by REDACTED
// so the result is safe to log.
func (u *URI) String() string {
	var b strings.Builder
	b.WriteString("pkcs11:token=")
	b.WriteString(escape(u.Token, false))
	var q []string
	if u.ModulePath != "" {
		q = append(q, "module-path="+escape(u.ModulePath, true))
	}
	if u.PinSource != "" {
		q = append(q, "pin-source="+escape(u.PinSource, true))
	}
	if u.PinValue != "" {
		q = append(q, "pin-value=REDACTED")
	}
	if len(q) > 0 {
		b.WriteString("?")
		b.WriteString(strings.Join(q, "&"))
	}
	return b.String()
}

// escape percent-encodes everything outside RFC 7512's p11-pchar (path) or
// p11-qchar (query) sets.
func escape(s string, query bool) string {
	const always = "-._~:[]@!$'()*+,="
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte(always, c) >= 0 ||
			query && strings.IndexByte("/?|", c) >= 0 ||
			!query && c == '&'
		if ok {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// ReadPIN returns the PIN from pin-value or from the pin-source file, with one
// trailing newline (LF or CRLF) removed. Errors never contain the PIN.
func (u *URI) ReadPIN() ([]byte, error) {
	if u.PinValue != "" {
		return []byte(u.PinValue), nil
	}
	if u.PinSource == "" {
		return nil, ErrNoPIN
	}
	p, err := pinSourcePath(u.PinSource)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("hsm: reading pin-source: %w", err)
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, maxPINFile+1))
	if err != nil {
		return nil, fmt.Errorf("hsm: reading pin-source %s: %w", p, err)
	}
	if len(buf) > maxPINFile {
		clear(buf)
		return nil, fmt.Errorf("hsm: pin-source %s is larger than %d bytes", p, maxPINFile)
	}
	pin := bytes.TrimSuffix(buf, []byte("\n"))
	pin = bytes.TrimSuffix(pin, []byte("\r"))
	if len(pin) == 0 {
		return nil, fmt.Errorf("hsm: pin-source %s: %w", p, ErrNoPIN)
	}
	return pin, nil
}
