package backup

import (
	"fmt"
	"io/fs"
	"strings"
	"unicode/utf8"
)

// Bounds a Reader enforces on an archive and a Writer on what it is given,
// so that a malicious archive cannot make a restorer create unbounded files
// or exhaust its disk. They are far above what an appliance backup holds (a
// manifest, a database of tens of megabytes, a configuration file and one
// wrapped blob per key).
const (
	// MaxMembers bounds the number of members.
	MaxMembers = 4096
	// MaxMemberSize bounds one member's size.
	MaxMemberSize int64 = 16 << 30
	// MaxTotalSize bounds the sum of member sizes.
	MaxTotalSize int64 = 32 << 30
	// MaxNameLen bounds a member name, in bytes.
	MaxNameLen = 255
)

// ValidMemberName reports why name is not acceptable as a member name, or
// nil. A name is a relative, slash-separated path in the sense of
// io/fs.ValidPath (no "." or ".." elements, no leading or trailing or
// doubled slash), of valid UTF-8 without control characters or
// backslashes, at most MaxNameLen bytes. That is what lets a restorer join
// it under its own directory (ideally through os.Root) without leaving it.
func ValidMemberName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty member name", ErrInvalidMember)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: member name of %d bytes (at most %d)", ErrInvalidMember, len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: member name %q is not UTF-8", ErrInvalidMember, name)
	case strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }):
		return fmt.Errorf("%w: member name %q has a control character or backslash", ErrInvalidMember, name)
	case name == "." || !fs.ValidPath(name):
		return fmt.Errorf("%w: member name %q is not a clean relative path", ErrInvalidMember, name)
	}
	return nil
}

// nameSet tracks the members of one archive: no name twice, and no name
// that is both a file and a directory of another member ("a" and "a/b"),
// which a restorer could not create and which could otherwise be used to
// make it write through something it has just created.
type nameSet struct {
	files map[string]struct{}
	dirs  map[string]struct{}
	total int64
}

func (s *nameSet) add(name string, size int64) error {
	if err := ValidMemberName(name); err != nil {
		return err
	}
	if size < 0 || size > MaxMemberSize {
		return fmt.Errorf("%w: member %q is %d bytes (at most %d)", ErrInvalidMember, name, size, MaxMemberSize)
	}
	if len(s.files) >= MaxMembers {
		return fmt.Errorf("%w: more than %d members", ErrInvalidMember, MaxMembers)
	}
	if s.total+size > MaxTotalSize {
		return fmt.Errorf("%w: members exceed %d bytes in total", ErrInvalidMember, MaxTotalSize)
	}
	if s.files == nil {
		s.files = make(map[string]struct{})
		s.dirs = make(map[string]struct{})
	}
	if _, dup := s.files[name]; dup {
		return fmt.Errorf("%w: duplicate member %q", ErrInvalidMember, name)
	}
	if _, isDir := s.dirs[name]; isDir {
		return fmt.Errorf("%w: member %q is also a directory of another member", ErrInvalidMember, name)
	}
	var parents []string
	for i := range len(name) {
		if name[i] == '/' {
			dir := name[:i]
			if _, isFile := s.files[dir]; isFile {
				return fmt.Errorf("%w: member %q is inside member %q", ErrInvalidMember, name, dir)
			}
			parents = append(parents, dir)
		}
	}
	s.files[name] = struct{}{}
	for _, d := range parents {
		s.dirs[d] = struct{}{}
	}
	s.total += size
	return nil
}
