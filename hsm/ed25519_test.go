package hsm_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/asn1"
	"testing"

	"github.com/custodysigner/appliance/hsm"
	"github.com/miekg/pkcs11"
)

// TestEd25519ParamsPrintableForm: PKCS#11 3.0 also allows CKA_EC_PARAMS as the
// PrintableString "edwards25519". A key made that way by another tool must be
// usable: found, read and signed with.
func TestEd25519ParamsPrintableForm(t *testing.T) {
	m, uri := openModule(t, nil)
	p := pkcs11.New(uri.ModulePath)
	defer p.Destroy()
	sh, err := p.OpenSession(m.Slot(), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	params, err := asn1.MarshalWithParams("edwards25519", "printable")
	if err != nil {
		t.Fatal(err)
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	_, _, err = p.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(hsm.CKM_EC_EDWARDS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false), pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		})
	_ = p.CloseSession(sh)
	if err != nil {
		t.Fatalf("SoftHSM refused CKA_EC_PARAMS=PrintableString(edwards25519): %v", err)
	}
	ref := hsm.KeyRef{ID: id, Algorithm: hsm.Ed25519}
	pub, err := m.PublicKey(ctxT(t), ref)
	if err != nil {
		t.Fatalf("PublicKey: %v", err)
	}
	if err := m.CheckKey(ctxT(t), ref, pub); err != nil {
		t.Fatalf("CheckKey: %v", err)
	}
	msg := []byte("printable-form key")
	sig, err := m.Sign(ctxT(t), ref, msg)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !ed25519.Verify(pub, msg, sig) {
		t.Fatal("signature does not verify")
	}
}
