package ceremony

import (
	"bytes"
	"errors"
	"testing"
)

// TestReshare: a re-share keeps the secret (and so the backup keys) but
// changes the ceremony, the PIN and the verifier; old shares do not
// combine under the new verifier. Recover finds the same secret from any
// threshold of shares.
func TestReshare(t *testing.T) {
	old, err := NewCeremony(2, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Secret.Destroy()
	re, err := Reshare(old.Secret, 3, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer re.Secret.Destroy()
	if re.ID == old.ID || len(re.Shares) != 4 || re.Threshold != 3 {
		t.Fatalf("reshare: %v", re)
	}
	if bytes.Equal(re.Secret.DerivePIN(), old.Secret.DerivePIN()) || bytes.Equal(re.Verifier, old.Verifier) {
		t.Fatal("PIN or verifier unchanged by a re-share")
	}
	if !bytes.Equal(re.Secret.BackupRecipientSeed(), old.Secret.BackupRecipientSeed()) ||
		!bytes.Equal(re.Secret.BackupWrappingKey(), old.Secret.BackupWrappingKey()) {
		t.Fatal("backup keys changed by a re-share")
	}
	if bytes.Equal(old.Secret.BackupRecipientSeed(), old.Secret.BackupWrappingKey()) {
		t.Fatal("backup labels are not independent")
	}
	// Old shares against the new ceremony: refused.
	p := NewProgress(re.ID, re.Threshold, re.Verifier, 0, nil)
	if _, _, err := p.Add(old.Shares[0].Encode()); !errors.Is(err, ErrWrongCeremony) {
		t.Fatalf("old share accepted: %v", err)
	}
	// Recover: 3 of the new 4, in any order.
	s, id, err := Recover([]string{re.Shares[3].Encode(), re.Shares[0].Encode(), re.Shares[2].Encode()})
	if err != nil || id != re.ID || !s.Verify(re.Verifier) {
		t.Fatalf("recover: %v", err)
	}
	s.Destroy()
	if _, _, err := Recover([]string{re.Shares[0].Encode(), re.Shares[1].Encode()}); err == nil {
		t.Fatal("recovered below the threshold")
	}
	if _, _, err := Recover([]string{re.Shares[0].Encode(), old.Shares[1].Encode(), re.Shares[1].Encode()}); err == nil {
		t.Fatal("recovered from mixed ceremonies")
	}
}
