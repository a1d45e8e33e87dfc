package store

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

func testKey(id string, ckaid byte, created time.Time) Key {
	return Key{
		ID: id, Label: id + "-label", CKAID: []byte{ckaid, 0x01}, Algorithm: AlgSecp256k1,
		Chain: "ethereum", Network: "1337", PublicKey: []byte{0x04, ckaid, 0xaa},
		Address: "0x00000000000000000000000000000000000000" + string(rune('a'+ckaid%6)) + "0", CreatedAt: created,
	}
}

func TestKeys(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	// Inserted out of order: the list must follow created_at, then id.
	keys := []Key{testKey("b", 2, t0), testKey("c", 3, t0.Add(time.Second)), testKey("a", 1, t0)}
	for _, k := range keys {
		if err := s.InsertKey(ctx, k); err != nil {
			t.Fatalf("InsertKey(%s): %v", k.ID, err)
		}
	}
	got, err := s.GetKey(ctx, "c")
	if err != nil || !reflect.DeepEqual(got, keys[1]) {
		t.Fatalf("GetKey(c) = %+v, %v; want %+v", got, err, keys[1])
	}
	list, err := s.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range list {
		ids = append(ids, k.ID)
	}
	if !reflect.DeepEqual(ids, []string{"a", "b", "c"}) {
		t.Fatalf("ListKeys order %v, want [a b c]", ids)
	}

	if _, err := s.GetKey(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetKey(unknown) = %v, want ErrNotFound", err)
	}

	tests := []struct {
		name string
		key  Key
		want error
	}{
		{"duplicate id", testKey("a", 9, t0), ErrConflict},
		{"duplicate CKA_ID", testKey("z", 1, t0), ErrConflict},
		{"no id", testKey("", 10, t0), ErrInvalid},
		{"no CKA_ID", func() Key { k := testKey("y", 11, t0); k.CKAID = nil; return k }(), ErrInvalid},
		{"no public key", func() Key { k := testKey("y", 12, t0); k.PublicKey = nil; return k }(), ErrInvalid},
		{"unknown algorithm", func() Key { k := testKey("y", 13, t0); k.Algorithm = "rsa"; return k }(), ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.InsertKey(ctx, tt.key); !errors.Is(err, tt.want) {
				t.Fatalf("InsertKey = %v, want %v", err, tt.want)
			}
		})
	}
	if list, _ := s.ListKeys(ctx); len(list) != 3 {
		t.Fatalf("rejected inserts left rows: %d keys", len(list))
	}
}

func TestInsertKeyDefaultsCreatedAt(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	before := time.Now()
	if err := s.InsertKey(ctx, testKey("k", 1, time.Time{})); err != nil {
		t.Fatal(err)
	}
	k, err := s.GetKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if k.CreatedAt.Before(before.Add(-time.Second)) || k.CreatedAt.After(time.Now().Add(time.Second)) {
		t.Fatalf("CreatedAt %v not near now", k.CreatedAt)
	}
}
