package ceremony

import (
	"bytes"
	"crypto/rand"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

// clock is an injectable time source for TTL tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestProgress(c *Ceremony) (*Progress, *clock) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	return NewProgress(c.ID, c.Threshold, c.Verifier, time.Minute, clk.Now), clk
}

func mustAdd(t *testing.T, p *Progress, text string, wantHave int) *Secret {
	t.Helper()
	s, have, err := p.Add(text)
	if err != nil {
		t.Fatalf("Add: %v", err)
	}
	if have != wantHave {
		t.Fatalf("Add: have %d, want %d", have, wantHave)
	}
	return s
}

func TestProgressUnseals(t *testing.T) {
	c := newTestCeremony(t, 3, 5)
	want := c.Secret.DerivePIN()
	for _, order := range [][]int{{0, 1, 2}, {4, 2, 0}, {3, 4, 1}} {
		p, _ := newTestProgress(c)
		nonce := p.Nonce()
		if s := mustAdd(t, p, c.Shares[order[0]].Encode(), 1); s != nil {
			t.Fatal("secret after one share")
		}
		if s := mustAdd(t, p, "\n"+c.Shares[order[1]].Encode()+"\n", 2); s != nil {
			t.Fatal("secret after two shares")
		}
		if p.Have() != 2 || p.Nonce() != nonce {
			t.Fatal("progress lost before threshold")
		}
		s := mustAdd(t, p, c.Shares[order[2]].Encode(), 3)
		if s == nil || !s.Verify(c.Verifier) {
			t.Fatal("no verified secret at threshold")
		}
		if got := s.DerivePIN(); !bytes.Equal(got, want) {
			t.Fatal("unsealed PIN differs from the ceremony's")
		}
		if p.Have() != 0 || p.Nonce() == nonce {
			t.Fatal("progress not cleared after combining")
		}
		s.Destroy()
	}
}

func TestProgressRefusals(t *testing.T) {
	c := newTestCeremony(t, 3, 5)
	other := newTestCeremony(t, 3, 5)
	sameIDOtherK := c.Shares[3]
	sameIDOtherK.Threshold = 2
	sameIDOtherN := c.Shares[3]
	sameIDOtherN.Total = 4
	sameData := c.Shares[0]
	sameData.Index = 4
	short := c.Shares[3]
	short.Data = short.Data[:16]
	typo := []byte(c.Shares[3].Encode())
	typo[40] ^= 'a' ^ 'b'

	tests := []struct {
		name string
		text string
		want error
	}{
		{"other ceremony", other.Shares[3].Encode(), ErrWrongCeremony},
		{"same share again", c.Shares[0].Encode(), ErrDuplicateShare},
		{"same share, spaced", "  " + c.Shares[0].Encode() + "\n", ErrDuplicateShare},
		{"same data, other index", sameData.Encode(), ErrDuplicateShare},
		{"other threshold", sameIDOtherK.Encode(), ErrWrongThreshold},
		{"other total", sameIDOtherN.Encode(), ErrWrongThreshold},
		{"short data", short.Encode(), ErrShareFormat},
		{"typo", string(typo), ErrShareFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := newTestProgress(c)
			mustAdd(t, p, c.Shares[0].Encode(), 1)
			nonce := p.Nonce()
			s, have, err := p.Add(tt.text)
			if !errors.Is(err, tt.want) && !(tt.want == ErrShareFormat && errors.Is(err, ErrShareChecksum)) {
				t.Fatalf("Add error = %v, want %v", err, tt.want)
			}
			if s != nil || have != 1 || p.Have() != 1 || p.Nonce() != nonce {
				t.Fatal("a refused share disturbed the attempt")
			}
			// The attempt carries on to a good unseal.
			mustAdd(t, p, c.Shares[1].Encode(), 2)
			if s := mustAdd(t, p, c.Shares[2].Encode(), 3); s == nil {
				t.Fatal("no secret after a refused share")
			} else {
				s.Destroy()
			}
		})
	}
}

// TestProgressWrongCombination forges a share with the right ceremony id
// and index but other data (its checksum recomputed by Encode).
func TestProgressWrongCombination(t *testing.T) {
	c := newTestCeremony(t, 3, 5)
	p, _ := newTestProgress(c)
	forged := c.Shares[2]
	forged.Data = make([]byte, SecretSize)
	if _, err := rand.Read(forged.Data); err != nil {
		t.Fatal(err)
	}
	mustAdd(t, p, c.Shares[0].Encode(), 1)
	mustAdd(t, p, c.Shares[1].Encode(), 2)
	nonce := p.Nonce()
	s, have, err := p.Add(forged.Encode())
	if !errors.Is(err, ErrWrongCombination) || s != nil || have != 0 {
		t.Fatalf("forged share: secret %v, have %d, error %v; want ErrWrongCombination", s, have, err)
	}
	if p.Have() != 0 || p.Nonce() == nonce {
		t.Fatal("progress not reset after a wrong combination")
	}
	// The good shares that were wiped can be submitted again.
	mustAdd(t, p, c.Shares[0].Encode(), 1)
	mustAdd(t, p, c.Shares[1].Encode(), 2)
	if s := mustAdd(t, p, c.Shares[2].Encode(), 3); s == nil {
		t.Fatal("no secret after retry")
	} else {
		s.Destroy()
	}
}

