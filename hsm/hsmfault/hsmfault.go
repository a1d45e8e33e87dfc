// Package hsmfault interposes on the PKCS#11 calls of an hsm.Module to
// inject faults for tests: a call fails with a chosen return value before
// it reaches the token, or reaches it and its answer is lost, or is delayed.
// It also keeps the books a leak check needs: every session the token
// actually opened and has not closed.
//
// Use it through hsm.Options.Interpose:
//
//	var inj *hsmfault.Injector
//	opts.Interpose = func(c hsm.Cryptoki) hsm.Cryptoki { inj = hsmfault.Wrap(c); return inj }
//
// It is a test tool: nothing in the appliance imports it.
package hsmfault

import (
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custodysigner/appliance/hsm"
)

// Names of the calls, as the PKCS#11 specification spells them.
const (
	OpInitialize        = "C_Initialize"
	OpFinalize          = "C_Finalize"
	OpGetInfo           = "C_GetInfo"
	OpGetSlotList       = "C_GetSlotList"
	OpGetTokenInfo      = "C_GetTokenInfo"
	OpInitToken         = "C_InitToken"
	OpInitPIN           = "C_InitPIN"
	OpSetPIN            = "C_SetPIN"
	OpOpenSession       = "C_OpenSession"
	OpCloseSession      = "C_CloseSession"
	OpCloseAllSessions  = "C_CloseAllSessions"
	OpGetSessionInfo    = "C_GetSessionInfo"
	OpLogin             = "C_Login"
	OpLogout            = "C_Logout"
	OpCreateObject      = "C_CreateObject"
	OpCopyObject        = "C_CopyObject"
	OpDestroyObject     = "C_DestroyObject"
	OpGetAttributeValue = "C_GetAttributeValue"
	OpSetAttributeValue = "C_SetAttributeValue"
	OpFindObjectsInit   = "C_FindObjectsInit"
	OpFindObjects       = "C_FindObjects"
	OpFindObjectsFinal  = "C_FindObjectsFinal"
	OpGenerateKeyPair   = "C_GenerateKeyPair"
	OpSignInit          = "C_SignInit"
	OpSign              = "C_Sign"
	OpWrapKey           = "C_WrapKey"
	OpUnwrapKey         = "C_UnwrapKey"
)

// When says where a fault strikes.
type When int

const (
	// Before fails the call without it reaching the token. C_Sign and
	// C_FindObjectsFinal still reach it: PKCS#11 ends the operation on
	// any failed C_Sign, and a search must end for the session to be
	// usable, so a token that failed them has ended them too.
	Before When = iota
	// After lets the call reach the token and replaces its answer: the
	// token did the work (opened the session, signed) and the caller never
	// learns it.
	After
)

// Fault is one planned failure.
type Fault struct {
	Op    string        // the call it strikes
	RV    uint          // the PKCS#11 return value the caller sees; 0 with Delay only delays
	When  When          // Before or After
	Delay time.Duration // added before the call
}

type rule struct {
	f    Fault
	left int     // calls left to strike; <0 for a rate rule
	rate float64 // probability per call, for a rate rule
}

// Injector is an hsm.Cryptoki that forwards to the real library and
// injects the faults it has been told to. It is safe for concurrent use.
type Injector struct {
	inner hsm.Cryptoki

	mu       sync.Mutex
	rules    []*rule
	rng      *rand.Rand
	calls    map[string]int
	injected map[string]int
	open     map[pkcs11.SessionHandle]uint // sessions the token opened and has not closed, by slot
	opened   int
	closed   int
}

// Wrap returns an Injector over inner with no faults planned.
func Wrap(inner hsm.Cryptoki) *Injector {
	return &Injector{
		inner:    inner,
		rng:      rand.New(rand.NewPCG(1, 2)),
		calls:    map[string]int{},
		injected: map[string]int{},
		open:     map[pkcs11.SessionHandle]uint{},
	}
}

// FailNext makes the next n calls of f.Op fail as f says.
func (in *Injector) FailNext(f Fault, n int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.rules = append(in.rules, &rule{f: f, left: n})
}

