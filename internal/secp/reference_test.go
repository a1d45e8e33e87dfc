package secp

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"github.com/ethereum/go-ethereum/crypto"
)

// referenceVerifyAndParity is the original implementation (decred's
// ScalarBaseMultNonConst + ScalarMultNonConst + AddNonConst, math/big
// inversion via ModNScalar.InverseNonConst), kept verbatim as the oracle for
// the optimised code.
func referenceVerifyAndParity(pub, digest, sig []byte) (parity byte, err error) {
	if len(pub) != PublicKeyLen || pub[0] != 0x04 {
		return 0, fmt.Errorf("%w: public key must be %d-byte uncompressed SEC1 (0x04 prefix), got %d bytes",
			ErrMalformed, PublicKeyLen, len(pub))
	}
	if len(digest) != DigestLen {
		return 0, fmt.Errorf("%w: digest must be %d bytes, got %d", ErrMalformed, DigestLen, len(digest))
	}
	if len(sig) != SignatureLen {
		return 0, fmt.Errorf("%w: signature must be %d bytes r||s, got %d", ErrMalformed, SignatureLen, len(sig))
	}
	key, err := secp256k1.ParsePubKey(pub)
	if err != nil {
		return 0, fmt.Errorf("%w: public key: %w", ErrMalformed, err)
	}

	var r, s secp256k1.ModNScalar
	if overflow := r.SetByteSlice(sig[:32]); overflow || r.IsZero() {
		return 0, fmt.Errorf("%w: r is not in [1, n-1]", ErrMalformed)
	}
	if overflow := s.SetByteSlice(sig[32:]); overflow || s.IsZero() {
		return 0, fmt.Errorf("%w: s is not in [1, n-1]", ErrMalformed)
	}
	if s.IsOverHalfOrder() {
		return 0, ErrHighS
	}

	var e secp256k1.ModNScalar
	e.SetByteSlice(digest)

	w := new(secp256k1.ModNScalar).Set(&s).InverseNonConst()
	u1 := new(secp256k1.ModNScalar).Mul2(&e, w)
	u2 := new(secp256k1.ModNScalar).Mul2(&r, w)

	var q, u1G, u2Q, x secp256k1.JacobianPoint
	key.AsJacobian(&q)
	secp256k1.ScalarBaseMultNonConst(u1, &u1G)
	secp256k1.ScalarMultNonConst(u2, &q, &u2Q)
	secp256k1.AddNonConst(&u1G, &u2Q, &x)
	if (x.X.IsZero() && x.Y.IsZero()) || x.Z.IsZero() {
		return 0, ErrInvalidSignature
	}
	x.ToAffine()

	xBytes := x.X.Bytes()
	var xModN secp256k1.ModNScalar
	xOverflow := xModN.SetBytes(xBytes) != 0
	if !xModN.Equals(&r) {
		return 0, ErrInvalidSignature
	}
	if xOverflow {
		return 0, ErrUnrecoverable
	}
	if x.Y.IsOdd() {
		return 1, nil
	}
	return 0, nil
}

// checkAgainstReference runs the package function, a Verifier (when the key
// parses) and the reference on one input and fails unless all agree exactly:
// same parity, same error text. It returns the common result.
func checkAgainstReference(t testing.TB, pub, digest, sig []byte) (byte, error) {
	t.Helper()
	wantP, wantErr := referenceVerifyAndParity(pub, digest, sig)
	same := func(what string, p byte, err error) {
		t.Helper()
		if (err == nil) != (wantErr == nil) || (err != nil && err.Error() != wantErr.Error()) || p != wantP {
			t.Fatalf("%s: got (%d, %v), reference (%d, %v)\npub %x\ndigest %x\nsig %x",
				what, p, err, wantP, wantErr, pub, digest, sig)
		}
	}
	p, err := VerifyAndParity(pub, digest, sig)
	same("VerifyAndParity", p, err)
	v, verr := NewVerifier(pub)
	if verr != nil {
		// The Verifier must refuse exactly the keys the function refuses,
		// with the same error.
		if wantErr == nil || !errors.Is(verr, ErrMalformed) {
			t.Fatalf("NewVerifier(%x): %v, reference accepted (%v)", pub, verr, wantErr)
		}
		if _, kerr := VerifyAndParity(pub, make([]byte, DigestLen), make([]byte, SignatureLen)); kerr == nil || kerr.Error() != verr.Error() {
			t.Fatalf("NewVerifier error %q, VerifyAndParity key error %q", verr, kerr)
		}
		return wantP, wantErr
	}
	if !bytes.Equal(v.PublicKey(), pub) {
		t.Fatalf("Verifier.PublicKey differs")
	}
	p, err = v.VerifyAndParity(digest, sig)
	same("Verifier.VerifyAndParity", p, err)
	return wantP, wantErr
}

