package hsm

import "context"

// CheckKeySearching is the check with one search per object, as CheckKey
// did before the one-pass index: the reference the faster checks are
// tested against.
func (m *Module) CheckKeySearching(ctx context.Context, ref KeyRef, pinned []byte) error {
	return m.do(ctx, "check key", func(s *session) error { return m.checkKeySearching(s, ref, pinned) })
}

// SetDirectAttrReads switches the one-call attribute reads (attrReader) on
// or off, and returns a func that restores the previous setting.
func SetDirectAttrReads(on bool) func() {
	old := directAttrReads
	directAttrReads = on
	return func() { directAttrReads = old }
}
