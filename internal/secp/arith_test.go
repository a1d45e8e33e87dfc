package secp

import (
	"crypto/rand"
	"math/big"
	mrand "math/rand/v2"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// Differential tests of the field, inversion, scalar and point code against
// math/big and decred.

var (
	bigP   = secp256k1.S256().P
	bigN   = secp256k1.S256().N
	two256 = new(big.Int).Lsh(big.NewInt(1), 256)
)

func limbsBig(l [4]uint64) *big.Int {
	b := limbsToBytes(&l)
	return new(big.Int).SetBytes(b[:])
}

func bigLimbs(x *big.Int) [4]uint64 {
	var b [32]byte
	x.FillBytes(b[:])
	return limbsFromBytes(&b)
}

// interesting256 are edge values for 256-bit inputs (as raw limbs, so some
// are >= p or >= n on purpose).
func interesting256() []*big.Int {
	one := big.NewInt(1)
	vals := []*big.Int{
		big.NewInt(0), big.NewInt(1), big.NewInt(2), big.NewInt(3), big.NewInt(977),
		new(big.Int).Sub(bigP, one), new(big.Int).Set(bigP), new(big.Int).Add(bigP, one),
		new(big.Int).Sub(bigN, one), new(big.Int).Set(bigN), new(big.Int).Add(bigN, one),
		new(big.Int).Sub(two256, one), new(big.Int).Sub(two256, big.NewInt(2)),
		new(big.Int).Lsh(one, 255), new(big.Int).Lsh(one, 128), new(big.Int).Lsh(one, 64),
		new(big.Int).Sub(new(big.Int).Lsh(one, 64), one), new(big.Int).Sub(new(big.Int).Lsh(one, 192), one),
		new(big.Int).Sub(two256, big.NewInt(feC)), new(big.Int).Sub(two256, big.NewInt(feC-1)),
		new(big.Int).Rsh(bigN, 1), new(big.Int).Add(new(big.Int).Rsh(bigN, 1), one),
	}
	return vals
}

// randLimbs returns a random 256-bit value, biased towards edge shapes.
func randLimbs(r *mrand.Rand) [4]uint64 {
	var l [4]uint64
	for i := range l {
		switch r.IntN(8) {
		case 0:
			l[i] = 0
		case 1:
			l[i] = ^uint64(0)
		case 2:
			l[i] = ^uint64(0) - uint64(r.IntN(1<<34))
		default:
			l[i] = r.Uint64()
		}
	}
	return l
}

func newRand(t testing.TB) *mrand.Rand {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		t.Fatal(err)
	}
	t.Logf("seed %x", seed)
	return mrand.New(mrand.NewChaCha8(seed))
}

func feInputs(t *testing.T, count int) [][4]uint64 {
	r := newRand(t)
	var in [][4]uint64
	for _, v := range interesting256() {
		in = append(in, bigLimbs(v))
	}
	for i := 0; i < count; i++ {
		in = append(in, randLimbs(r))
	}
	return in
}