func TestProgressExpires(t *testing.T) {
	c := newTestCeremony(t, 2, 3)
	p, clk := newTestProgress(c)
	mustAdd(t, p, c.Shares[0].Encode(), 1)
	clk.Advance(time.Minute) // exactly the TTL is still in time
	if s := mustAdd(t, p, c.Shares[1].Encode(), 2); s == nil {
		t.Fatal("no secret within the TTL")
	} else {
		s.Destroy()
	}

	mustAdd(t, p, c.Shares[0].Encode(), 1)
	nonce := p.Nonce()
	clk.Advance(time.Minute + time.Second)
	s, have, err := p.Add(c.Shares[1].Encode())
	if !errors.Is(err, ErrProgressExpired) || s != nil || have != 0 {
		t.Fatalf("late share: have %d, error %v; want ErrProgressExpired", have, err)
	}
	if p.Have() != 0 || p.Nonce() == nonce {
		t.Fatal("expired progress not cleared")
	}
	// A fresh attempt starts its own clock.
	mustAdd(t, p, c.Shares[1].Encode(), 1)
	clk.Advance(30 * time.Second)
	if s := mustAdd(t, p, c.Shares[2].Encode(), 2); s == nil {
		t.Fatal("no secret in a fresh attempt")
	} else {
		s.Destroy()
	}
}

func TestProgressReset(t *testing.T) {
	c := newTestCeremony(t, 2, 3)
	p := NewProgress(c.ID, 2, c.Verifier, 0, nil) // defaults
	mustAdd(t, p, c.Shares[0].Encode(), 1)
	nonce := p.Nonce()
	p.Reset()
	if p.Have() != 0 || p.Nonce() == nonce {
		t.Fatal("Reset kept progress or nonce")
	}
	mustAdd(t, p, c.Shares[0].Encode(), 1) // no longer a duplicate
}

// TestProgressConcurrent submits 16 shares from 16 goroutines at once: each
// is counted once, and exactly one caller receives the secret.
func TestProgressConcurrent(t *testing.T) {
	c := newTestCeremony(t, 16, 20)
	p, _ := newTestProgress(c)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		secrets []*Secret
		haves   = map[int]bool{}
	)
	for i := range 16 {
		wg.Go(func() {
			s, have, err := p.Add(c.Shares[i].Encode())
			_ = p.Have()
			_ = p.Nonce()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("share %d: %v", i, err)
			}
			haves[have] = true
			if s != nil {
				secrets = append(secrets, s)
			}
		})
	}
	wg.Wait()
	if len(secrets) != 1 || !secrets[0].Verify(c.Verifier) {
		t.Fatalf("%d secrets from one attempt", len(secrets))
	}
	secrets[0].Destroy()
	for h := 1; h <= 16; h++ {
		if !haves[h] {
			t.Fatalf("no caller saw have=%d: shares were lost or double-counted", h)
		}
	}
}

// TestErrorsCarryNoShareData checks every refusal's message for the data
// of the share that caused it.
func TestErrorsCarryNoShareData(t *testing.T) {
	c := newTestCeremony(t, 2, 3)
	other := newTestCeremony(t, 2, 3)
	p, _ := newTestProgress(c)
	mustAdd(t, p, c.Shares[0].Encode(), 1)
	forged := c.Shares[1]
	forged.Data = bytes.Repeat([]byte{0x5a}, SecretSize)
	for _, s := range []Share{c.Shares[0], other.Shares[1], forged} {
		text := s.Encode()
		_, _, err := p.Add(text)
		if err == nil {
			t.Fatalf("%v accepted", s)
		}
		data := shareEncoding().EncodeToString(s.Data)
		if bytes.Contains([]byte(err.Error()), []byte(data[:10])) {
			t.Fatalf("error %q contains share data", err)
		}
	}
}

// TestProgressHoldsSharesInSecretMemory: shares waiting for the quorum are
// kept in one secret.Buffer (on Linux outside the heap and excluded from
// core dumps), which every way an attempt ends destroys.
func TestProgressHoldsSharesInSecretMemory(t *testing.T) {
	c := newTestCeremony(t, 3, 5)
	p, clk := newTestProgress(c)
	if p.held != nil {
		t.Fatal("an empty attempt holds memory")
	}
	mustAdd(t, p, c.Shares[0].Encode(), 1)
	held := p.held
	if held == nil || held.Len() != 3*(SecretSize+1) {
		t.Fatalf("held buffer %v of %d bytes", held, held.Len())
	}
	if runtime.GOOS == "linux" && (!held.Mapped() || !held.DontDump()) {
		t.Fatal("held shares are not in memory excluded from core dumps")
	}
	row := held.Bytes()[:SecretSize+1]
	if !bytes.Equal(row[:SecretSize], c.Shares[0].Data) || row[SecretSize] != c.Shares[0].Index {
		t.Fatal("the held row is not the share")
	}
	// Reset, expiry and completion each destroy the buffer.
	p.Reset()
	if p.held != nil || held.Bytes() != nil {
		t.Fatal("Reset left the shares' buffer alive")
	}
	mustAdd(t, p, c.Shares[0].Encode(), 1)
	held = p.held
	clk.Advance(2 * time.Minute)
	if _, _, err := p.Add(c.Shares[1].Encode()); !errors.Is(err, ErrProgressExpired) || held.Bytes() != nil {
		t.Fatalf("expiry: %v, buffer alive %v", err, held.Bytes() != nil)
	}
	mustAdd(t, p, c.Shares[0].Encode(), 1)
	mustAdd(t, p, c.Shares[1].Encode(), 2)
	held = p.held
	s := mustAdd(t, p, c.Shares[2].Encode(), 3)
	if s == nil || held.Bytes() != nil || p.held != nil {
		t.Fatal("completion left the shares' buffer alive")
	}
	s.Destroy()
}
