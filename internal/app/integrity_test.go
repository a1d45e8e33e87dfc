package app

import (
	"context"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"

	"github.com/ethereum/go-ethereum/common"
	"go.uber.org/zap"

	"github.com/custodysigner/appliance/internal/health"
	"github.com/custodysigner/appliance/internal/store"
)

// TestCorruptDatabaseRefusedAtStart: a flipped byte in a table page of the
// database is detected at start; the appliance refuses to come up.
func TestCorruptDatabaseRefusedAtStart(t *testing.T) {
	e := newEnv(t)
	e.start()
	c := e.client("client")
	for i := 0; i < 20; i++ {
		if a := e.must(c, "POST", "/v1/sign", signBody(unsignedEIP1559(t, 1337, uint64(i), common.HexToAddress("0x00000000000000000000000000000000000000f9"), big.NewInt(1)), string(rune('a'+i)))); a.status != 200 {
			t.Fatal(a.status)
		}
	}
	e.stop()
	// Fold the WAL into the main file so the damage is where quick_check reads.
	st, err := store.Open(context.Background(), e.cfg.Store.Path, e.log)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.WriteTx(context.Background(), func(tx *store.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	st.Close()
	raw, err := os.ReadFile(e.cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	// Damage a b-tree page header of a table page (not page 1, the file
	// header, which would fail earlier and less helpfully).
	const pageSize = 4096
	if len(raw) < 4*pageSize {
		t.Fatalf("database only %d bytes", len(raw))
	}
	raw[3*pageSize] ^= 0xff
	if err := os.WriteFile(e.cfg.Store.Path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = New(context.Background(), e.cfg, e.log, "test")
	if err == nil {
		t.Fatal("a corrupted database was accepted at start")
	}
	if !errors.Is(err, store.ErrIntegrity) {
		t.Fatalf("refused, but not by the integrity check: %v", err)
	}
	t.Logf("refused: %v", err)
}

// An integrity check cut short (the appliance was told to stop while it ran)
// is reported as interrupted, not as damage: it found nothing, and "restore
// it from a backup" would send an operator the wrong way.
func TestStartCheckInterruptedIsNotDamage(t *testing.T) {
	path := t.TempDir() + "/appliance.db"
	log := zap.NewNop()
	st, err := store.Open(context.Background(), path, log)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a := &App{store: st, log: log, notifier: health.NewNotifier(log)}
	if err := a.checkAtStart(context.Background(), path); err != nil {
		t.Fatalf("a sound database: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = a.checkAtStart(ctx, path)
	if !errors.Is(err, context.Canceled) || errors.Is(err, store.ErrIntegrity) ||
		!strings.Contains(err.Error(), "was interrupted") || strings.Contains(err.Error(), "backup") {
		t.Fatalf("interrupted check: %v", err)
	}
}
