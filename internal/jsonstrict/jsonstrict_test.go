package jsonstrict

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/custodysigner/appliance/internal/jsonstrict/jsonstricttest"
)

// The zoo has what encoding/json makes of struct fields: tags, "-" and
// "-,", omitempty and ,string, an invalid tag name, embedded structs
// (promoted, hidden by a shallower field, tied, tagged, through a pointer),
// pointers, lists, a map, interface{}, json.RawMessage and a type that
// unmarshals itself.
type zoo struct {
	ZooEmbedded
	*ZooPtr
	zooTie1
	zooTie2
	zooViaA
	zooViaB
	ZooTagged `json:"tagged"`

	Shadow   string               `json:"shadow"`
	Skip     string               `json:"-"`
	Dash     string               `json:"-,"`
	Untagged string               //
	BadTag   string               `json:"a\"b"`
	Omit     *string              `json:"omit,omitempty"`
	Quoted   int                  `json:"quoted,string"`
	Inner    zooInner             `json:"inner"`
	PtrInner **zooInner           `json:"ptr_inner"`
	List     []zooInner           `json:"list"`
	PtrList  []*zooInner          `json:"ptr_list"`
	Array    [2]zooInner          `json:"array"`
	Map      map[string]zooInner  `json:"map"`
	Any      any                  `json:"any"`
	Raw      json.RawMessage      `json:"raw"`
	Custom   zooUnmarshaler       `json:"custom"`
	Nested   map[string][]zooDeep `json:"nested"`
	private  string
}

type zooInner struct {
	A string `json:"a"`
	B int    `json:"b,omitempty"`
}

type zooDeep struct {
	Inner *zooInner `json:"deep"`
}

// ZooEmbedded is promoted: e1, and shadow hidden by zoo.Shadow.
type ZooEmbedded struct {
	E1     string `json:"e1"`
	Shadow string `json:"shadow"`
}

// ZooPtr is promoted through a pointer: p1.
type ZooPtr struct {
	P1 string `json:"p1"`
}

// ZooTagged is a member, not promoted.
type ZooTagged struct {
	T1 string `json:"t1"`
}

// Two "Tie" at the same depth, neither tagged: encoding/json knows neither.
type zooTie1 struct {
	Tie string
	Own string `json:"own1"`
}
type zooTie2 struct {
	Tie string
	Own string `json:"own2"`
}

// ZooShared is embedded twice at the same depth (through zooViaA and
// zooViaB): encoding/json knows none of its fields.
type ZooShared struct {
	Shared string
}
type zooViaA struct {
	ZooShared
	A string `json:"via_a"`
}
type zooViaB struct {
	ZooShared
	B string `json:"via_b"`
}

// zooUnmarshaler takes any JSON; marshalled it is the opaque mark.
type zooUnmarshaler struct{ raw []byte }

func (u *zooUnmarshaler) UnmarshalJSON(b []byte) error {
	u.raw = append(u.raw[:0], b...)
	return nil
}
func (zooUnmarshaler) MarshalJSON() ([]byte, error) {
	return []byte(`"` + jsonstricttest.OpaqueMark + `"`), nil
}

// zooExample has every member set, so that its JSON names them all.
func zooExample() zoo {
	s := "x"
	in := &zooInner{A: "a", B: 1}
	return zoo{ZooEmbedded: ZooEmbedded{E1: "x"}, ZooPtr: &ZooPtr{P1: "x"}, zooTie1: zooTie1{Own: "x"}, zooTie2: zooTie2{Own: "x"},
		zooViaA: zooViaA{A: "x"}, zooViaB: zooViaB{B: "x"},
		ZooTagged: ZooTagged{T1: "x"}, Omit: &s, Inner: *in, PtrInner: &in, List: []zooInner{*in}, PtrList: []*zooInner{in},
		Array: [2]zooInner{*in, *in}, Map: map[string]zooInner{"*": *in}, Any: jsonstricttest.FreeMark, Raw: json.RawMessage(`"` + jsonstricttest.OpaqueMark + `"`),
		Nested: map[string][]zooDeep{"*": {{Inner: in}}}}
}

var zooType = jsonstricttest.Type{Name: "zoo", New: func() any { return new(zoo) }, Example: zooExample()}

// TestJSONFieldsMatchEncoder: the names CheckMembers takes for the zoo are
// the names encoding/json writes for it.
func TestJSONFieldsMatchEncoder(t *testing.T) {
	raw, err := json.Marshal(zooExample())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for k := range m {
		want = append(want, k)
	}
	for _, f := range jsonFields(reflect.TypeFor[zoo]()) {
		got = append(got, f.name)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("fields %q, encoding/json writes %q", got, want)
	}
}

