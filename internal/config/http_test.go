package config

import (
	"strings"
	"testing"
	"time"
)

// TestHTTPBounds: the hostile-client bounds' defaults and refusals.
func TestHTTPBounds(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	h := c.HTTP
	if h.ReadHeaderTimeout.D() != 5*time.Second || h.MaxInFlight != 512 || h.RatePerPrincipal != 5000 || h.RateBurst != 10000 || h.MaxHeaderBytes != 16<<10 {
		t.Fatalf("defaults: %+v", h)
	}
	if c, err := Parse([]byte(minimal + "http: {read_timeout: 2s, rate_per_principal: 10}\n")); err != nil ||
		c.HTTP.ReadHeaderTimeout.D() != 2*time.Second || c.HTTP.RateBurst != 20 {
		t.Fatalf("read_header_timeout defaults to at most read_timeout, burst to twice the rate: %v %+v", err, c.HTTP)
	}
	if c, err := Parse([]byte(minimal + "http: {rate_per_principal: -1}\n")); err != nil || c.HTTP.RatePerPrincipal >= 0 {
		t.Fatalf("a negative rate turns the limit off: %v", err)
	}
	for _, tc := range []struct {
		doc  string
		want int
	}{
		{"", 256},                            // half of the default 512
		{"http: {max_in_flight: 100}\n", 50}, // half of max_in_flight
		{"http: {max_in_flight: 1}\n", 1},    // never 0
		{"http: {max_in_flight_per_principal: 7}\n", 7},
		{"http: {max_in_flight: 4, max_in_flight_per_principal: 4}\n", 4},
		{"http: {max_in_flight_per_principal: -1}\n", -1}, // off, kept as set
	} {
		c, err := Parse([]byte(minimal + tc.doc))
		if err != nil || c.HTTP.MaxInFlightPerPrincipal != tc.want {
			t.Errorf("%q: max_in_flight_per_principal %+v (%v), want %d", tc.doc, c, err, tc.want)
		}
	}
	for _, doc := range []string{
		"http: {read_header_timeout: 20s}\n",
		"http: {read_timeout: -1s}\n",
		"http: {max_in_flight: -1}\n",
		"http: {max_in_flight: 100000}\n",
		"http: {max_in_flight_per_principal: 513}\n",
		"http: {max_in_flight: 4, max_in_flight_per_principal: 5}\n",
		"http: {max_header_bytes: 100}\n",
		"http: {rate_per_principal: .nan}\n",
		"http: {rate_per_principal: .inf}\n",
		"http: {rate_per_principal: 10, rate_burst: -5}\n",
	} {
		if _, err := Parse([]byte(minimal + doc)); err == nil || !strings.Contains(err.Error(), "http") {
			t.Errorf("%s accepted (%v)", strings.TrimSpace(doc), err)
		}
	}
}