// FailRandomly makes each call of f.Op fail as f says with probability
// rate, until Clear. The draws come from one generator (see Seed).
func (in *Injector) FailRandomly(f Fault, rate float64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.rules = append(in.rules, &rule{f: f, left: -1, rate: rate})
}

// Rate is a fault and its probability per call, for FailRandomly.
type Rate struct {
	Fault Fault
	P     float64
}

// Mix is every kind of fault the appliance must survive, at rates under
// which signing still mostly works (about one signing attempt in four
// meets one): failed calls that leave the token in place; a signing
// operation the token began but reported failed; a lost token, before the
// token acts and after (a signature made, its answer lost), in signing,
// key searches and the health probe; and rebuild attempts that fail or
// leave behind a session whose handle never arrived.
func Mix() []Rate {
	return []Rate{
		{Fault{Op: OpSign, RV: pkcs11.CKR_FUNCTION_FAILED, When: Before}, 0.10},
		{Fault{Op: OpSignInit, RV: pkcs11.CKR_DEVICE_MEMORY, When: Before}, 0.10},
		{Fault{Op: OpSignInit, RV: pkcs11.CKR_DEVICE_MEMORY, When: After}, 0.01},
		{Fault{Op: OpSign, RV: pkcs11.CKR_DEVICE_ERROR, When: After}, 0.02},
		{Fault{Op: OpSignInit, RV: pkcs11.CKR_SESSION_HANDLE_INVALID, When: Before}, 0.02},
		{Fault{Op: OpFindObjects, RV: pkcs11.CKR_DEVICE_REMOVED, When: Before}, 0.05},
		{Fault{Op: OpGetSessionInfo, RV: pkcs11.CKR_SESSION_CLOSED, When: Before}, 0.05},
		{Fault{Op: OpGetTokenInfo, RV: pkcs11.CKR_TOKEN_NOT_PRESENT, When: Before}, 0.05},
		{Fault{Op: OpOpenSession, RV: pkcs11.CKR_DEVICE_ERROR, When: After}, 0.03},
		{Fault{Op: OpLogin, RV: pkcs11.CKR_DEVICE_ERROR, When: Before}, 0.03},
		{Fault{Op: OpInitialize, RV: pkcs11.CKR_DEVICE_ERROR, When: Before}, 0.03},
		{Fault{Op: OpFinalize, RV: pkcs11.CKR_GENERAL_ERROR, When: Before}, 0.05},
	}
}

// FailAtRates is FailRandomly for each of rates.
func (in *Injector) FailAtRates(rates []Rate) {
	for _, r := range rates {
		in.FailRandomly(r.Fault, r.P)
	}
}

// Seed reseeds the generator behind FailRandomly, so a failing run can be
// repeated (as far as the interleaving of concurrent callers allows).
func (in *Injector) Seed(seed uint64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// Clear drops every planned fault; calls go straight through again.
func (in *Injector) Clear() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.rules = nil
}

// Injected is the number of faults injected so far, in all or, given
// names, in those calls.
func (in *Injector) Injected(ops ...string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return sum(in.injected, ops)
}

// Calls is the number of calls made so far, in all or in the named ones.
func (in *Injector) Calls(ops ...string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return sum(in.calls, ops)
}

func sum(m map[string]int, ops []string) int {
	n := 0
	if len(ops) == 0 {
		for _, v := range m {
			n += v
		}
		return n
	}
	for _, op := range ops {
		n += m[op]
	}
	return n
}

// OpenSessions is the number of sessions the token opened (including those
// whose answer a fault hid from the caller) and that no C_CloseSession,
// C_CloseAllSessions or C_Finalize has closed since.
func (in *Injector) OpenSessions() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.open)
}

// SessionCounts is how many sessions the token opened and closed in all.
func (in *Injector) SessionCounts() (opened, closed int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.opened, in.closed
}

