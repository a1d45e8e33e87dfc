//go:build goexperiment.runtimesecret

package secret

import rtsecret "runtime/secret"

// Do runs f under runtime/secret.Do: the registers and stack f used are
// erased when it returns, its heap allocations once they are unreachable
// (on linux/amd64 and linux/arm64; elsewhere f just runs).
func Do(f func()) { rtsecret.Do(f) }

// Erasing reports whether Do erases f's temporary storage.
const Erasing = true
