// Package secret keeps secrets (the unseal secret, the HSM PIN, Shamir shares
// being combined, keys derived from the secret) in memory that is harder to
// leak than the Go heap, and hardens the process against dumps.
//
// A Buffer is an anonymous private mapping made with mmap, outside the Go
// heap: the garbage collector never moves or copies it, so zeroing it
// zeroes the only copy it holds. It is excluded from core dumps
// (MADV_DONTDUMP) and locked into RAM (mlock: never written to swap) where
// the platform and RLIMIT_MEMLOCK allow; Destroy zeroes and unmaps it.
//
// Harden turns core dumps off for the whole process: RLIMIT_CORE 0 (soft and
// hard, so the process cannot raise it again) and PR_SET_DUMPABLE 0, which
// also stops the kernel's core dump through a core_pattern pipe
// (systemd-coredump, apport) and refuses ptrace and /proc/<pid>/mem,
// environ and similar files to other processes of the same user.
//
// What Go cannot guarantee, stated plainly:
//
//   - Strings are immutable: a secret that arrives as a string (a share in a
//     JSON request body) or must be passed as one (miekg/pkcs11's Login takes
//     the PIN as a string) cannot be zeroed. Such copies are kept short-lived
//     and unreferenced so the collector reuses their memory, nothing more.
//   - Library code keeps copies it does not zero: HKDF and HMAC state,
//     encoding/json's pooled buffers, net/http and TLS record buffers, the
//     decoded request body. Zeroing our own []byte copies after use
//     shortens, but does not end, the life of a secret on the heap.
//   - The collector may have copied a heap slice (a growing append, a stack
//     moved on growth) before it was zeroed.
//   - Root (CAP_SYS_PTRACE) can still read the process's memory.
//
// The mitigation is layered: secrets live in Buffers where they live longest,
// every other copy is short-lived and zeroed where the code owns it, and no
// dump of the process can be written. Built with GOEXPERIMENT=runtimesecret,
// Do also erases the registers, stack and heap allocations of the
// derivations it wraps (runtime/secret); without it Do just calls f.
package secret