// Summary lists the injected faults per call, for a test's log.
func (in *Injector) Summary() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []string
	for op, n := range in.injected {
		out = append(out, op+"="+strconv.Itoa(n))
	}
	sort.Strings(out)
	return out
}

// plan counts the call and decides its fault, if any; it sleeps through a
// planned delay outside the lock.
func (in *Injector) plan(op string) (f Fault, strike bool) {
	in.mu.Lock()
	in.calls[op]++
	for i, r := range in.rules {
		if r.f.Op != op {
			continue
		}
		if r.left < 0 {
			if in.rng.Float64() >= r.rate {
				continue
			}
		} else {
			r.left--
			if r.left == 0 {
				in.rules = append(in.rules[:i:i], in.rules[i+1:]...)
			}
		}
		f, strike = r.f, true
		in.injected[op]++
		break
	}
	in.mu.Unlock()
	if strike && f.Delay > 0 {
		time.Sleep(f.Delay)
	}
	return f, strike
}

// call runs one PKCS#11 call through the plan: fn is the real call.
func (in *Injector) call(op string, fn func() error) error {
	f, strike := in.plan(op)
	if strike && f.When == Before && f.RV != 0 && op != OpSign && op != OpFindObjectsFinal {
		return pkcs11.Error(f.RV)
	}
	err := fn()
	if strike && f.RV != 0 {
		return pkcs11.Error(f.RV)
	}
	return err
}

func (in *Injector) Initialize(opts ...pkcs11.InitializeOption) error {
	return in.call(OpInitialize, func() error { return in.inner.Initialize(opts...) })
}

func (in *Injector) Finalize() error {
	return in.call(OpFinalize, func() error {
		err := in.inner.Finalize()
		if err == nil {
			in.mu.Lock()
			in.closed += len(in.open)
			clear(in.open)
			in.mu.Unlock()
		}
		return err
	})
}

// Destroy unloads the library; it has no return value to fault.
func (in *Injector) Destroy() { in.inner.Destroy() }

func (in *Injector) GetInfo() (info pkcs11.Info, err error) {
	err = in.call(OpGetInfo, func() (e error) { info, e = in.inner.GetInfo(); return })
	return
}

func (in *Injector) GetSlotList(tokenPresent bool) (slots []uint, err error) {
	err = in.call(OpGetSlotList, func() (e error) { slots, e = in.inner.GetSlotList(tokenPresent); return })
	return
}

func (in *Injector) GetTokenInfo(slotID uint) (ti pkcs11.TokenInfo, err error) {
	err = in.call(OpGetTokenInfo, func() (e error) { ti, e = in.inner.GetTokenInfo(slotID); return })
	return
}

func (in *Injector) InitToken(slotID uint, pin string, label string) error {
	return in.call(OpInitToken, func() error { return in.inner.InitToken(slotID, pin, label) })
}

func (in *Injector) InitPIN(sh pkcs11.SessionHandle, pin string) error {
	return in.call(OpInitPIN, func() error { return in.inner.InitPIN(sh, pin) })
}

func (in *Injector) SetPIN(sh pkcs11.SessionHandle, oldpin string, newpin string) error {
	return in.call(OpSetPIN, func() error { return in.inner.SetPIN(sh, oldpin, newpin) })
}

func (in *Injector) OpenSession(slotID uint, flags uint) (sh pkcs11.SessionHandle, err error) {
	err = in.call(OpOpenSession, func() error {
		h, e := in.inner.OpenSession(slotID, flags)
		if e == nil {
			in.mu.Lock()
			in.open[h] = slotID
			in.opened++
			in.mu.Unlock()
			sh = h
		}
		return e
	})
	if err != nil {
		sh = 0
	}
	return
}

func (in *Injector) CloseSession(sh pkcs11.SessionHandle) error {
	return in.call(OpCloseSession, func() error {
		err := in.inner.CloseSession(sh)
		if err == nil {
			in.forget(func(h pkcs11.SessionHandle, _ uint) bool { return h == sh })
		}
		return err
	})
}

