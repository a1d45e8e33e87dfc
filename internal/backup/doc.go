// Package backup writes and reads the appliance's encrypted backup archive.
//
// # Threat model
//
// A backup holds the appliance database (key registry, policy, approvals,
// the audit chain) and the HSM keys wrapped for export, so reading one is
// close to holding the appliance. The archive file is meant to sit on
// storage the appliance does not trust: an operator's laptop, a bucket,
// offsite media. It is therefore encrypted to a recipient public key whose
// private half is derived (see [KeyPairFromSeed]) from the officers' quorum
// secret. The running appliance holds only the public key, so it can write
// backups unattended but cannot read them, and nobody can read one unless K
// of N officers together reconstruct the quorum secret during a restore.
//
// Whoever holds the file learns its size, its creation time and the
// fingerprint of the key it is encrypted to: these are in the clear so that
// an inspector ([ReadHeader]) can show them without a quorum. Member names,
// sizes and contents are encrypted.
//
// Decryption proves that an archive was not modified after it was written,
// not who wrote it: the recipient key is public, and anyone holding it can
// write a well-formed archive for it (HPKE base mode has no sender
// authentication). A restorer must treat the contents as untrusted input.
// This package refuses member names that could escape the restore directory
// ("..", absolute paths, backslashes), duplicates, anything but regular
// files, sparse files, and counts and sizes beyond fixed bounds; it never
// holds more than one 64 KiB chunk in memory. Where the origin of a backup
// matters, verify it separately, for example with a signature over the
// archive file's SHA-256 by a key the appliance holds.
//
// # Format, version 1
//
// All integers are big-endian.
//
//	header, 104 bytes, plaintext:
//	  magic       24  "CUSTODY-APPLIANCE-BACKUP"
//	  version      2  1
//	  kem id       2  0x0020  DHKEM(X25519, HKDF-SHA256)
//	  kdf id       2  0x0001  HKDF-SHA256
//	  aead id      2  0x0002  AES-256-GCM
//	  created      8  Unix seconds, signed
//	  recipient   32  SHA-256 fingerprint of the recipient public key (see [Fingerprint])
//	  enc         32  HPKE encapsulated key (the sender's ephemeral X25519 share)
//	body, to the end of the file:
//	  chunks, each the HPKE (RFC 9180, mode base) context's Seal of up to
//	  64 KiB of payload plus a 16-byte tag. Every chunk but the last carries
//	  exactly 64 KiB; the last carries 0 to 64 KiB (0 only if it is also the
//	  first) and is recognised by the end of the file.
//
// The HPKE context is set up with info "CUSTODY-APPLIANCE-BACKUP v1 payload".
// Its nonce for chunk i is base_nonce XOR i, so a chunk only decrypts at the
// position it was sealed at. Each chunk's additional data is
//
//	header (all 104 bytes) || i (8 bytes) || final (1 byte: 0x01 last, 0x00 otherwise)
//
// so editing any header byte fails the first chunk; dropping, duplicating or
// reordering chunks fails the first chunk that is out of place; truncating
// the file at a chunk boundary leaves a last chunk that was sealed as not
// final, and appending bytes turns the real last chunk into a non-final one.
// All of these are [ErrCorrupt]. The recipient fingerprint is compared before
// anything is decrypted, so an archive for another key is [ErrWrongKey]
// rather than ErrCorrupt.
//
// There is no separate random data key: HPKE already derives a fresh AES-256
// key and base nonce for every archive from the sender's ephemeral KEM
// share, which is exactly what a data key sealed to the recipient would
// provide, with one construction fewer to get wrong.
//
// The payload is a tar stream (archive/tar) of regular files, conventionally
// beginning with "manifest.json" (see [Manifest]), which describes the rest.
//
// # Reading
//
// A [Reader] releases a chunk's plaintext only after that chunk has
// authenticated, but truncation of the file can only be noticed at its end.
// A restorer must stage what it extracts and act on it only after
// [Reader.Next] has returned io.EOF, which it does only once the final
// chunk has authenticated and the tar stream has ended exactly there.
package backup