func TestFieldMatchesBig(t *testing.T) {
	in := feInputs(t, 400)
	mod := func(x *big.Int) *big.Int { return x.Mod(x, bigP) }
	check := func(op string, got fe, want *big.Int, a, b [4]uint64) {
		t.Helper()
		// Results are weakly reduced: any value < 2^256 congruent to want.
		g := limbsBig([4]uint64(got))
		if g.Cmp(two256) >= 0 || new(big.Int).Mod(g, bigP).Cmp(want) != 0 {
			t.Fatalf("%s(%x, %x) = %x, want %x mod p", op, limbsBig(a), limbsBig(b), g, want)
		}
		n := got
		n.normalize()
		if limbsBig([4]uint64(n)).Cmp(want) != 0 {
			t.Fatalf("%s: normalize gave %x, want %x", op, limbsBig([4]uint64(n)), want)
		}
	}
	for _, a := range in {
		fa := fe(a)
		A := limbsBig(a)
		var z fe
		feSqr(&z, &fa)
		check("sqr", z, mod(new(big.Int).Mul(A, A)), a, a)
		feNeg(&z, &fa)
		check("neg", z, mod(new(big.Int).Neg(A)), a, a)
		feHalf(&z, &fa)
		check("half", z, mod(new(big.Int).Mul(A, new(big.Int).ModInverse(big.NewInt(2), bigP))), a, a)
		if got, want := fa.isZero(), mod(new(big.Int).Set(A)).Sign() == 0; got != want {
			t.Fatalf("isZero(%x) = %v", A, got)
		}
		if got, want := fa.isOdd(), mod(new(big.Int).Set(A)).Bit(0) == 1; got != want {
			t.Fatalf("isOdd(%x) = %v", A, got)
		}
		var b32 [32]byte
		A.FillBytes(b32[:])
		var s fe
		if got, want := s.setBytes(&b32), A.Cmp(bigP) < 0; got != want {
			t.Fatalf("setBytes(%x) in range = %v", A, got)
		}
		if bb := fa.bytes(); new(big.Int).SetBytes(bb[:]).Cmp(mod(new(big.Int).Set(A))) != 0 {
			t.Fatalf("bytes(%x) = %x", A, bb)
		}
		if !A.IsUint64() || A.Uint64() != 0 {
			if mod(new(big.Int).Set(A)).Sign() != 0 {
				feInv(&z, &fa)
				check("inv", z, new(big.Int).ModInverse(mod(new(big.Int).Set(A)), bigP), a, a)
			}
		} else {
			feInv(&z, &fa)
			check("inv(0)", z, big.NewInt(0), a, a)
		}
		for _, b := range in[:60] {
			fb := fe(b)
			B := limbsBig(b)
			feMul(&z, &fa, &fb)
			check("mul", z, mod(new(big.Int).Mul(A, B)), a, b)
			feAdd(&z, &fa, &fb)
			check("add", z, mod(new(big.Int).Add(A, B)), a, b)
			feSub(&z, &fa, &fb)
			check("sub", z, mod(new(big.Int).Sub(A, B)), a, b)
			eq := mod(new(big.Int).Set(A)).Cmp(mod(new(big.Int).Set(B))) == 0
			if fa.equal(&fb) != eq {
				t.Fatalf("equal(%x, %x) != %v", A, B, eq)
			}
			// Aliasing.
			z = fa
			feMul(&z, &z, &z)
			check("mul aliased", z, mod(new(big.Int).Mul(A, A)), a, a)
		}
	}
}

func TestFieldChainedOpsStayCorrect(t *testing.T) {
	// Long chains of operations on weakly reduced values, compared with big.
	r := newRand(t)
	x, y := fe(randLimbs(r)), fe(randLimbs(r))
	X, Y := new(big.Int).Mod(limbsBig(x), bigP), new(big.Int).Mod(limbsBig(y), bigP)
	for i := 0; i < 20000; i++ {
		switch r.IntN(5) {
		case 0:
			feMul(&x, &x, &y)
			X.Mul(X, Y).Mod(X, bigP)
		case 1:
			feSqr(&y, &y)
			Y.Mul(Y, Y).Mod(Y, bigP)
		case 2:
			feAdd(&x, &x, &y)
			X.Add(X, Y).Mod(X, bigP)
		case 3:
			feSub(&y, &y, &x)
			Y.Sub(Y, X).Mod(Y, bigP)
		case 4:
			feNeg(&x, &x)
			X.Neg(X).Mod(X, bigP)
		}
		if limbsBig([4]uint64(x)).Cmp(two256) >= 0 {
			t.Fatal("out of range")
		}
		xb, yb := x.bytes(), y.bytes()
		if new(big.Int).SetBytes(xb[:]).Cmp(X) != 0 || new(big.Int).SetBytes(yb[:]).Cmp(Y) != 0 {
			t.Fatalf("step %d diverged", i)
		}
		if X.Sign() == 0 || Y.Sign() == 0 {
			x, y = fe(randLimbs(r)), fe(randLimbs(r))
			X, Y = new(big.Int).Mod(limbsBig(x), bigP), new(big.Int).Mod(limbsBig(y), bigP)
		}
	}
}