func (in *Injector) CloseAllSessions(slotID uint) error {
	return in.call(OpCloseAllSessions, func() error {
		err := in.inner.CloseAllSessions(slotID)
		if err == nil {
			in.forget(func(_ pkcs11.SessionHandle, slot uint) bool { return slot == slotID })
		}
		return err
	})
}

func (in *Injector) forget(match func(pkcs11.SessionHandle, uint) bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for h, slot := range in.open {
		if match(h, slot) {
			delete(in.open, h)
			in.closed++
		}
	}
}

func (in *Injector) GetSessionInfo(sh pkcs11.SessionHandle) (si pkcs11.SessionInfo, err error) {
	err = in.call(OpGetSessionInfo, func() (e error) { si, e = in.inner.GetSessionInfo(sh); return })
	return
}

func (in *Injector) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	return in.call(OpLogin, func() error { return in.inner.Login(sh, userType, pin) })
}

func (in *Injector) Logout(sh pkcs11.SessionHandle) error {
	return in.call(OpLogout, func() error { return in.inner.Logout(sh) })
}

func (in *Injector) CreateObject(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) (oh pkcs11.ObjectHandle, err error) {
	err = in.call(OpCreateObject, func() (e error) { oh, e = in.inner.CreateObject(sh, temp); return })
	return
}

func (in *Injector) CopyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, temp []*pkcs11.Attribute) (oh pkcs11.ObjectHandle, err error) {
	err = in.call(OpCopyObject, func() (e error) { oh, e = in.inner.CopyObject(sh, o, temp); return })
	return
}

func (in *Injector) DestroyObject(sh pkcs11.SessionHandle, oh pkcs11.ObjectHandle) error {
	return in.call(OpDestroyObject, func() error { return in.inner.DestroyObject(sh, oh) })
}

func (in *Injector) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) (attrs []*pkcs11.Attribute, err error) {
	err = in.call(OpGetAttributeValue, func() (e error) { attrs, e = in.inner.GetAttributeValue(sh, o, a); return })
	return
}

func (in *Injector) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	return in.call(OpSetAttributeValue, func() error { return in.inner.SetAttributeValue(sh, o, a) })
}

func (in *Injector) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	return in.call(OpFindObjectsInit, func() error { return in.inner.FindObjectsInit(sh, temp) })
}

func (in *Injector) FindObjects(sh pkcs11.SessionHandle, max int) (hs []pkcs11.ObjectHandle, more bool, err error) {
	err = in.call(OpFindObjects, func() (e error) { hs, more, e = in.inner.FindObjects(sh, max); return })
	return
}

func (in *Injector) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	return in.call(OpFindObjectsFinal, func() error { return in.inner.FindObjectsFinal(sh) })
}

func (in *Injector) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public, private []*pkcs11.Attribute) (pub, priv pkcs11.ObjectHandle, err error) {
	err = in.call(OpGenerateKeyPair, func() (e error) { pub, priv, e = in.inner.GenerateKeyPair(sh, m, public, private); return })
	return
}

func (in *Injector) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	return in.call(OpSignInit, func() error { return in.inner.SignInit(sh, m, o) })
}

func (in *Injector) Sign(sh pkcs11.SessionHandle, message []byte) (sig []byte, err error) {
	err = in.call(OpSign, func() (e error) { sig, e = in.inner.Sign(sh, message); return })
	if err != nil {
		sig = nil
	}
	return
}

func (in *Injector) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrappingkey, key pkcs11.ObjectHandle) (wrapped []byte, err error) {
	err = in.call(OpWrapKey, func() (e error) { wrapped, e = in.inner.WrapKey(sh, m, wrappingkey, key); return })
	return
}

func (in *Injector) UnwrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, unwrappingkey pkcs11.ObjectHandle, wrappedkey []byte, a []*pkcs11.Attribute) (oh pkcs11.ObjectHandle, err error) {
	err = in.call(OpUnwrapKey, func() (e error) { oh, e = in.inner.UnwrapKey(sh, m, unwrappingkey, wrappedkey, a); return })
	return
}

var _ hsm.Cryptoki = (*Injector)(nil)
