//go:build !goexperiment.runtimesecret

package secret

// Do calls f. Built with GOEXPERIMENT=runtimesecret it runs f under
// runtime/secret.Do, which erases the registers and stack f used and, once
// unreachable, its heap allocations (HKDF and HMAC state, for instance).
func Do(f func()) { f() }

// Erasing reports whether Do erases f's temporary storage.
const Erasing = false
