package hsm

import "github.com/miekg/pkcs11"

// This file is the single place where key attributes are decided, so that an
// auditor can check the key policy without reading the rest of the package.

// privateKeyTemplate is the template for every generated private key: stored on
// the token, only visible after login, never readable, and good for signing
// only. Usages are set false explicitly because SoftHSM (like other tokens)
// defaults some of them, e.g. CKA_DECRYPT, to true.
//
// An ordinary key (backup false) is also never extractable. A backup-able key
// (backup true) is extractable, but with CKA_WRAP_WITH_TRUSTED, so the token
// lets it leave only encrypted under a key the SO marked CKA_TRUSTED (see
// wrappingKeyTemplate), never in the clear: CKA_SENSITIVE stays true. The same
// template, with backup true, is used to unwrap a backed-up key, so a restored
// key has exactly the attributes of the original.
func privateKeyTemplate(spec algSpec, id []byte, label string, backup bool) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, spec.keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, backup),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, backup),
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

// attrRule is one boolean attribute a key must show.
type attrRule struct {
	attr uint
	name string
	want bool
}

// requiredPrivateAttrs is what an ordinary private key must show before it is
// used, both right after generation and whenever a pinned key is checked.
// ALWAYS_SENSITIVE and NEVER_EXTRACTABLE are the ones that matter: the token
// sets them itself, and they prove the key was never exposed, not merely that
// it is protected now.
var requiredPrivateAttrs = []attrRule{
	{pkcs11.CKA_SENSITIVE, "CKA_SENSITIVE", true},
	{pkcs11.CKA_EXTRACTABLE, "CKA_EXTRACTABLE", false},
	{pkcs11.CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", true},
	{pkcs11.CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", true},
	{pkcs11.CKA_DECRYPT, "CKA_DECRYPT", false},
	{pkcs11.CKA_UNWRAP, "CKA_UNWRAP", false},
	{pkcs11.CKA_DERIVE, "CKA_DERIVE", false},
}

// requiredBackupPrivateAttrs is what a backup-able private key must show. It is
// extractable, but only wrapped under a trusted key (CKA_WRAP_WITH_TRUSTED),
// and it is sensitive, so it can never be read or exported in the clear.
// EXTRACTABLE must be true: a key pinned as backup-able that cannot be backed
// up is as wrong as the reverse, and the caller must hear about it.
//
// CKA_ALWAYS_SENSITIVE is checked separately (see checkPrivateAttrs): it must
// be true for a key generated on this token (CKA_LOCAL true), but PKCS#11 has
// C_UnwrapKey set it false, so a restored key (CKA_LOCAL false) cannot show it.
var requiredBackupPrivateAttrs = []attrRule{
	{pkcs11.CKA_SENSITIVE, "CKA_SENSITIVE", true},
	{pkcs11.CKA_EXTRACTABLE, "CKA_EXTRACTABLE", true},
	{pkcs11.CKA_WRAP_WITH_TRUSTED, "CKA_WRAP_WITH_TRUSTED", true},
	{pkcs11.CKA_DECRYPT, "CKA_DECRYPT", false},
	{pkcs11.CKA_UNWRAP, "CKA_UNWRAP", false},
	{pkcs11.CKA_DERIVE, "CKA_DERIVE", false},
}

// wrappingKeyTemplate is the AES key that wraps backup-able private keys. It
// can wrap and unwrap and nothing else (no CKA_ENCRYPT/CKA_DECRYPT, so it is
// no general-purpose cipher oracle), its value can never be read or exported,
// and CKA_TRUSTED lets it wrap CKA_WRAP_WITH_TRUSTED keys. Only the SO may set
// CKA_TRUSTED, and an SO session can only create public objects, so it is
// created as a public session object and copied by the user into a private
// token object with wrappingKeyCopyTemplate (see ProvisionWrappingKey).
func wrappingKeyTemplate(label string, value []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	}
}

// wrappingKeyCopyTemplate turns the SO's public session object into the
// wrapping key proper: a token object only visible after login, whose value
// SoftHSM stores encrypted (it stores public objects' values in the clear).
func wrappingKeyCopyTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
	}
}

// wrappingKeyFindTemplate selects a wrapping key by label.
func wrappingKeyFindTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// requiredWrappingAttrs is what a wrapping key must show before it is used or
// reported present.
var requiredWrappingAttrs = []attrRule{
	{pkcs11.CKA_TOKEN, "CKA_TOKEN", true},
	{pkcs11.CKA_PRIVATE, "CKA_PRIVATE", true},
	{pkcs11.CKA_TRUSTED, "CKA_TRUSTED", true},
	{pkcs11.CKA_WRAP, "CKA_WRAP", true},
	{pkcs11.CKA_UNWRAP, "CKA_UNWRAP", true},
	{pkcs11.CKA_ENCRYPT, "CKA_ENCRYPT", false},
	{pkcs11.CKA_DECRYPT, "CKA_DECRYPT", false},
	{pkcs11.CKA_SENSITIVE, "CKA_SENSITIVE", true},
	{pkcs11.CKA_EXTRACTABLE, "CKA_EXTRACTABLE", false},
}