// inverseInputs are the values the inversion tests use: the edge values,
// 1, 2, p-1, n-1 and their neighbours (interesting256), every power of two
// and count random values.
func inverseInputs(t *testing.T, count int) []*big.Int {
	r := newRand(t)
	vals := interesting256()
	for i := 0; i < count; i++ {
		vals = append(vals, limbsBig(randLimbs(r)))
	}
	for k := uint(0); k < 256; k++ {
		vals = append(vals, new(big.Int).Lsh(big.NewInt(1), k))
	}
	return vals
}

func TestFieldInverseMatchesBig(t *testing.T) {
	for _, v := range inverseInputs(t, 3000) {
		// feInv accepts any weakly reduced input (v < 2^256, possibly >= p).
		x := fe(bigLimbs(v))
		m := new(big.Int).Mod(v, bigP)
		want := big.NewInt(0)
		if m.Sign() != 0 {
			want.ModInverse(m, bigP)
		}
		var z fe
		feInv(&z, &x)
		// The result is fully reduced.
		if got := limbsBig([4]uint64(z)); got.Cmp(want) != 0 {
			t.Fatalf("feInv(%x) = %x, want %x", v, got, want)
		}
		// Aliased.
		feInv(&x, &x)
		if x != z {
			t.Fatalf("feInv(%x) aliased = %x, want %x", v, limbsBig([4]uint64(x)), want)
		}
		if m.Sign() != 0 {
			var one fe
			orig := fe(bigLimbs(v))
			feMul(&one, &z, &orig)
			if !one.equal(&feOne) {
				t.Fatalf("feInv(%x)·x != 1", v)
			}
		}
	}
}

func TestScalarInverseMatchesBig(t *testing.T) {
	for _, v := range inverseInputs(t, 3000) {
		v.Mod(v, bigN)
		want := big.NewInt(0)
		if v.Sign() != 0 {
			want.ModInverse(v, bigN)
		}
		l := bigLimbs(v)
		k := scalarFromLimbs(&l)
		inv := scalarInverse(&k)
		if il := scalarLimbs(&inv); limbsBig(il).Cmp(want) != 0 {
			t.Fatalf("scalarInverse(%x) = %x, want %x", v, limbsBig(il), want)
		}
		if got := scalarLimbs(&k); limbsBig(got).Cmp(v) != 0 {
			t.Fatalf("scalarInverse modified its input")
		}
	}
}

func scalarOf(x *big.Int) secp256k1.ModNScalar {
	var k secp256k1.ModNScalar
	m := new(big.Int).Mod(x, bigN)
	l := bigLimbs(m)
	b := limbsToBytes(&l)
	k.SetBytes(&b)
	return k
}

func TestEndomorphismConstants(t *testing.T) {
	lambda := new(big.Int).Neg(limbsBig(scalarLimbs(&endoNegLambda)))
	lambda.Mod(lambda, bigN)
	// λ^3 = 1 mod n, β^3 = 1 mod p, and λ·G = (β·Gx, Gy).
	if new(big.Int).Exp(lambda, big.NewInt(3), bigN).Cmp(big.NewInt(1)) != 0 {
		t.Fatal("λ^3 != 1")
	}
	beta := limbsBig([4]uint64(feBeta))
	if new(big.Int).Exp(beta, big.NewInt(3), bigP).Cmp(big.NewInt(1)) != 0 {
		t.Fatal("β^3 != 1")
	}
	k := scalarOf(lambda)
	var lg secp256k1.JacobianPoint
	secp256k1.ScalarBaseMultNonConst(&k, &lg)
	lg.ToAffine()
	g := affinePoint{curveGx, curveGy}
	var want [1]affinePoint
	mulBeta(want[:], []affinePoint{g})
	if !decredEqual(&lg, &want[0]) {
		t.Fatal("λ·G != (β·Gx, Gy)")
	}
	// G itself matches decred's.
	var dg secp256k1.JacobianPoint
	one := scalarOf(big.NewInt(1))
	secp256k1.ScalarBaseMultNonConst(&one, &dg)
	dg.ToAffine()
	if !decredEqual(&dg, &g) {
		t.Fatal("G differs from decred's")
	}
}