// crafted builds (pub, digest, sig) for which the nonce point is R = k·G
// (k nonzero), using recovery in reverse: Q = r^-1·(s·R - e·G). s is chosen
// low. ok is false if Q would be the point at infinity.
func crafted(t testing.TB, R *secp256k1.JacobianPoint, s, e *secp256k1.ModNScalar) (pub, digest, sig []byte, ok bool) {
	t.Helper()
	R.ToAffine()
	var r secp256k1.ModNScalar
	r.SetByteSlice(R.X.Bytes()[:])
	if r.IsZero() {
		return nil, nil, nil, false
	}
	var sR, eG, sum, q secp256k1.JacobianPoint
	secp256k1.ScalarMultNonConst(s, R, &sR)
	negE := new(secp256k1.ModNScalar).NegateVal(e)
	secp256k1.ScalarBaseMultNonConst(negE, &eG)
	secp256k1.AddNonConst(&sR, &eG, &sum)
	rInv := new(secp256k1.ModNScalar).InverseValNonConst(&r)
	secp256k1.ScalarMultNonConst(rInv, &sum, &q)
	if (q.X.IsZero() && q.Y.IsZero()) || q.Z.IsZero() {
		return nil, nil, nil, false
	}
	q.ToAffine()
	pub = secp256k1.NewPublicKey(&q.X, &q.Y).SerializeUncompressed()
	eb, rb, sb := e.Bytes(), r.Bytes(), s.Bytes()
	return pub, eb[:], append(rb[:], sb[:]...), true
}

func randScalar(r *mrand.Rand) secp256k1.ModNScalar {
	l := randLimbs(r)
	return scalarFromLimbs(&l)
}

func lowS(r *mrand.Rand) secp256k1.ModNScalar {
	for {
		s := randScalar(r)
		if s.IsZero() {
			continue
		}
		if s.IsOverHalfOrder() {
			s.Negate()
		}
		return s
	}
}

// TestMatchesReferenceRandom compares the new code with the original
// implementation, decred's ecdsa verification and go-ethereum's Ecrecover on
// many fresh keys and digests, and on tampered variants of each.
func TestMatchesReferenceRandom(t *testing.T) {
	cases := 400
	if testing.Short() {
		cases = 50
	}
	r := newRand(t)
	seen := [2]int{}
	for i := 0; i < cases; i++ {
		c := newSigned(t)
		p, err := checkAgainstReference(t, c.pub, c.digest, c.sig)
		if err != nil || p != c.parity {
			t.Fatalf("case %d: (%d, %v), want parity %d", i, p, err, c.parity)
		}
		seen[p]++

		// decred's own verification agrees.
		key, _ := secp256k1.ParsePubKey(c.pub)
		var rs, ss secp256k1.ModNScalar
		rs.SetByteSlice(c.sig[:32])
		ss.SetByteSlice(c.sig[32:])
		if !ecdsa.NewSignature(&rs, &ss).Verify(c.digest, key) {
			t.Fatalf("case %d: decred does not verify", i)
		}
		// go-ethereum recovers pub from (r, s, parity).
		rec, err := crypto.Ecrecover(c.digest, append(bytes.Clone(c.sig), p))
		if err != nil || !bytes.Equal(rec, c.pub) {
			t.Fatalf("case %d: Ecrecover with parity %d: %x, %v", i, p, rec, err)
		}
		// The other parity recovers a different key.
		if rec, err := crypto.Ecrecover(c.digest, append(bytes.Clone(c.sig), 1-p)); err == nil && bytes.Equal(rec, c.pub) {
			t.Fatalf("case %d: both parities recover pub", i)
		}

		// Single-bit flips in every input: same answer as the reference.
		for j := 0; j < 6; j++ {
			pub, digest, sig := bytes.Clone(c.pub), bytes.Clone(c.digest), bytes.Clone(c.sig)
			switch j % 3 {
			case 0:
				b := r.IntN(512)
				sig[b/8] ^= 1 << (b % 8)
			case 1:
				b := r.IntN(256)
				digest[b/8] ^= 1 << (b % 8)
			case 2:
				b := 8 + r.IntN(512)
				pub[b/8] ^= 1 << (b % 8)
			}
			if _, err := checkAgainstReference(t, pub, digest, sig); err == nil {
				t.Fatalf("case %d: tampered input verified", i)
			}
		}
	}
	if seen[0] == 0 || seen[1] == 0 {
		t.Fatalf("parities not both exercised: %v", seen)
	}
}

