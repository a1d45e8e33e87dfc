package config

import (
	"bytes"
	"math"
	"os"
	"reflect"
	"regexp"
	"testing"
)

// redactedPin finds a pin-value in the effective configuration that is not
// masked.
var redactedPin = regexp.MustCompile(`pin-value=([^;&?"'\s]*)`)

// FuzzParse: any configuration document is refused or accepted, never a
// panic; what is accepted holds the documented bounds (health thresholds
// are numbers); the effective
// configuration (Redacted, what `appliance config` prints and reloads
// compare) masks any pin-value and parses back to the same configuration;
// and parsing is deterministic (same document, same digest).
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../../firmware-config/appliance.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "hsm: {uri: \"pkcs11:token=t?module-path=/m.so&pin-value=1234\"}\n"))
	f.Add([]byte(minimal + "health: {hsm_error_rate_max: 0.5, window: 1m, min_samples: 5}\nmetrics: {listen: \"unix:/run/m.sock\"}\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		c, err := Parse(doc)
		if err != nil {
			if c != nil {
				t.Fatal("a refused document returned a configuration")
			}
			return
		}
		if c.HSM.PoolSize < 1 || c.HSM.PoolSize > 1024 || c.HTTP.MaxBodyBytes < 1024 || c.HTTP.MaxBodyBytes > 64<<20 ||
			c.Health.WindowRequests < 1 || c.Health.MinSamples < 1 || c.Health.MinSamples > c.Health.WindowRequests ||
			c.TLS.Cert == "" || c.HSM.URI == "" || c.Store.Path == "" || (c.Mode != ModeDev && c.Mode != ModeProduction) {
			t.Fatalf("accepted configuration out of bounds: %+v", c)
		}
		// A threshold is 0 (its default), negative (off) or a bound; NaN is
		// none of them and would silently disable its alert.
		for _, v := range []float64{c.Health.HSMErrorRateMax, c.Health.MinFreeDiskPercent} {
			if math.IsNaN(v) {
				t.Fatalf("accepted a health threshold that is not a number: %+v", c.Health)
			}
		}
		if again, err := Parse(doc); err != nil || again.Digest() != c.Digest() || !bytes.Equal(again.Raw(), doc) {
			t.Fatal("parsing is not deterministic")
		}
		eff, err := c.Redacted()
		if err != nil {
			t.Fatalf("effective configuration: %v", err)
		}
		for _, m := range redactedPin.FindAllSubmatch(eff, -1) {
			if string(m[1]) != "REDACTED" && bytes.Contains([]byte(c.HSM.URI), m[0]) {
				t.Fatalf("the effective configuration shows the PIN: %s", m[0])
			}
		}
		back, err := Parse(eff)
		if err != nil {
			t.Fatalf("the effective configuration does not parse: %v\n%s", err, eff)
		}
		// Read back, it is the same configuration: printed again it is the
		// same document, and the values a reload compares are equal.
		eff2, err := back.Redacted()
		if err != nil || !bytes.Equal(eff2, eff) {
			t.Fatalf("the effective configuration is not a fixed point (%v):\n%s\n%s", err, eff, eff2)
		}
		if back.HSM.URI != redactPinValue(c.HSM.URI) || !reflect.DeepEqual(back.Health, c.Health) || !reflect.DeepEqual(back.HTTP, c.HTTP) ||
			back.Metrics.Address() != c.Metrics.Address() || len(back.Principals) != len(c.Principals) || back.Seal.AutoUnseal != c.Seal.AutoUnseal {
			t.Fatalf("the effective configuration reads back differently:\n%+v\n%+v", *back, *c)
		}
	})
}