func TestSplitK(t *testing.T) {
	r := newRand(t)
	lambda := new(big.Int).Neg(limbsBig(scalarLimbs(&endoNegLambda)))
	lambda.Mod(lambda, bigN)
	vals := interesting256()
	for i := 0; i < 5000; i++ {
		vals = append(vals, limbsBig(randLimbs(r)))
	}
	maxBits := 0
	for _, v := range vals {
		v.Mod(v, bigN)
		k := scalarOf(v)
		k1, k2 := splitK(&k)
		a1, n1 := splitSigned(&k1)
		a2, n2 := splitSigned(&k2)
		s1, s2 := limbsBig(a1), limbsBig(a2)
		if n1 {
			s1.Neg(s1)
		}
		if n2 {
			s2.Neg(s2)
		}
		sum := new(big.Int).Mul(s2, lambda)
		sum.Add(sum, s1).Mod(sum, bigN)
		if sum.Cmp(v) != 0 {
			t.Fatalf("split of %x: %x + %x·λ != k", v, s1, s2)
		}
		maxBits = max(maxBits, limbsBig(a1).BitLen(), limbsBig(a2).BitLen())
	}
	// The decomposition is balanced: both halves fit 128 bits (the code
	// stays correct beyond that, only slower).
	if maxBits > 128 {
		t.Fatalf("split produced a %d-bit half", maxBits)
	}
}

func TestNAF(t *testing.T) {
	r := newRand(t)
	vals := interesting256()
	for i := 0; i < 500; i++ {
		vals = append(vals, limbsBig(randLimbs(r)))
	}
	for _, v := range vals {
		l := bigLimbs(v)
		for w := uint(2); w <= maxWindow; w++ {
			var term nafTerm
			term.setNAF(&l, w)
			sum := new(big.Int)
			lastNonZero := -1
			for i := nafLen - 1; i >= 0; i-- {
				d := int64(term.digits[i])
				if d != 0 {
					if i >= term.n {
						t.Fatalf("digit beyond n")
					}
					if d%2 == 0 || d >= 1<<(w-1) || d <= -(1<<(w-1)) {
						t.Fatalf("w=%d: bad digit %d", w, d)
					}
					if lastNonZero >= 0 && lastNonZero-i < int(w) {
						t.Fatalf("w=%d: digits %d and %d too close", w, lastNonZero, i)
					}
					lastNonZero = i
				}
				sum.Lsh(sum, 1).Add(sum, big.NewInt(d))
			}
			if sum.Cmp(v) != 0 {
				t.Fatalf("w=%d: NAF of %x sums to %x", w, v, sum)
			}
			if v.Sign() != 0 && term.digits[term.n-1] == 0 {
				t.Fatalf("n too large")
			}
		}
	}
}

// decredEqual compares an affine decred point with ours.
func decredEqual(d *secp256k1.JacobianPoint, a *affinePoint) bool {
	x, y := d.X.Bytes(), d.Y.Bytes()
	return *x == a.x.bytes() && *y == a.y.bytes()
}