// TestMatchesReferenceCrafted covers inputs a random signer almost never
// produces: chosen nonce points (both parities), X.x >= n (recovery ids
// 2/3), X at infinity, e ≡ 0, special keys (±G, λ·G, small multiples) and
// each signature against the wrong key or digest.
func TestMatchesReferenceCrafted(t *testing.T) {
	r := newRand(t)
	seen := [2]int{}
	n := 200
	if testing.Short() {
		n = 40
	}
	for i := 0; i < n; i++ {
		k := randScalar(r)
		if k.IsZero() {
			continue
		}
		var R secp256k1.JacobianPoint
		secp256k1.ScalarBaseMultNonConst(&k, &R)
		s, e := lowS(r), randScalar(r)
		if i%10 == 0 {
			e.Zero()
		}
		pub, digest, sig, ok := crafted(t, &R, &s, &e)
		if !ok {
			continue
		}
		p, err := checkAgainstReference(t, pub, digest, sig)
		if err != nil {
			t.Fatalf("crafted case %d: %v", i, err)
		}
		R.ToAffine()
		if want := byte(R.Y.IsOddBit()); p != want {
			t.Fatalf("crafted case %d: parity %d, R has %d", i, p, want)
		}
		seen[p]++
		// e ≡ 0 can also be written as the digest n.
		if e.IsZero() {
			checkAgainstReference(t, pub, bigN.FillBytes(make([]byte, 32)), sig)
		}
		neg := bytes.Clone(pub)
		var y secp256k1.FieldVal
		y.SetByteSlice(neg[33:])
		y.Negate(1).Normalize()
		yb := y.Bytes()
		copy(neg[33:], yb[:])
		// The same signature against the negated key fails, except when
		// e ≡ 0: then X = u2·Q and -Q gives -R, same x, other parity.
		np, err := checkAgainstReference(t, neg, digest, sig)
		if e.IsZero() {
			if err != nil || np != 1-p {
				t.Fatalf("e = 0, negated key: (%d, %v), want parity %d", np, err, 1-p)
			}
		} else if err == nil {
			t.Fatal("negated key verified")
		}
	}
	if seen[0] == 0 || seen[1] == 0 {
		t.Fatalf("parities not both exercised: %v", seen)
	}

	// Nonce points with x >= n: valid signatures that need recovery id 2/3.
	found := 0
	for i := int64(0); found < 4 && i < 1000; i++ {
		var x, y secp256k1.FieldVal
		xv := new(big.Int).Add(bigN, big.NewInt(i))
		if x.SetByteSlice(xv.FillBytes(make([]byte, 32))) {
			t.Fatal("n + i >= p")
		}
		if !secp256k1.DecompressY(&x, i%2 == 0, &y) {
			continue
		}
		var R secp256k1.JacobianPoint
		R.X, R.Y = x, y
		R.Z.SetInt(1)
		s, e := lowS(r), randScalar(r)
		pub, digest, sig, ok := crafted(t, &R, &s, &e)
		if !ok {
			continue // r = x - n = 0
		}
		found++
		if _, err := checkAgainstReference(t, pub, digest, sig); !errors.Is(err, ErrUnrecoverable) {
			t.Fatalf("x >= n: got %v, want ErrUnrecoverable", err)
		}
	}
	if found == 0 {
		t.Fatal("no point with x >= n found")
	}

	// X = u1·G + u2·Q at infinity: Q = d·G and e ≡ -r·d.
	for i := 0; i < 20; i++ {
		d := randScalar(r)
		if d.IsZero() {
			continue
		}
		var q secp256k1.JacobianPoint
		secp256k1.ScalarBaseMultNonConst(&d, &q)
		q.ToAffine()
		pub := secp256k1.NewPublicKey(&q.X, &q.Y).SerializeUncompressed()
		rs, s := randScalar(r), lowS(r)
		if rs.IsZero() {
			continue
		}
		e := new(secp256k1.ModNScalar).Mul2(&rs, &d)
		e.Negate()
		eb, rb, sb := e.Bytes(), rs.Bytes(), s.Bytes()
		if _, err := checkAgainstReference(t, pub, eb[:], append(rb[:], sb[:]...)); !errors.Is(err, ErrInvalidSignature) {
			t.Fatalf("X at infinity: got %v", err)
		}
	}

	// Special private keys: 1 (Q = G), n-1 (Q = -G), λ, 2, 2^64, 2^128, 3.
	lambda := new(big.Int).Neg(limbsBig(scalarLimbs(&endoNegLambda)))
	lambda.Mod(lambda, bigN)
	specials := []*big.Int{
		big.NewInt(1), new(big.Int).Sub(bigN, big.NewInt(1)), lambda, big.NewInt(2), big.NewInt(3),
		new(big.Int).Lsh(big.NewInt(1), 64), new(big.Int).Lsh(big.NewInt(1), 128),
		new(big.Int).Sub(bigN, lambda),
	}
	for _, d := range specials {
		key := secp256k1.PrivKeyFromBytes(d.FillBytes(make([]byte, 32)))
		pub := key.PubKey().SerializeUncompressed()
		for j := 0; j < 20; j++ {
			digest := make([]byte, 32)
			for b := range digest {
				digest[b] = byte(r.Uint32())
			}
			switch j {
			case 0:
				clear(digest)
			case 1:
				// e = d: u1 = u2·d/r... keeps G and Q terms related.
				d.FillBytes(digest)
			}
			compact := ecdsa.SignCompact(key, digest, false)
			p, err := checkAgainstReference(t, pub, digest, compact[1:])
			if err != nil || p != compact[0]-27 {
				t.Fatalf("key %x: (%d, %v), want parity %d", d, p, err, compact[0]-27)
			}
		}
	}
}

