package app

import (
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"

	"github.com/custodysigner/appliance/hsm"
	"github.com/custodysigner/appliance/hsm/softhsmtest"
	"github.com/custodysigner/appliance/internal/config"
)

// TestTokenLossThroughTheAPI: the token disappears under a running
// appliance. Signing answers 503 hsm_unavailable and health is down; the
// request is recorded as failed, never as signed. When the token returns the
// appliance recovers by itself, and a retry with the same idempotency key
// signs.
func TestTokenLossThroughTheAPI(t *testing.T) {
	e := newEnv(t)
	e.cfg.HSM.UnavailableGrace = config.Duration(-1) // down at once (TestHSMUnavailableDegradedThenDown has the grace)
	e.start()
	uri, err := hsm.ParseURI(e.cfg.HSM.URI)
	if err != nil {
		t.Fatal(err)
	}
	tokenDir := softhsmtest.TokenPath(t, uri.Token)
	c := e.client("client")
	op := e.client("operator")
	body := signBody(unsignedEIP1559(t, 1337, 0, common.HexToAddress("0x00000000000000000000000000000000000000f1"), big.NewInt(5)), "loss-1")

	// Out of SoftHSM's token directory altogether: it rescans that directory
	// by content, so a rename inside it would be found again.
	gone := filepath.Join(t.TempDir(), "gone")
	if err := os.Rename(tokenDir, gone); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = os.Rename(gone, tokenDir)
		}
	}()
	// The health probe notices (the cached report lives at most a second).
	waitFor(t, 10*time.Second, "health down", func() bool {
		a := e.must(op, "GET", "/v1/health", nil)
		return a.status == http.StatusServiceUnavailable && a.json(t)["status"] == "down"
	})
	a := e.must(c, "POST", "/v1/sign", body)
	if a.status != http.StatusServiceUnavailable || a.code(t) != "hsm_unavailable" {
		t.Fatalf("sign without a token: %d %s", a.status, a.body)
	}
	if err := os.Rename(gone, tokenDir); err != nil {
		t.Fatal(err)
	}
	restored = true
	waitFor(t, 15*time.Second, "health ok", func() bool {
		a := e.must(op, "GET", "/v1/health", nil)
		return a.status == http.StatusOK && a.json(t)["status"] == "ok"
	})
	a = e.must(c, "POST", "/v1/sign", body)
	if a.status != http.StatusOK || a.json(t)["state"] != "signed" {
		t.Fatalf("retry after recovery: %d %s", a.status, a.body)
	}
	st := e.must(op, "GET", "/v1/status", nil).json(t)
	if h := st["hsm"].(map[string]any); h["rebuilds"].(float64) < 1 {
		t.Fatalf("status shows no rebuild: %v", h)
	}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s", what, within)
}