// decredMul returns k·G from decred, as our affine type.
func decredMul(t testing.TB, k *big.Int) (affinePoint, bool) {
	s := scalarOf(k)
	var p secp256k1.JacobianPoint
	secp256k1.ScalarBaseMultNonConst(&s, &p)
	if (p.X.IsZero() && p.Y.IsZero()) || p.Z.IsZero() {
		return affinePoint{}, false
	}
	p.ToAffine()
	var a affinePoint
	a.x.setBytes(p.X.Bytes())
	a.y.setBytes(p.Y.Bytes())
	return a, true
}

func TestPointOps(t *testing.T) {
	r := newRand(t)
	check := func(what string, got *jacobianPoint, want *big.Int) {
		t.Helper()
		w, finite := decredMul(t, want)
		a, ok := got.toAffine()
		if ok != finite || (ok && (a.x != w.x || a.y != w.y)) {
			t.Fatalf("%s: got %v/%x, want finite=%v %x", what, ok, a.x.bytes(), finite, w.x.bytes())
		}
	}
	// Jacobian versions with a random Z, to exercise Z != 1.
	jac := func(a affinePoint) jacobianPoint {
		var z fe
		z = fe(randLimbs(r))
		if z.isZero() {
			z = feOne
		}
		var z2, z3 fe
		feSqr(&z2, &z)
		feMul(&z3, &z2, &z)
		var p jacobianPoint
		feMul(&p.x, &a.x, &z2)
		feMul(&p.y, &a.y, &z3)
		p.z = z
		return p
	}
	for i := 0; i < 300; i++ {
		a := new(big.Int).Mod(limbsBig(randLimbs(r)), bigN)
		b := new(big.Int).Mod(limbsBig(randLimbs(r)), bigN)
		switch i % 5 {
		case 1:
			b.Set(a) // doubling through add
		case 2:
			b.Sub(bigN, a) // inverse points
		}
		if a.Sign() == 0 || b.Sign() == 0 {
			continue
		}
		pa, _ := decredMul(t, a)
		pb, _ := decredMul(t, b)
		sum := new(big.Int).Add(a, b)
		diff := new(big.Int).Sub(a, b)

		ja, jb := jac(pa), jac(pb)
		var got jacobianPoint
		got.double(&ja)
		check("double", &got, new(big.Int).Lsh(a, 1))
		got.add(&ja, &jb)
		check("add", &got, sum)
		got.addAffine(&ja, &pb, false)
		check("addAffine", &got, sum)
		got.addAffine(&ja, &pb, true)
		check("addAffine neg", &got, diff)
		got = ja
		got.addAffine(&got, &pb, false)
		check("addAffine aliased", &got, sum)

		var inf jacobianPoint
		inf.inf = true
		got.add(&inf, &jb)
		check("inf + b", &got, b)
		got.add(&ja, &inf)
		check("a + inf", &got, a)
		got.addAffine(&inf, &pb, true)
		check("inf - b", &got, new(big.Int).Neg(b))
		got.double(&inf)
		if !got.inf {
			t.Fatal("2·inf is finite")
		}
	}
}

func TestTables(t *testing.T) {
	g := baseTables()
	for j := range g {
		if len(g[j]) != 1<<(gWindow-2) {
			t.Fatalf("table %d has %d entries", j, len(g[j]))
		}
		for i := range g[j] {
			k := new(big.Int).Lsh(big.NewInt(int64(2*i+1)), uint(pieceBits*j))
			w, _ := decredMul(t, k)
			if g[j][i] != w {
				t.Fatalf("G table %d entry %d wrong", j, i)
			}
		}
	}

	d := new(big.Int).Mod(limbsBig(randLimbs(newRand(t))), bigN)
	q, _ := decredMul(t, d)
	pub := make([]byte, 65)
	pub[0] = 4
	xb, yb := q.x.bytes(), q.y.bytes()
	copy(pub[1:], xb[:])
	copy(pub[33:], yb[:])
	v, err := NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	lambda := new(big.Int).Neg(limbsBig(scalarLimbs(&endoNegLambda)))
	var bases []*big.Int
	for j := 0; j < qPieces; j++ {
		bases = append(bases, new(big.Int).Lsh(d, uint(pieceBits*j)))
	}
	for j := 0; j < qPieces; j++ {
		bases = append(bases, new(big.Int).Mul(bases[j], lambda))
	}
	if len(bases) != len(v.tables) {
		t.Fatalf("%d verifier tables", len(v.tables))
	}
	for j, base := range bases {
		if len(v.tables[j]) != 1<<(verifierWindow-2) {
			t.Fatalf("verifier table %d has %d entries", j, len(v.tables[j]))
		}
		for i := range v.tables[j] {
			w, _ := decredMul(t, new(big.Int).Mul(base, big.NewInt(int64(2*i+1))))
			if v.tables[j][i] != w {
				t.Fatalf("verifier table %d entry %d wrong", j, i)
			}
		}
	}
}

