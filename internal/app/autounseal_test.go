package app

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodysigner/appliance/hsm"
)

// TestAutoUnsealFromSystemdCredential: with seal.auto_unseal the PIN comes
// from $CREDENTIALS_DIRECTORY/<credential> (what LoadCredentialEncrypted=
// provides), the mode is shown in /v1/status and logged at start.
func TestAutoUnsealFromSystemdCredential(t *testing.T) {
	e := newEnv(t)
	uri, err := hsm.ParseURI(e.cfg.HSM.URI)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := uri.ReadPIN()
	if err != nil {
		t.Fatal(err)
	}
	creds := t.TempDir()
	if err := os.WriteFile(filepath.Join(creds, "hsm-pin"), append(pin, '\n'), 0o400); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	// Point the URI's pin-source at nothing: only the credential can unseal.
	uri.PinSource = "file:" + filepath.Join(t.TempDir(), "absent")
	e.cfg.HSM.URI = uri.String()
	e.start()

	st := e.must(e.client("operator"), "GET", "/v1/status", nil)
	if st.status != http.StatusOK {
		t.Fatal(st.status)
	}
	m := st.json(t)
	if m["sealed"] != false || m["seal"].(map[string]any)["auto_unseal"] != "systemd credential hsm-pin" {
		t.Fatalf("status: %s", st.body)
	}
	logged := false
	for _, en := range e.logs.All() {
		if strings.Contains(en.Message, "AUTO-UNSEAL") {
			logged = true
		}
	}
	if !logged {
		t.Fatal("auto-unseal not logged at start")
	}
}
