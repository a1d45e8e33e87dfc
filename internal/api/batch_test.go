package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/custodysigner/appliance/internal/apierr"
	"github.com/custodysigner/appliance/internal/config"
)

func TestDecodeSignBatch(t *testing.T) {
	one := `{"key_id":"k","chain":"ethereum","payload":"0x02","idempotency_key":"a"}`
	tests := []struct {
		name   string
		body   string
		status int      // the whole batch's refusal; 0: accepted
		items  []string // accepted: each item's refusal code, "" for decoded
	}{
		{"one", `{"requests":[` + one + `]}`, 0, []string{""}},
		{"at the limit", `{"requests":[` + strings.Repeat(one+",", 3) + one + `]}`, 0, []string{"", "", "", ""}},
		{"item refusals stay with their item", `{"requests":[` + one + `,{"key_id":1},{"keyid":"k"},7]}`, 0,
			[]string{"", "bad_request", "bad_request", "bad_request"}},
		// null decodes to an empty request, which the signer refuses as
		// POST /v1/sign refuses a body of null.
		{"more item refusals", `{"requests":[` + one + `,null,"x",[]]}`, 0, []string{"", "", "bad_request", "bad_request"}},
		{"item over the per-request limit", `{"requests":[{"payload":"` + strings.Repeat("a", 300) + `"},` + one + `]}`, 0,
			[]string{"too_large", ""}},
		{"over the limit", `{"requests":[` + strings.Repeat(one+",", 4) + one + `]}`, http.StatusRequestEntityTooLarge, nil},
		{"empty list", `{"requests":[]}`, http.StatusBadRequest, nil},
		{"null list", `{"requests":null}`, http.StatusBadRequest, nil},
		{"no list", `{}`, http.StatusBadRequest, nil},
		{"unknown field", `{"requests":[` + one + `],"atomic":true}`, http.StatusBadRequest, nil},
		{"not an object", `[` + one + `]`, http.StatusBadRequest, nil},
		{"not JSON", `requests`, http.StatusBadRequest, nil},
		{"empty body", ``, http.StatusBadRequest, nil},
		{"trailing data", `{"requests":[` + one + `]} {}`, http.StatusBadRequest, nil},
		{"truncated", `{"requests":[` + one, http.StatusBadRequest, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			items, err := decodeSignBatch(strings.NewReader(tc.body), 4, 256)
			if tc.status != 0 {
				var ae *apierr.Error
				if !errors.As(err, &ae) || ae.Status != tc.status {
					t.Fatalf("err %v, want status %d", err, tc.status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, it := range items {
				code := ""
				if it.err != nil {
					code = it.err.Code
				}
				got = append(got, code)
			}
			if !reflect.DeepEqual(got, tc.items) {
				t.Fatalf("item codes %q, want %q", got, tc.items)
			}
			// Every accepted case that starts with a decoded item starts with one.
			if want := (SignBody{KeyID: "k", Chain: "ethereum", Payload: "0x02", IdempotencyKey: "a"}); tc.items[0] == "" && items[0].body != want {
				t.Fatalf("first item decoded as %+v", items[0].body)
			}
		})
	}
}

func TestBatchGroups(t *testing.T) {
	items := []batchItem{
		{body: SignBody{IdempotencyKey: "a"}},
		{body: SignBody{}},
		{body: SignBody{IdempotencyKey: "b"}},
		{body: SignBody{IdempotencyKey: "a"}},
		{err: apierr.New(http.StatusBadRequest, apierr.CodeBadRequest, "x")},
		{body: SignBody{}},
		{body: SignBody{IdempotencyKey: "a"}},
	}
	want := [][]int{{0, 3, 6}, {1}, {2}, {5}}
	if got := batchGroups(items); !reflect.DeepEqual(got, want) {
		t.Fatalf("groups %v, want %v", got, want)
	}
}

func TestBatchBodyLimit(t *testing.T) {
	for _, c := range []struct {
		h    config.HTTP
		want int64
	}{
		{config.HTTP{MaxBodyBytes: 1 << 20, SignBatchMax: 64}, 4 << 20},
		{config.HTTP{MaxBodyBytes: 1 << 20}, 4 << 20}, // default 64
		{config.HTTP{MaxBodyBytes: 1 << 20, SignBatchMax: 2}, 1 << 20},
		{config.HTTP{MaxBodyBytes: 1 << 20, SignBatchMax: 1024}, 64 << 20},
	} {
		if got := batchBodyLimit(c.h); got != c.want {
			t.Errorf("%+v: %d, want %d", c.h, got, c.want)
		}
	}
}

// FuzzDecodeSignBatch: any body is either refused as a whole with a 400 or
// 413 error object, or yields 1..max items, each decoded or refused on its
// own with a 400 or 413; a decoded item survives a round trip through its
// JSON form. Never a panic.
func FuzzDecodeSignBatch(f *testing.F) {
	one := `{"key_id":"eth-dev","chain":"ethereum","network":"1337","payload":"0x02c0","idempotency_key":"w-1"}`
	for _, seed := range []string{
		`{"requests":[` + one + `]}`,
		`{"requests":[` + one + `,` + one + `,{"key_id":"btc","chain":"bitcoin","payload":"cHNidP8B","expect":{"destination":"bc1q","amount":"1","asset":"BTC"}}]}`,
		`{"requests":[{"key_id":1},7,null,"x",[],{}]}`,
		`{"requests":[]}`, `{"requests":null}`, `{}`, `[]`, `null`, ``, `{"requests":[{}]} x`,
		`{"requests":[{"payload":"` + strings.Repeat("f", 600) + `"}]}`,
		`{"requests":[` + strings.Repeat(one+",", 8) + one + `]}`,
		`{"requests":[{"key_id":"\u0000\ud800"}],"requests":[]}`,
	} {
		f.Add([]byte(seed))
	}
	const maxItems, itemMax = 8, 512
	f.Fuzz(func(t *testing.T, data []byte) {
		items, err := decodeSignBatch(bytes.NewReader(data), maxItems, itemMax)
		if err != nil {
			var ae *apierr.Error
			if !errors.As(err, &ae) || (ae.Status != http.StatusBadRequest && ae.Status != http.StatusRequestEntityTooLarge) ||
				(ae.Code != apierr.CodeBadRequest && ae.Code != apierr.CodeTooLarge) {
				t.Fatalf("whole-batch refusal %#v", err)
			}
			return
		}
		if len(items) < 1 || len(items) > maxItems {
			t.Fatalf("%d items accepted", len(items))
		}
		for i, it := range items {
			if it.err != nil {
				if it.err.Status != http.StatusBadRequest && it.err.Status != http.StatusRequestEntityTooLarge {
					t.Fatalf("item %d refused with %d %s", i, it.err.Status, it.err.Code)
				}
				continue
			}
			raw, err := json.Marshal(it.body)
			if err != nil {
				t.Fatalf("item %d: %v", i, err)
			}
			var again SignBody
			if err := decodeStrict(bytes.NewReader(raw), &again); err != nil || !reflect.DeepEqual(again, it.body) {
				t.Fatalf("item %d: round trip %+v → %s → %+v (%v)", i, it.body, raw, again, err)
			}
		}
		if groups := batchGroups(items); len(groups) > len(items) {
			t.Fatalf("%d groups for %d items", len(groups), len(items))
		}
	})
}
