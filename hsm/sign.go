package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Sign signs with the private key ref. For secp256k1 and P-256, data must be a
// 32-byte digest; the result is r||s (32 bytes each) with s in low-S form. For
// Ed25519, data is the message itself and the result is the 64-byte signature.
// A pinned key whose last check failed is refused with that check's error.
func (m *Module) Sign(ctx context.Context, ref KeyRef, data []byte) ([]byte, error) {
	spec, err := specFor(ref.Algorithm)
	if err != nil {
		return nil, err
	}
	if spec.order != nil && len(data) != 32 {
		// CKM_ECDSA would silently truncate or pad anything else.
		return nil, fmt.Errorf("hsm: sign: ECDSA digest has %d bytes, want 32: %w", len(data), ErrInvalidInput)
	}
	if err := m.pinnedKeyError(ref.ID); err != nil {
		return nil, fmt.Errorf("hsm: sign: refusing key %x: %w", ref.ID, err)
	}
	var sig []byte
	err = m.do(ctx, "sign", func(s *session) error {
		var err error
		sig, err = m.signOn(s, spec, ref, data)
		return err
	})
	if err != nil {
		return nil, err
	}
	if spec.order != nil {
		return normalizeECDSA(sig, spec.order)
	}
	if len(sig) != 64 {
		return nil, fmt.Errorf("hsm: sign: EdDSA signature has %d bytes, want 64", len(sig))
	}
	return sig, nil
}

// signOn signs using the cached private key handle, finding (and caching) it on
// a miss. A handle that has gone stale (key destroyed or replaced) is dropped
// and looked up once more.
func (m *Module) signOn(s *session, spec algSpec, ref KeyRef, data []byte) ([]byte, error) {
	key := cacheKey(ref)
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(spec.signMech, nil)}
	for attempt := 0; attempt < 2; attempt++ {
		h, ok := s.gen.handle(key)
		if !ok {
			var err error
			if h, err = m.findKey(s, pkcs11.CKO_PRIVATE_KEY, ref); err != nil {
				return nil, err
			}
			s.gen.setHandle(key, h)
		}
		err := m.p.SignInit(s.h, mech, h)
		if ok && (isRV(err, pkcs11.CKR_KEY_HANDLE_INVALID) || isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID)) {
			s.gen.dropHandle(key)
			continue
		}
		if err != nil {
			// The token may have begun the operation all the same.
			return nil, suspectSession{fmt.Errorf("C_SignInit: %w", err)}
		}
		sig, err := m.p.Sign(s.h, data)
		if err != nil {
			return nil, fmt.Errorf("C_Sign: %w", err)
		}
		return sig, nil
	}
	return nil, fmt.Errorf("key %x: handle invalid twice: %w", ref.ID, ErrKeyNotFound)
}
