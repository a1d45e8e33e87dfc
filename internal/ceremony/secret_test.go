package ceremony

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"runtime"
	"testing"

	"golang.org/x/crypto/hkdf"
)

func TestNewCeremonyInvalid(t *testing.T) {
	for _, kn := range [][2]int{{1, 3}, {0, 0}, {4, 3}, {2, 256}} {
		if _, err := NewCeremony(kn[0], kn[1]); !errors.Is(err, ErrInvalidThreshold) {
			t.Errorf("NewCeremony(%d, %d) error = %v, want ErrInvalidThreshold", kn[0], kn[1], err)
		}
	}
}

func TestNewCeremonyShape(t *testing.T) {
	c := newTestCeremony(t, 3, 5)
	if c.Threshold != 3 || c.Total != 5 || len(c.Shares) != 5 {
		t.Fatalf("ceremony is %d of %d with %d shares", c.Threshold, c.Total, len(c.Shares))
	}
	for i, s := range c.Shares {
		if s.Index != byte(i+1) || s.CeremonyID != c.ID || len(s.Data) != SecretSize {
			t.Fatalf("share %d is %v with %d data bytes", i, s, len(s.Data))
		}
	}
	if !c.Secret.Verify(c.Verifier) {
		t.Fatal("ceremony verifier does not verify its own secret")
	}
	other := newTestCeremony(t, 3, 5)
	if other.ID == c.ID || bytes.Equal(other.Secret.st.buf, c.Secret.st.buf) {
		t.Fatal("two ceremonies share an id or a secret")
	}
}

// TestDerivePIN recomputes the PIN independently from the documented
// construction and checks its shape and determinism.
func TestDerivePIN(t *testing.T) {
	c := newTestCeremony(t, 2, 2)
	pin := c.Secret.DerivePIN()

	raw := make([]byte, 32)
	r := hkdf.New(sha256.New, c.Secret.st.buf, c.ID[:], []byte("custodysigner/appliance/v1/hsm-user-pin"))
	if _, err := io.ReadFull(r, raw); err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(raw); string(pin) != want {
		t.Fatalf("PIN %q, independent derivation %q", pin, want)
	}
	if again := c.Secret.DerivePIN(); !bytes.Equal(again, pin) {
		t.Fatal("DerivePIN is not deterministic")
	}

	// The verifier uses another label, so storing it says nothing about the PIN.
	v := c.Secret.Verifier()
	if len(v) != 32 || bytes.Equal(v, raw) {
		t.Fatal("verifier is not a separate 32-byte derivation")
	}

	// The ceremony id salts both: the same secret under another id differs.
	moved := newSecret([8]byte{1})
	defer moved.Destroy()
	copy(moved.st.buf, c.Secret.st.buf)
	if bytes.Equal(moved.DerivePIN(), pin) || moved.Verify(c.Verifier) {
		t.Fatal("PIN or verifier ignores the ceremony id")
	}
}

func TestHexDigitMatchesEncodingHex(t *testing.T) {
	for v := range byte(16) {
		if got, want := hexDigit(v), hex.EncodeToString([]byte{v})[1]; got != want {
			t.Fatalf("hexDigit(%d) = %q, want %q", v, got, want)
		}
	}
}

func TestVerifyRefuses(t *testing.T) {
	c := newTestCeremony(t, 2, 2)
	bad := bytes.Clone(c.Verifier)
	bad[31] ^= 1
	for _, v := range [][]byte{nil, {}, bad, c.Verifier[:31], append(bytes.Clone(c.Verifier), 0)} {
		if c.Secret.Verify(v) {
			t.Fatalf("Verify accepted %d-byte wrong verifier", len(v))
		}
	}
}

func TestDestroy(t *testing.T) {
	c, err := NewCeremony(2, 2)
	if err != nil {
		t.Fatal(err)
	}
	c.Secret.Destroy()
	c.Secret.Destroy() // idempotent
	if c.Secret.DerivePIN() != nil || c.Secret.Verifier() != nil || c.Secret.Verify(c.Verifier) {
		t.Fatal("destroyed secret still derives")
	}
	var zero Secret
	var nilSecret *Secret
	zero.Destroy()
	nilSecret.Destroy()
	if zero.DerivePIN() != nil || nilSecret.Verify(c.Verifier) {
		t.Fatal("zero or nil Secret derives")
	}
}

// TestSecretMemory: the secret lives in a secret.Buffer (excluded from
// dumps on Linux), destroying the ceremony zeroes its shares' data, and the
// PIN buffer holds the same PIN as DerivePIN.
func TestSecretMemory(t *testing.T) {
	c, err := NewCeremony(2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if dontDump, _ := c.Secret.Protected(); runtime.GOOS == "linux" && !dontDump {
		t.Error("the secret is not in memory excluded from core dumps")
	}
	pin := c.Secret.PINBuffer()
	if want := c.Secret.DerivePIN(); !bytes.Equal(pin.Bytes(), want) || len(want) != 64 {
		t.Fatalf("PINBuffer %d bytes differs from DerivePIN", pin.Len())
	}
	if runtime.GOOS == "linux" && (!pin.Mapped() || !pin.DontDump()) {
		t.Error("the PIN buffer is not in memory excluded from core dumps")
	}
	pin.Destroy()
	datas := make([][]byte, len(c.Shares))
	for i, s := range c.Shares {
		datas[i] = s.Data
		if bytes.Equal(s.Data, make([]byte, len(s.Data))) {
			t.Fatalf("share %d is zero before Destroy", i)
		}
	}
	c.Destroy()
	c.Destroy() // idempotent
	for i, d := range datas {
		if !bytes.Equal(d, make([]byte, len(d))) {
			t.Errorf("share %d's data survives Destroy", i)
		}
	}
	if c.Secret.PINBuffer() != nil {
		t.Error("a destroyed secret still derives a PIN buffer")
	}
	if dontDump, locked := c.Secret.Protected(); dontDump || locked {
		t.Error("a destroyed secret reports protected memory")
	}
}
