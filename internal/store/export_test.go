package store

import "database/sql"

// WriterForTest is the single writer connection's pool, for tests in
// package store_test that watch what SQLite does on it.
func WriterForTest(s *Store) *sql.DB { return s.w }
