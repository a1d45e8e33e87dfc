package hsm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef unsigned long ck_ulong;
typedef struct { ck_ulong type; void *value; ck_ulong len; } ck_attribute;
typedef ck_ulong (*get_attribute_value_fn)(ck_ulong, ck_ulong, ck_attribute *, ck_ulong);

// The library's own C_GetAttributeValue, if it is loaded already (RTLD_NOLOAD:
// never load it here). The reference taken is dropped at once: the binding's
// own handle keeps the library loaded while the Module is open.
static void *lookup_get_attribute_value(const char *path) {
	void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (lib == NULL) return NULL;
	void *f = dlsym(lib, "C_GetAttributeValue");
	dlclose(lib);
	return f;
}

static ck_ulong call_get_attribute_value(void *f, ck_ulong session, ck_ulong object, ck_attribute *tmpl, ck_ulong n) {
	return ((get_attribute_value_fn)f)(session, object, tmpl, n);
}
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// attrReader reads attributes with one C_GetAttributeValue call into
// buffers of a fixed size. The binding always makes two calls, the first
// only to learn the lengths, and with SoftHSM every call costs as much as
// re-validating the object on disk; reading every key object of a token
// that way doubles the cost of checking 10,000 keys. It is used only where
// the binding's call remains the fallback: a zero attrReader, a value too
// big for its buffer, or any answer but CKR_OK, and the caller reads the
// object through the binding instead, exactly as before.
type attrReader struct{ fn unsafe.Pointer }

// attrBufLen bounds each value read: the attributes read this way (CKA_ID,
// CKA_KEY_TYPE, CKA_EC_PARAMS, CKA_EC_POINT, CK_BBOOLs) are far smaller.
const attrBufLen = 256

// directAttrReads lets tests read every object through the binding.
var directAttrReads = true

// newAttrReader finds C_GetAttributeValue in the already loaded library at
// path; without it the reader is zero and every read falls back.
func newAttrReader(path string) attrReader {
	if !directAttrReads {
		return attrReader{}
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	return attrReader{fn: C.lookup_get_attribute_value(cpath)}
}

// read returns the attributes of object h among types that the token has
// for it: an object answers those of its class and marks the others
// unavailable (CKR_ATTRIBUTE_TYPE_INVALID, every other one still filled in).
// ok is false when the caller must read the object through the binding; err
// is set only for an answer that means the session is lost.
func (r attrReader) read(sh pkcs11.SessionHandle, h pkcs11.ObjectHandle, types []uint) (attrs map[uint][]byte, ok bool, err error) {
	if r.fn == nil || len(types) == 0 {
		return nil, false, nil
	}
	n := len(types)
	attrSize := C.size_t(unsafe.Sizeof(C.ck_attribute{}))
	mem := C.malloc(C.size_t(n)*attrSize + C.size_t(n*attrBufLen))
	if mem == nil {
		return nil, false, nil
	}
	defer C.free(mem)
	tmpl := unsafe.Slice((*C.ck_attribute)(mem), n)
	bufs := unsafe.Add(mem, uintptr(n)*uintptr(attrSize))
	for i, t := range types {
		tmpl[i] = C.ck_attribute{_type: C.ck_ulong(t), value: unsafe.Add(bufs, i*attrBufLen), len: attrBufLen}
	}
	switch rv := uint(C.call_get_attribute_value(r.fn, C.ck_ulong(sh), C.ck_ulong(h), &tmpl[0], C.ck_ulong(n))); rv {
	case pkcs11.CKR_OK, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_ATTRIBUTE_SENSITIVE:
	default:
		if e := pkcs11.Error(rv); isLost(e) {
			return nil, false, e
		}
		return nil, false, nil
	}
	attrs = make(map[uint][]byte, n)
	for i, t := range types {
		l := tmpl[i].len
		if l == C.ck_ulong(pkcs11.CK_UNAVAILABLE_INFORMATION) {
			continue
		}
		if l > attrBufLen { // a token that overran the buffer: never trust it
			return nil, false, nil
		}
		attrs[t] = C.GoBytes(tmpl[i].value, C.int(l))
	}
	return attrs, true, nil
}