func TestVerifierMalformed(t *testing.T) {
	c := newSigned(t)
	for _, pub := range [][]byte{nil, c.pub[:64], append([]byte{6}, c.pub[1:]...), append(bytes.Clone(c.pub[:64]), c.pub[64]^1)} {
		if _, err := NewVerifier(pub); !errors.Is(err, ErrMalformed) {
			t.Fatalf("NewVerifier(%x): %v", pub, err)
		}
	}
	v, err := NewVerifier(c.pub)
	if err != nil {
		t.Fatal(err)
	}
	// The Verifier keeps its own copy of the key.
	orig := bytes.Clone(c.pub)
	c.pub[10] ^= 1
	if p, err := v.VerifyAndParity(c.digest, c.sig); err != nil || p != c.parity {
		t.Fatalf("after caller mutation: (%d, %v)", p, err)
	}
	c.pub = orig
	for _, in := range [][2][]byte{
		{c.digest[:31], c.sig}, {c.digest, c.sig[:63]}, {nil, nil},
	} {
		if _, err := v.VerifyAndParity(in[0], in[1]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("got %v, want ErrMalformed", err)
		}
	}
}

// TestConcurrent shares one Verifier (and the lazily built G tables) between
// goroutines; run with -race.
func TestConcurrent(t *testing.T) {
	cases := make([]signed, 8)
	for i := range cases {
		cases[i] = newSigned(t)
	}
	v, err := NewVerifier(cases[0].pub)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func() {
			for i := 0; i < 20; i++ {
				c := cases[(g+i)%len(cases)]
				p, err := VerifyAndParity(c.pub, c.digest, c.sig)
				if err != nil || p != c.parity {
					errc <- fmt.Errorf("VerifyAndParity: (%d, %v), want %d", p, err, c.parity)
					return
				}
				p, err = v.VerifyAndParity(cases[0].digest, cases[0].sig)
				if err != nil || p != cases[0].parity {
					errc <- fmt.Errorf("Verifier: (%d, %v)", p, err)
					return
				}
			}
			errc <- nil
		}()
	}
	for g := 0; g < 8; g++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzCrafted lets the fuzzer choose the nonce k, s and e of a valid
// signature (the key is derived from them, see crafted), so that the
// accepting path sees fuzzer-chosen edge scalars too; flip optionally
// tampers with one bit of the signature or digest.
func FuzzCrafted(f *testing.F) {
	f.Add([]byte{1}, []byte{1}, []byte{}, uint16(0))
	f.Add([]byte{2}, []byte{3}, []byte{4}, uint16(700))
	f.Add(bigN.Bytes(), []byte{0x7f, 0xff}, bigN.Bytes(), uint16(3))
	f.Fuzz(func(t *testing.T, kb, sb, eb []byte, flip uint16) {
		var k, s, e secp256k1.ModNScalar
		if len(kb) > 32 || len(sb) > 32 || len(eb) > 32 {
			return
		}
		k.SetByteSlice(kb)
		s.SetByteSlice(sb)
		e.SetByteSlice(eb)
		if k.IsZero() || s.IsZero() {
			return
		}
		if s.IsOverHalfOrder() {
			s.Negate()
		}
		var R secp256k1.JacobianPoint
		secp256k1.ScalarBaseMultNonConst(&k, &R)
		pub, digest, sig, ok := crafted(t, &R, &s, &e)
		if !ok {
			return
		}
		p, err := checkAgainstReference(t, pub, digest, sig)
		if err != nil {
			t.Fatalf("crafted signature refused: %v", err)
		}
		if want := byte(R.Y.IsOddBit()); p != want {
			t.Fatalf("parity %d, R has %d", p, want)
		}
		if flip != 0 {
			b := int(flip) % (8 * (len(sig) + len(digest)))
			if b < 8*len(sig) {
				sig[b/8] ^= 1 << (b % 8)
			} else {
				b -= 8 * len(sig)
				digest[b/8] ^= 1 << (b % 8)
			}
			checkAgainstReference(t, pub, digest, sig)
		}
	})
}