// zooCases are bodies for the zoo, in both answers: seeds of FuzzDecode.
var zooCases = []string{
	`{"e1":"x","p1":"y","own1":"a","own2":"b","tagged":{"t1":"z"},"shadow":"s","-":"d","Untagged":"u","BadTag":"b"}`,
	`{"omit":null,"quoted":"7","inner":{"a":"x","b":2},"ptr_inner":{"a":"y"},"list":[{"a":"1"},{"b":2}],"ptr_list":[null,{"a":"2"}]}`,
	`{"array":[{"a":"1"},{"a":"2"},{"a":"3"}],"map":{"k":{"a":"x"},"K":{"a":"y"}},"nested":{"n":[{"deep":{"a":"x"}}]}}`,
	`{"any":{"A":1,"a":[{"x":1,"X":2}]},"raw":{"A":1,"A":2},"custom":{"x":1,"x":2}}`,
	`{"E1":"x"}`, `{"P1":"x"}`, `{"tagged":{"T1":"z"}}`, `{"SHADOW":"s"}`, `{"untagged":"u"}`, `{"inner":{"A":"x"}}`,
	`{"ptr_inner":{"a":"x","a":"y"}}`, `{"list":[{"a":"1"},{"a":"1","B":2}]}`, `{"ptr_list":[{"A":"x"}]}`,
	`{"array":[{"a":"1"},{"a":"2"},{"A":"3"}]}`, `{"map":{"k":{"a":"x"},"k":{"a":"y"}}}`, `{"map":{"k":{"A":"x"}}}`,
	`{"nested":{"n":[{"DEEP":{"a":"x"}}]}}`, `{"nested":{"n":[{"deep":{"a":"x","a":"x"}}]}}`,
	`{"any":{"a":{"b":1,"b":2}}}`, `{"any":[{"a":1,"a":2}]}`, `{"Tie":"x"}`, `{"tie":"x"}`, `{"Shared":"x"}`, `{"via_a":"x","via_b":"y"}`, `{"Via_A":"x"}`, `{"-":"d","-":"e"}`,
	`{"e1":"x","E1":"y"}`, `{"e1":"x","e\u0031":"y"}`, `{"\u0065\u0031":"x"}`, `{"inner":{"a":"\"","b":1}}`, `{"inner" : { "a" : "x" } , "e1":"\\"}`,
	"{\"\xff\":1,\"\xfe\":2}", `{"any":{"\ufffd":1,"` + "\xff" + `":2}}`, `null`, `[]`, `"x"`, `7`, `{}`, ` {"e1" :"x"} `, `{"e1":"x"} {}`,
}

// checkDecode is the property FuzzDecode tests: Decode accepts exactly
// what encoding/json accepts and whose member names are, by the oracle of
// jsonstricttest, each exactly one the encoder writes, none twice; and
// CheckMembers never panics, whatever the bytes.
func checkDecode(t *testing.T, data []byte) {
	t.Helper()
	_ = CheckMembers(data, new(zoo))
	if err := jsonstricttest.Check(Decode, data, zooType); err != nil {
		t.Fatal(err)
	}
}

// FuzzDecode: see checkDecode.
func FuzzDecode(f *testing.F) {
	for _, c := range zooCases {
		f.Add([]byte(c))
	}
	f.Fuzz(checkDecode)
}

// TestDecodeCases runs the property on the seeds (FuzzDecode explores from
// them).
func TestDecodeCases(t *testing.T) {
	for _, c := range zooCases {
		checkDecode(t, []byte(c))
	}
	// And the oracle is not vacuous: these are refused.
	for _, body := range []string{`{"E1":"x"}`, `{"ptr_list":[{"A":"x"}]}`, `{"map":{"k":{"a":"x"},"k":{"a":"y"}}}`, `{"any":[{"a":1,"a":2}]}`} {
		if ok, err := jsonstricttest.ExactNames([]byte(body), zooExample()); ok || err != nil {
			t.Errorf("the oracle takes %s for the zoo (%v)", body, err)
		}
	}
}

