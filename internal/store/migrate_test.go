package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/big"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// atSchema builds a database at schema version v, the way a binary of that
// release left it, with data in the tables that version had: a key, a
// signed request, (from version 2) an event and (from version 4) policy
// window usage, oldUsage().
func atSchema(t *testing.T, path string, v int) {
	t.Helper()
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", path+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("schema %d: %s: %v", v, q, err)
		}
	}
	exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT`)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:v] {
		if _, err := tx.Exec(m.sql); err != nil {
			t.Fatalf("migration %s: %v", m.name, err)
		}
		if step := goSteps[m.version]; step != nil {
			if err := step(context.Background(), tx); err != nil {
				t.Fatalf("migration %s: %v", m.name, err)
			}
		}
		if _, err := tx.Exec(`INSERT INTO schema_migrations VALUES (?, ?, 1)`, m.version, m.name); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	exec(`INSERT INTO keys (id, label, cka_id, algorithm, chain, network, public_key, address, created_at)
		VALUES ('eth-old', 'eth-old', x'0102', 'secp256k1', 'ethereum', '1337', x'04aa', '0xabc', 1)`)
	exec(`INSERT INTO requests (id, principal, idempotency_key, key_id, chain, network, payload, payload_hash, intent, digest,
		state, signed_tx, tx_hash, error_code, error_message, created_at, updated_at)
		VALUES ('req_old', 'svc', 'idem-old', 'eth-old', 'ethereum', '1337', x'02', x'03', x'7b7d', x'04', 'signed', x'05', '0xfeed', '', '', 1, 2)`)
	if v >= 2 {
		if v < 7 {
			exec(`INSERT INTO events (at, kind, principal, detail) VALUES (5, 'freeze', 'officer1', 'before v7')`)
		} else {
			// From 7 on entries are chained; the old binary appended them through Go.
			s := &Store{w: db, r: db, log: zap.NewNop()}
			if err := s.RecordEvent(context.Background(), "freeze", "officer1", "at v"+fmt.Sprint(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	switch {
	case v >= 9:
		// Running totals per (key_id, asset), rows in at order, as the
		// policy appends them.
		rows := oldUsage()
		sort.SliceStable(rows, func(i, j int) bool {
			a, b := rows[i], rows[j]
			if a.key != b.key || a.asset != b.asset {
				return a.key+"/"+a.asset < b.key+"/"+b.asset
			}
			return a.at < b.at
		})
		cum := map[string]*big.Int{}
		for _, u := range rows {
			c := cum[u.key+"/"+u.asset]
			if c == nil {
				c = new(big.Int)
				cum[u.key+"/"+u.asset] = c
			}
			c.Add(c, u.amount)
			exec(`INSERT INTO policy_usage (request_id, key_id, asset, amount, at, cum) VALUES (?, ?, ?, ?, ?, ?)`,
				u.req, u.key, u.asset, u.amount.String(), u.at, c.String())
		}
	case v >= 4:
		for _, u := range oldUsage() {
			exec(`INSERT INTO policy_usage (request_id, key_id, asset, amount, at) VALUES (?, ?, ?, ?, ?)`,
				u.req, u.key, u.asset, u.amount.String(), u.at)
		}
	}
}

// usageRow is one policy_usage row as schema 4..8 held it.
type usageRow struct {
	req, key, asset string
	amount          *big.Int
	at              int64
}

// oldUsage is the policy window usage atSchema leaves: two keys, two
// assets, amounts up to 2^256, rows sharing an at, and a clock that stepped
// back (insertion order is not at order).
func oldUsage() []usageRow {
	var rows []usageRow
	at := int64(1_900_000_000_000_000_000) // 2030, in unix nanoseconds
	for i := range 600 {
		switch {
		case i%97 == 13:
			at -= 40 * 60e9 // back 40 minutes
		case i%5 == 0: // the same instant as the previous row
		default:
			at += int64(i%7+1) * 17e9
		}
		amount := new(big.Int).Lsh(big.NewInt(int64(i%13+1)), uint(i*37%250))
		if i%50 == 0 {
			amount.Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(int64(i)))
		}
		rows = append(rows, usageRow{req: fmt.Sprintf("req-%04d", i), key: []string{"eth-old", "eth-two"}[i%2],
			asset: []string{"eth", "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"}[i/2%2], amount: amount, at: at})
	}
	return rows
}

// checkMigratedUsage: the usage rows are all there, per (key_id, asset) in
// at order with consistent running totals, and every window sum read the
// way the policy reads it (the newest row's running total minus that of the
// newest row at or before now-d, two index seeks) equals the schema-8 sum
// of the rows with at > now-d.
func checkMigratedUsage(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	want := oldUsage()
	var n, old int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM policy_usage`).Scan(&n); err != nil || n != len(want) {
		t.Fatalf("%d usage rows after migrating (%v); want %d", n, err, len(want))
	}
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE name = 'policy_usage_v8'`).Scan(&old); err != nil || old != 0 {
		t.Fatalf("the schema-8 usage table is still there (%v)", err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT key_id, asset, amount, at, cum FROM policy_usage ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	type last struct {
		at  int64
		cum *big.Int
	}
	groups := map[string]last{}
	for rows.Next() {
		var key, asset, amount, cum string
		var at int64
		if err := rows.Scan(&key, &asset, &amount, &at, &cum); err != nil {
			t.Fatal(err)
		}
		a, _ := new(big.Int).SetString(amount, 10)
		c, ok := new(big.Int).SetString(cum, 10)
		prev, seen := groups[key+"/"+asset]
		if !seen {
			prev.cum = new(big.Int)
		}
		if !ok || a == nil || new(big.Int).Add(prev.cum, a).Cmp(c) != 0 || (seen && at < prev.at) {
			t.Fatalf("usage row %s %s amount %s at %d cum %s after at %d cum %s", key, asset, amount, at, cum, prev.at, prev.cum)
		}
		groups[key+"/"+asset] = last{at, c}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	cumAt := func(key, asset string, t0 int64) *big.Int {
		t.Helper()
		var cum string
		err := s.r.QueryRowContext(ctx, `SELECT cum FROM policy_usage WHERE key_id = ? AND asset = ? AND at <= ?
			ORDER BY at DESC, seq DESC LIMIT 1`, key, asset, t0).Scan(&cum)
		if errors.Is(err, sql.ErrNoRows) {
			return new(big.Int)
		}
		c, ok := new(big.Int).SetString(cum, 10)
		if err != nil || !ok {
			t.Fatalf("running total of %s %s at %d: %q %v", key, asset, t0, cum, err)
		}
		return c
	}
	checked := 0
	for _, g := range []struct{ key, asset string }{{"eth-old", "eth"}, {"eth-two", "eth"},
		{"eth-old", "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"}, {"eth-two", "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"}} {
		for i := 0; i < len(want); i += 7 {
			for _, d := range []int64{60e9, 600e9, 3600e9, 86400e9} {
				now := want[i].at + int64(i%3-1)*30e9
				before := new(big.Int)
				for _, u := range want {
					if u.key == g.key && u.asset == g.asset && u.at > now-d {
						before.Add(before, u.amount)
					}
				}
				after := new(big.Int).Sub(cumAt(g.key, g.asset, math.MaxInt64), cumAt(g.key, g.asset, now-d))
				if after.Cmp(before) != 0 {
					t.Fatalf("%s %s window %ds at %d: %s after migrating, %s before", g.key, g.asset, d/1e9, now, after, before)
				}
				checked++
			}
		}
	}
	if checked < 1000 {
		t.Fatalf("only %d window sums compared", checked)
	}
}

// triggers maps each trigger of the database to its SQL.
func triggers(t *testing.T, s *Store) map[string]string {
	t.Helper()
	rows, err := s.r.Query(`SELECT name, sql FROM sqlite_master WHERE type = 'trigger'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, q string
		if err := rows.Scan(&name, &q); err != nil {
			t.Fatal(err)
		}
		out[name] = q
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMigrationFromEverySchema: a database left by every earlier release
// opens with this binary, is backed up first, migrates to the newest schema,
// keeps its data, passes the integrity check, has an audit chain that
// verifies, has the same triggers as a new database (schema 10 replaced the
// chain's delete trigger), and has the same policy window sums as before
// (schema 9 added running totals to the usage rows).
func TestMigrationFromEverySchema(t *testing.T) {
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := Open(context.Background(), filepath.Join(t.TempDir(), "fresh.db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	wantTriggers := triggers(t, fresh)
	fresh.Close()
	if !strings.Contains(wantTriggers["events_append_only_delete"], "audit_archives") || wantTriggers["audit_archives_append_only_delete"] == "" {
		t.Fatalf("a new database's triggers: %v", wantTriggers)
	}
	for v := 1; v < len(ms); v++ {
		t.Run(fmt.Sprintf("from v%d", v), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "appliance.db")
			atSchema(t, path, v)
			ctx := context.Background()
			s, err := Open(ctx, path, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := s.SchemaVersion(ctx); got != len(ms) {
				t.Fatalf("schema %d after migrating, want %d", got, len(ms))
			}
			if err := s.IntegrityCheck(ctx); err != nil {
				t.Fatal(err)
			}
			k, err := s.GetKey(ctx, "eth-old")
			if err != nil || k.Address != "0xabc" || k.WrappedBackup {
				t.Fatalf("key after migrating: %+v %v", k, err)
			}
			r, err := s.GetRequest(ctx, "req_old")
			if err != nil || r.State != StateSigned || r.TxHash != "0xfeed" || r.IdempotencyKey != "idem-old" {
				t.Fatalf("request after migrating: %+v %v", r, err)
			}
			if v >= 4 {
				checkMigratedUsage(t, s)
			}
			if got := triggers(t, s); !reflect.DeepEqual(got, wantTriggers) {
				t.Fatalf("triggers after migrating from v%d:\n%v\nwant (a new database's):\n%v", v, got, wantTriggers)
			}
			if err := s.RecordEvent(ctx, "start", "", "after the upgrade"); err != nil {
				t.Fatal(err)
			}
			s.Close()
			backups, _ := filepath.Glob(path + fmt.Sprintf(".pre-v%d-*.db", len(ms)))
			if len(backups) != 1 {
				t.Fatalf("backup before upgrading: %v", backups)
			}
			// The pre-upgrade copy is the old database, untouched.
			old, err := sql.Open("sqlite3", "file:"+backups[0]+"?mode=ro")
			if err != nil {
				t.Fatal(err)
			}
			var oldV int
			err = old.QueryRow(`SELECT MAX(version) FROM schema_migrations`).Scan(&oldV)
			old.Close()
			if err != nil || oldV != v {
				t.Fatalf("backup at schema %d (%v), want %d", oldV, err, v)
			}
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			rep, err := verifyFile(t, path, &key.PublicKey, nil)
			wantEntries := int64(1)
			if v >= 2 {
				wantEntries = 2
			}
			if err != nil || rep.Entries != wantEntries {
				t.Fatalf("audit chain after migrating from v%d: %+v %v", v, rep, err)
			}
		})
	}
	// A fresh database is not "upgraded": no backup is written.
	dir := t.TempDir()
	s, err := Open(context.Background(), filepath.Join(dir, "new.db"), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if b, _ := filepath.Glob(filepath.Join(dir, "*.pre-v*")); len(b) != 0 || strings.Contains(fmt.Sprint(b), "pre") {
		t.Fatalf("backup of a new database: %v", b)
	}
}