func TestBitRange(t *testing.T) {
	r := newRand(t)
	for i := 0; i < 2000; i++ {
		k := randLimbs(r)
		lo := uint(r.IntN(256))
		hi := lo + 1 + uint(r.IntN(int(256-lo)))
		want := new(big.Int).Rsh(limbsBig(k), lo)
		want.And(want, new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), hi-lo), big.NewInt(1)))
		if got := limbsBig(bitRange(&k, lo, hi)); got.Cmp(want) != 0 {
			t.Fatalf("bitRange(%x, %d, %d) = %x, want %x", limbsBig(k), lo, hi, got, want)
		}
	}
}

// TestParsePubKeyMatchesDecred checks that the fast key parser accepts
// exactly what decred's ParsePubKey accepts for 0x04 keys, with decred's
// error on rejection.
func TestParsePubKeyMatchesDecred(t *testing.T) {
	r := newRand(t)
	var keys [][]byte
	for i := 0; i < 200; i++ {
		d := new(big.Int).Mod(limbsBig(randLimbs(r)), bigN)
		if d.Sign() == 0 {
			continue
		}
		q, _ := decredMul(t, d)
		pub := make([]byte, 65)
		pub[0] = 4
		xb, yb := q.x.bytes(), q.y.bytes()
		copy(pub[1:], xb[:])
		copy(pub[33:], yb[:])
		keys = append(keys, pub)
		// Variants: bit flips, coordinates >= p (x+p and y+p overflow
		// 256 bits only when < 2^256 - p, so also p itself and all-ones).
		for j := 0; j < 4; j++ {
			k := append([]byte(nil), pub...)
			bit := 8 + r.IntN(512)
			k[bit/8] ^= 1 << (bit % 8)
			keys = append(keys, k)
		}
	}
	pb := bigP.FillBytes(make([]byte, 32))
	ff := make([]byte, 32)
	for i := range ff {
		ff[i] = 0xff
	}
	zero := make([]byte, 32)
	for _, x := range [][]byte{pb, ff, zero, keys[0][1:33]} {
		for _, y := range [][]byte{pb, ff, zero, keys[0][33:]} {
			keys = append(keys, append(append([]byte{4}, x...), y...))
		}
	}
	// A point whose x is small: x = 1 has y^2 = 8, a square mod p.
	{
		var x, y secp256k1.FieldVal
		x.SetInt(1)
		if secp256k1.DecompressY(&x, false, &y) {
			xb, yb := x.Bytes(), y.Bytes()
			keys = append(keys, append(append([]byte{4}, xb[:]...), yb[:]...))
		}
	}
	for _, k := range keys {
		var q affinePoint
		err := parsePubKey(k, &q)
		_, derr := secp256k1.ParsePubKey(k)
		if (err == nil) != (derr == nil) {
			t.Fatalf("key %x: ours %v, decred %v", k, err, derr)
		}
		if err == nil {
			xb, yb := q.x.bytes(), q.y.bytes()
			if string(xb[:]) != string(k[1:33]) || string(yb[:]) != string(k[33:]) {
				t.Fatalf("key %x parsed wrongly", k)
			}
		}
	}
}
