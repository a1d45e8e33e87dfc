package jsonstrict

import (
	"cmp"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"sync"
	"unicode"
)

// shapeKind is how encoding/json fills a type from a JSON object or array.
type shapeKind uint8

const (
	shapeFree   shapeKind = iota // interface{}, or no type: any names, none repeated
	shapeOpaque                  // a json.Unmarshaler: its own business
	shapeStruct                  // exact field names, none repeated
	shapeMap                     // any keys, none repeated
	shapeList                    // slice or array: each element
)

// shape is what CheckMembers needs to know of a type.
type shape struct {
	kind   shapeKind
	fields map[string]int // struct: member name → index in types
	names  []string       // struct: the member names, in field order
	types  []reflect.Type // struct: each member's type
	elem   reflect.Type   // map value, list element
}

var (
	shapes        sync.Map // reflect.Type → *shape; types are few and fixed
	freeShape     = &shape{kind: shapeFree}
	unmarshalerTy = reflect.TypeFor[json.Unmarshaler]()
)

func shapeOf(t reflect.Type) *shape {
	if t == nil {
		return freeShape
	}
	if s, ok := shapes.Load(t); ok {
		return s.(*shape)
	}
	s, _ := shapes.LoadOrStore(t, newShape(t))
	return s.(*shape)
}

func newShape(t reflect.Type) *shape {
	// As encoding/json's indirect: a named type through its address, then
	// every pointer on the way to the value.
	if t.Kind() != reflect.Pointer && t.Name() != "" && reflect.PointerTo(t).Implements(unmarshalerTy) {
		return &shape{kind: shapeOpaque}
	}
	for t.Kind() == reflect.Pointer {
		if t.Implements(unmarshalerTy) {
			return &shape{kind: shapeOpaque}
		}
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		s := &shape{kind: shapeStruct, fields: map[string]int{}}
		for _, f := range jsonFields(t) {
			s.fields[f.name] = len(s.types)
			s.names = append(s.names, f.name)
			s.types = append(s.types, f.typ)
		}
		return s
	case reflect.Map:
		return &shape{kind: shapeMap, elem: t.Elem()}
	case reflect.Slice, reflect.Array:
		return &shape{kind: shapeList, elem: t.Elem()}
	}
	return freeShape
}

type jsonField struct {
	name   string
	typ    reflect.Type
	depth  int
	tagged bool
}

// jsonFields are the members encoding/json fills in a struct, after its
// typeFields (names and types only): exported fields by tag name, else Go
// name, none for `json:"-"`; the fields of untagged embedded structs
// promoted, the shallowest and then the tagged one taking a name, a tie
// taking it from all.
func jsonFields(t reflect.Type) []jsonField {
	var all []jsonField
	visited := map[reflect.Type]bool{}
	level, count := []reflect.Type{t}, map[reflect.Type]int{}
	for depth := 0; len(level) > 0; depth++ {
		var next []reflect.Type
		nextCount := map[reflect.Type]int{}
		for _, st := range level {
			if visited[st] {
				continue
			}
			visited[st] = true
			for i := range st.NumField() {
				sf := st.Field(i)
				ft := sf.Type
				if ft.Name() == "" && ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if sf.Anonymous {
					if !sf.IsExported() && ft.Kind() != reflect.Struct {
						continue
					}
				} else if !sf.IsExported() {
					continue
				}
				tag := sf.Tag.Get("json")
				if tag == "-" {
					continue
				}
				name, _, _ := strings.Cut(tag, ",")
				if !validTagName(name) {
					name = ""
				}
				if name == "" && sf.Anonymous && ft.Kind() == reflect.Struct {
					if nextCount[ft]++; nextCount[ft] == 1 {
						next = append(next, ft)
					}
					continue
				}
				f := jsonField{name: name, typ: sf.Type, depth: depth, tagged: name != ""}
				if name == "" {
					f.name = sf.Name
				}
				all = append(all, f)
				if count[st] > 1 {
					// The same struct embedded twice at one level: a tie.
					all = append(all, f)
				}
			}
		}
		level, count = next, nextCount
	}
	slices.SortStableFunc(all, func(a, b jsonField) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		if c := cmp.Compare(a.depth, b.depth); c != 0 {
			return c
		}
		switch {
		case a.tagged == b.tagged:
			return 0
		case a.tagged:
			return -1
		}
		return 1
	})
	var out []jsonField
	for i := 0; i < len(all); {
		j := i + 1
		for j < len(all) && all[j].name == all[i].name {
			j++
		}
		if j == i+1 || all[i].depth != all[i+1].depth || all[i].tagged != all[i+1].tagged {
			out = append(out, all[i])
		}
		i = j
	}
	return out
}

// validTagName is encoding/json's isValidTag: other tag names are ignored.
func validTagName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			return false
		}
	}
	return true
}

// unknown is the error for a member name that is not exactly a field's.
func (s *shape) unknown(name string) error {
	e := &MemberError{Name: name}
	for _, n := range s.names {
		if strings.EqualFold(n, name) {
			e.Want = n
			break
		}
	}
	return e
}
