package hsm

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
	"go.uber.org/zap"
)

// Data objects: small values kept on the token itself (the audit chain head
// checkpoint), so that they share the token's fate and its login.
//
// SoftHSM 2.6.1 refuses C_SetAttributeValue on a data object's CKA_VALUE
// (CKR_ATTRIBUTE_READ_ONLY, measured), so a value is replaced by creating a new
// object and then destroying the old one. While both exist a reader must pick
// the new one, so each stored value starts with an 8-byte big-endian sequence
// number, one more than the highest present when it was written; ReadData
// returns the payload of the highest. A reader thus never finds the label
// missing between updates, and a crash between create and destroy leaves a
// stale object that ReadData ignores and the next WriteData removes.

// DataApplication is the CKA_APPLICATION of every data object this package
// writes; objects of other applications are never read or replaced.
const DataApplication = "custodysigner/appliance"

// MaxDataLen bounds a data object's value; the intended values are a few
// hundred bytes.
const MaxDataLen = 64 << 10

// dataSeqLen is the length of the sequence-number prefix of a stored value.
const dataSeqLen = 8

// maxDataObjects bounds how many objects under one label are read. More than
// two only exist after failed destroys (each logged); reaching the bound is an
// error, because the newest version might be among those not read.
const maxDataObjects = 1024

// dataWriteMu serialises WriteData, so that two writers never compute the same
// sequence number. It is package-wide rather than per Module because at most
// one Module per library is open in a process (see the package doc).
var dataWriteMu sync.Mutex

func dataTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, DataApplication),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// dataObject is one stored version of a label's value.
type dataObject struct {
	h     pkcs11.ObjectHandle
	seq   uint64
	value []byte // payload, without the sequence number
}

// readDataObjects returns the readable objects under label, the newest of them
// (nil if there is none), and how many the search found. objectsMu is held
// from the search to the last read, so WriteData cannot destroy an object in
// between; one destroyed by other means is skipped.
func (m *Module) readDataObjects(s *session, label string) (objs []dataObject, newest *dataObject, found int, err error) {
	objectsMu.RLock()
	defer objectsMu.RUnlock()
	hs, err := findAllLocked(m.p, s.h, dataTemplate(label), maxDataObjects)
	if err != nil {
		return nil, nil, 0, err
	}
	if len(hs) == maxDataObjects {
		return nil, nil, 0, fmt.Errorf("data object %q has %d or more versions; the newest cannot be told", label, maxDataObjects)
	}
	for _, h := range hs {
		got, err := m.p.GetAttributeValue(s.h, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
			continue // replaced meanwhile
		}
		if err != nil {
			return nil, nil, 0, fmt.Errorf("reading data object %q: %w", label, err)
		}
		v := got[0].Value
		if len(v) < dataSeqLen {
			return nil, nil, 0, fmt.Errorf("data object %q has %d bytes, too short for its sequence number", label, len(v))
		}
		objs = append(objs, dataObject{h: h, seq: binary.BigEndian.Uint64(v), value: v[dataSeqLen:]})
	}
	for i := range objs {
		if newest == nil || objs[i].seq > newest.seq {
			newest = &objs[i]
		}
	}
	return objs, newest, len(hs), nil
}

// WriteData stores value under label as a private token data object
// (CKA_PRIVATE, so only visible after login), replacing any previous value
// without a moment where the label is missing: the new object is created
// before the old ones are destroyed. A failure to destroy an old object is
// logged and not returned, because the new value is already in force.
func (m *Module) WriteData(ctx context.Context, label string, value []byte) error {
	if err := checkObjectLabel(label); err != nil {
		return err
	}
	if len(value) > MaxDataLen {
		return fmt.Errorf("hsm: data object %q: %d bytes exceeds %d: %w", label, len(value), MaxDataLen, ErrInvalidInput)
	}
	dataWriteMu.Lock()
	defer dataWriteMu.Unlock()
	return m.do(ctx, "write data", func(s *session) error {
		old, newest, _, err := m.readDataObjects(s, label)
		if err != nil {
			return err
		}
		seq := uint64(1)
		if newest != nil {
			seq = newest.seq + 1
		}
		stored := make([]byte, dataSeqLen+len(value))
		binary.BigEndian.PutUint64(stored, seq)
		copy(stored[dataSeqLen:], value)
		objectsMu.Lock()
		_, err = m.p.CreateObject(s.h, append(dataTemplate(label), pkcs11.NewAttribute(pkcs11.CKA_VALUE, stored)))
		objectsMu.Unlock()
		if err != nil {
			return fmt.Errorf("C_CreateObject data %q: %w", label, err)
		}
		for _, o := range old {
			objectsMu.Lock()
			err := m.p.DestroyObject(s.h, o.h)
			objectsMu.Unlock()
			if err == nil || isRV(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
				continue
			}
			if isLost(err) {
				return fmt.Errorf("C_DestroyObject of the previous data %q: %w", label, err)
			}
			m.log.Warn("could not destroy the previous version of a data object; readers use the newest",
				zap.String("label", label), zap.Error(err))
		}
		return nil
	})
}

// ReadData returns the value stored under label by WriteData, or an error
// wrapping ErrDataNotFound if there is none.
func (m *Module) ReadData(ctx context.Context, label string) ([]byte, error) {
	if err := checkObjectLabel(label); err != nil {
		return nil, err
	}
	var out []byte
	err := m.do(ctx, "read data", func(s *session) error {
		// A writer may destroy what the search found before it is read; the
		// new version exists by then, so searching again finds it.
		for attempt := 0; attempt < 3; attempt++ {
			_, newest, found, err := m.readDataObjects(s, label)
			if err != nil {
				return err
			}
			if newest != nil {
				out = newest.value
				return nil
			}
			if found == 0 {
				if err := m.confirmToken(s); err != nil {
					return err
				}
				return fmt.Errorf("data object %q: %w", label, ErrDataNotFound)
			}
		}
		return fmt.Errorf("data object %q: replaced faster than it could be read: %w", label, ErrUnavailable)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