// TestDecodeErrors: each refusal is of its documented kind, and a member's
// names its path.
func TestDecodeErrors(t *testing.T) {
	errRead := errors.New("connection reset")
	tests := []struct {
		name string
		r    io.Reader
		is   []error      // errors.Is each
		not  []error      // and none of these
		msg  string       // the whole message
		want *MemberError // errors.As, rpath aside; nil: none
	}{
		{name: "unknown field", r: strings.NewReader(`{"inner":{"c":1}}`), not: []error{ErrTrailingData},
			msg: `json: unknown field "c"`},
		{name: "syntax", r: strings.NewReader(`{"e1" "x"}`), not: []error{ErrTrailingData},
			msg: "invalid character '\"' after object key"},
		{name: "short", r: strings.NewReader(`{"e1":`), is: []error{io.ErrUnexpectedEOF}, not: []error{ErrTrailingData},
			msg: "unexpected EOF"},
		{name: "read error in the value", r: io.MultiReader(strings.NewReader(`{"e1":`), iotest.ErrReader(errRead)),
			is: []error{errRead}, not: []error{ErrTrailingData}, msg: "connection reset"},
		{name: "trailing value", r: strings.NewReader(`{"e1":"x"} {}`), is: []error{ErrTrailingData},
			msg: "trailing data after the value"},
		{name: "trailing bracket", r: strings.NewReader(`{"e1":"x"}]`), is: []error{ErrTrailingData},
			msg: "trailing data after the value: invalid character ']' looking for beginning of value"},
		{name: "read error after the value", r: io.MultiReader(strings.NewReader(`{"e1":"x"}`), iotest.ErrReader(errRead)),
			is: []error{ErrTrailingData, errRead}, msg: "trailing data after the value: connection reset"},
		{name: "case", r: strings.NewReader(`{"inner":{"A":"x"}}`), not: []error{ErrTrailingData},
			msg:  `unknown member "inner.A" (member names are case-sensitive: "a")`,
			want: &MemberError{Name: "A", Want: "a"}},
		{name: "repeated in an element", r: strings.NewReader(`{"list":[{"a":"1"},{"a":"2","a":"3"}]}`),
			msg: `member "list[1].a" appears more than once`, want: &MemberError{Name: "a", Duplicate: true}},
		{name: "repeated map key", r: strings.NewReader(`{"nested":{"n":[],"n":[]}}`),
			msg: `member "nested.n" appears more than once`, want: &MemberError{Name: "n", Duplicate: true}},
		{name: "case, deep", r: strings.NewReader(`{"nested":{"n":[{"deep":null},{"DEEP":null}]}}`),
			msg:  `unknown member "nested.n[1].DEEP" (member names are case-sensitive: "deep")`,
			want: &MemberError{Name: "DEEP", Want: "deep"}},
		{name: "escaped, repeated", r: strings.NewReader(`{"e1":"x","e\u0031":"y"}`),
			msg: `member "e1" appears more than once`, want: &MemberError{Name: "e1", Duplicate: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Decode(tc.r, new(zoo))
			if err == nil {
				t.Fatal("accepted")
			}
			if err.Error() != tc.msg {
				t.Errorf("message %q, want %q", err, tc.msg)
			}
			for _, e := range tc.is {
				if !errors.Is(err, e) {
					t.Errorf("%v is not %v", err, e)
				}
			}
			for _, e := range tc.not {
				if errors.Is(err, e) {
					t.Errorf("%v is %v", err, e)
				}
			}
			var me *MemberError
			switch {
			case !errors.As(err, &me):
				if tc.want != nil {
					t.Errorf("%v is not a *MemberError", err)
				}
			case tc.want == nil:
				t.Errorf("%v is a *MemberError", err)
			case me.Name != tc.want.Name || me.Want != tc.want.Want || me.Duplicate != tc.want.Duplicate:
				t.Errorf("%+v, want %+v", me, tc.want)
			}
		})
	}
}

// TestDecodeWideStruct: more fields than one word of seen bits.
func TestDecodeWideStruct(t *testing.T) {
	var fields []reflect.StructField
	for i := range 70 {
		fields = append(fields, reflect.StructField{Name: fmt.Sprintf("F%d", i), Type: reflect.TypeFor[string](),
			Tag: reflect.StructTag(fmt.Sprintf(`json:"f%d"`, i))})
	}
	wide := reflect.StructOf(fields)
	for body, want := range map[string]bool{
		`{"f0":"a","f63":"b","f64":"c","f69":"d"}`: true,
		`{"f69":"a","f0":"b","f69":"c"}`:           false,
		`{"f64":"a","f63":"b","f64":"c"}`:          false,
		`{"F69":"a"}`:                              false,
	} {
		if err := Decode(strings.NewReader(body), reflect.New(wide).Interface()); (err == nil) != want {
			t.Errorf("%s: %v, want accepted %v", body, err, want)
		}
	}
}
