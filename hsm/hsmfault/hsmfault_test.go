package hsmfault

import (
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
)

// token is a stand-in library that counts what reached it; the real token
// is behind the hsm package's tests.
type token struct {
	hsm.Cryptoki // nil: any other call panics
	signs, opens int
	next         pkcs11.SessionHandle
}

func (k *token) OpenSession(uint, uint) (pkcs11.SessionHandle, error) {
	k.opens++
	k.next++
	return k.next, nil
}
func (k *token) CloseSession(pkcs11.SessionHandle) error { return nil }
func (k *token) CloseAllSessions(uint) error             { return nil }
func (k *token) Finalize() error                         { return nil }
func (k *token) Sign(pkcs11.SessionHandle, []byte) ([]byte, error) {
	k.signs++
	return []byte("sig"), nil
}
func (k *token) SignInit(pkcs11.SessionHandle, []*pkcs11.Mechanism, pkcs11.ObjectHandle) error {
	return nil
}

func isRV(err error, rv uint) bool {
	var pe pkcs11.Error
	return errors.As(err, &pe) && uint(pe) == rv
}

func TestBeforeAndAfter(t *testing.T) {
	k := &token{}
	in := Wrap(k)
	in.FailNext(Fault{Op: OpOpenSession, RV: pkcs11.CKR_DEVICE_ERROR, When: Before}, 1)
	if h, err := in.OpenSession(1, 0); !isRV(err, pkcs11.CKR_DEVICE_ERROR) || h != 0 || k.opens != 0 {
		t.Fatalf("before: %d %v, %d opened", h, err, k.opens)
	}
	in.FailNext(Fault{Op: OpOpenSession, RV: pkcs11.CKR_DEVICE_ERROR, When: After}, 1)
	if h, err := in.OpenSession(1, 0); !isRV(err, pkcs11.CKR_DEVICE_ERROR) || h != 0 || k.opens != 1 {
		t.Fatalf("after: %d %v, %d opened", h, err, k.opens)
	}
	// The session the caller never learnt of is still counted open.
	if n := in.OpenSessions(); n != 1 {
		t.Fatalf("%d sessions open, want 1", n)
	}
	h, err := in.OpenSession(2, 0)
	if err != nil || in.OpenSessions() != 2 {
		t.Fatalf("clean open: %v, %d open", err, in.OpenSessions())
	}
	if err := in.CloseSession(h); err != nil || in.OpenSessions() != 1 {
		t.Fatalf("close: %v, %d open", err, in.OpenSessions())
	}
	if err := in.CloseAllSessions(1); err != nil || in.OpenSessions() != 0 {
		t.Fatalf("close all on slot 1: %v, %d open", err, in.OpenSessions())
	}
	if opened, closed := in.SessionCounts(); opened != 2 || closed != 2 {
		t.Fatalf("opened %d, closed %d", opened, closed)
	}
	// C_Sign always reaches the token: a failed C_Sign ends the operation.
	in.FailNext(Fault{Op: OpSign, RV: pkcs11.CKR_FUNCTION_FAILED, When: Before}, 2)
	for range 2 {
		if sig, err := in.Sign(1, nil); !isRV(err, pkcs11.CKR_FUNCTION_FAILED) || sig != nil {
			t.Fatalf("sign: %x %v", sig, err)
		}
	}
	if sig, err := in.Sign(1, nil); err != nil || string(sig) != "sig" || k.signs != 3 {
		t.Fatalf("third sign: %q %v, %d signs reached the token", sig, err, k.signs)
	}
	if in.Injected() != 4 || in.Injected(OpSign) != 2 || in.Calls(OpSign) != 3 || in.Calls() != 8 {
		t.Fatalf("injected %d (sign %d), calls %d (sign %d)", in.Injected(), in.Injected(OpSign), in.Calls(), in.Calls(OpSign))
	}
}

func TestRatesAndClear(t *testing.T) {
	k := &token{}
	in := Wrap(k)
	in.Seed(7)
	in.FailRandomly(Fault{Op: OpSignInit, RV: pkcs11.CKR_DEVICE_MEMORY}, 0.25)
	failed := 0
	for range 4000 {
		if in.SignInit(1, nil, 1) != nil {
			failed++
		}
	}
	if failed < 850 || failed > 1150 || in.Injected() != failed {
		t.Fatalf("%d of 4000 failed at rate 0.25 (%d injected)", failed, in.Injected())
	}
	in.Clear()
	for range 100 {
		if err := in.SignInit(1, nil, 1); err != nil {
			t.Fatalf("after Clear: %v", err)
		}
	}
	// Every rule of the mix names a call the injector knows.
	for _, r := range Mix() {
		in.FailRandomly(r.Fault, 1)
	}
	if err := in.Finalize(); !isRV(err, pkcs11.CKR_GENERAL_ERROR) {
		t.Fatalf("finalize under the mix at rate 1: %v", err)
	}
}
