package hsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// InitToken provisions a token for development and tests: it finds a slot whose
// token is not initialised, runs C_InitToken(soPIN, label), logs in as SO and
// sets the user PIN. It refuses with ErrTokenExists if a token with that label
// already exists. It initialises the library itself and finalises it afterwards,
// unless the library was already initialised in this process (see the package
// doc), in which case it leaves that initialisation alone.
func InitToken(modulePath, label string, soPIN, userPIN []byte) error {
	if label == "" || len(label) > 32 || strings.TrimRight(label, " ") != label {
		// Token labels are 32 space-padded bytes: trailing spaces cannot round-trip.
		return fmt.Errorf("hsm: token label must be 1..32 bytes without trailing spaces: %w", ErrInvalidInput)
	}
	if len(soPIN) == 0 || len(userPIN) == 0 {
		return fmt.Errorf("hsm: init token: %w", ErrNoPIN)
	}
	p, done, err := standalone(modulePath)
	if err != nil {
		return err
	}
	defer done()

	slots, err := p.GetSlotList(false)
	if err != nil {
		return fmt.Errorf("hsm: C_GetSlotList: %w", err)
	}
	free, haveFree := uint(0), false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue // no token in this slot
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			if !haveFree {
				free, haveFree = s, true
			}
			continue
		}
		if ti.Label == label {
			return fmt.Errorf("hsm: init token %q: %w", label, ErrTokenExists)
		}
	}
	if !haveFree {
		return errors.New("hsm: init token: no slot with an uninitialised token")
	}
	if err := p.InitToken(free, string(soPIN), label); err != nil {
		return fmt.Errorf("hsm: C_InitToken: %w", err)
	}
	sh, err := p.OpenSession(free, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsm: C_OpenSession after C_InitToken: %w", err)
	}
	defer p.CloseSession(sh) //nolint:errcheck // best effort; C_Finalize cleans up too
	if err := p.Login(sh, pkcs11.CKU_SO, string(soPIN)); err != nil {
		return fmt.Errorf("hsm: C_Login as SO: %w", err)
	}
	defer p.Logout(sh) //nolint:errcheck // best effort
	if err := p.InitPIN(sh, string(userPIN)); err != nil {
		return fmt.Errorf("hsm: C_InitPIN: %w", err)
	}
	return nil
}

// standalone loads and initialises the module for a one-off operation
// (token initialisation, provisioning) outside any Module. done finalises
// it, unless the library was already initialised in this process, in which
// case that initialisation is left alone.
func standalone(modulePath string) (Cryptoki, func(), error) {
	p := pkcs11.New(modulePath)
	if p == nil {
		return nil, nil, fmt.Errorf("hsm: cannot load PKCS#11 module %s", modulePath)
	}
	if err := p.Initialize(); err != nil {
		if !isRV(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			p.Destroy()
			return nil, nil, fmt.Errorf("hsm: C_Initialize: %w", err)
		}
		return p, p.Destroy, nil
	}
	return p, func() {
		_ = p.Finalize() // nothing useful to do if finalising fails
		p.Destroy()
	}, nil
}
