package hsm

import "github.com/miekg/pkcs11"

// This file is the single place where key attributes are decided, so that an
// auditor can check the key policy without reading the rest of the package.

// privateKeyTemplate is the template for every generated private key: stored on
// the token, only visible after login, never readable or exportable, and good
// for signing only. Usages are set false explicitly because SoftHSM (like other
// tokens) defaults some of them, e.g. CKA_DECRYPT, to true.
func privateKeyTemplate(spec algSpec, id []byte, label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, spec.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// publicKeyTemplate is the template for the matching public key: stored on the
// token (so the pinned public key can be re-read after a restart) and good for
// verification only.
func publicKeyTemplate(spec algSpec, id []byte, label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, spec.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, spec.params),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// findTemplates select the object of class class for a key reference, one
// template per encoding of the curve the token might have stored. Key type and
// curve are part of the match so that a secp256k1 reference can never select a
// P-256 key that happens to share its CKA_ID.
func findTemplates(class uint, spec algSpec, id []byte) [][]*pkcs11.Attribute {
	var out [][]*pkcs11.Attribute
	for _, params := range append([][]byte{spec.params}, spec.altParams...) {
		out = append(out, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, spec.keyType),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		})
	}
	return out
}

// requiredPrivateAttrs is what a private key must show before it is used, both
// right after generation and whenever a pinned key is checked. ALWAYS_SENSITIVE
// and NEVER_EXTRACTABLE are the ones that matter: the token sets them itself,
// and they prove the key was never exposed, not merely that it is protected now.
var requiredPrivateAttrs = []struct {
	attr uint
	name string
	want bool
}{
	{pkcs11.CKA_SENSITIVE, "CKA_SENSITIVE", true},
	{pkcs11.CKA_EXTRACTABLE, "CKA_EXTRACTABLE", false},
	{pkcs11.CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", true},
	{pkcs11.CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", true},
	{pkcs11.CKA_DECRYPT, "CKA_DECRYPT", false},
	{pkcs11.CKA_UNWRAP, "CKA_UNWRAP", false},
	{pkcs11.CKA_DERIVE, "CKA_DERIVE", false},
}
