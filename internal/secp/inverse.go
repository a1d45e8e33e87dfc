package secp

import "github.com/decred/dcrd/dcrec/secp256k1/v4"

// Modular inverses for the two moduli this package needs: p (Jacobian to
// affine conversion) and n (1/s when verifying).

// feSqrN sets z = x^(2^k), i.e. squares x k >= 1 times.
func feSqrN(z, x *fe, k int) {
	feSqr(z, x)
	for i := 1; i < k; i++ {
		feSqr(z, z)
	}
}

// feInv sets z = 1/x, fully reduced (0 if x ≡ 0).
//
// p is prime, so by Fermat's little theorem x^(p-1) = 1 for x ≢ 0 and
// 1/x = x^(p-2); for x ≡ 0 the power is 0, as documented.
//
// The exponent is p - 2 = 2^256 - 2^32 - 979 = (2^256 - 2^33) + (2^32 - 979),
// and 2^32 - 979 = 0xFFFFFC2D. Written out from the top, its 256 bits are
//
//	223 ones | 0 | 22 ones | 0000 1 | 0 11 | 0 1
//	(bits 255..33) (32) (31..10) (9..5)  (4..2) (1..0)
//
// Write x_k = x^(2^k - 1), the power whose exponent is k one bits. Squaring
// j times shifts an exponent up by j bits, and multiplying by x_i (i <= j)
// then sets its low i bits; in particular x_k^(2^j) · x_j = x_(k+j). So long
// runs of ones are cheap to build by repeatedly doubling their length:
//
//	x2   = x^2 · x                 x3   = x2^2 · x
//	x6   = x3^(2^3) · x3           x9   = x6^(2^3) · x3
//	x11  = x9^(2^2) · x2           x22  = x11^(2^11) · x11
//	x44  = x22^(2^22) · x22        x88  = x44^(2^44) · x44
//	x176 = x88^(2^88) · x88        x220 = x176^(2^44) · x44
//	x223 = x220^(2^3) · x3
//
// (x3, x11 and x22 are kept because the run lengths 223 = 220 + 3 and 22
// need them; x44 is reused for 220 = 176 + 44.) Then the exponent is read
// off left to right, each step shifting the bits so far up by j (j
// squarings) and filling the new low j bits with a multiplication:
//
//	t = x223^(2^23) · x22   appends "0" + 22 ones       (bits 32..10)
//	t = t^(2^5)     · x     appends "00001"             (bits 9..5)
//	t = t^(2^3)     · x2    appends "011"               (bits 4..2)
//	t = t^(2^2)     · x     appends "01"                (bits 1..0)
//
// giving 223 + 23 + 5 + 3 + 2 = 256 bits = p - 2, in 255 squarings and 15
// multiplications. Nothing here branches on x, though the package does not
// need constant time.
func feInv(z, x *fe) {
	var x2, x3, x6, x9, x11, x22, x44, x88, x176, x220, x223, t fe

	feSqr(&x2, x)
	feMul(&x2, &x2, x)
	feSqr(&x3, &x2)
	feMul(&x3, &x3, x)
	feSqrN(&x6, &x3, 3)
	feMul(&x6, &x6, &x3)
	feSqrN(&x9, &x6, 3)
	feMul(&x9, &x9, &x3)
	feSqrN(&x11, &x9, 2)
	feMul(&x11, &x11, &x2)
	feSqrN(&x22, &x11, 11)
	feMul(&x22, &x22, &x11)
	feSqrN(&x44, &x22, 22)
	feMul(&x44, &x44, &x22)
	feSqrN(&x88, &x44, 44)
	feMul(&x88, &x88, &x44)
	feSqrN(&x176, &x88, 88)
	feMul(&x176, &x176, &x88)
	feSqrN(&x220, &x176, 44)
	feMul(&x220, &x220, &x44)
	feSqrN(&x223, &x220, 3)
	feMul(&x223, &x223, &x3)

	feSqrN(&t, &x223, 23)
	feMul(&t, &t, &x22)
	feSqrN(&t, &t, 5)
	feMul(&t, &t, x)
	feSqrN(&t, &t, 3)
	feMul(&t, &t, &x2)
	feSqrN(&t, &t, 2)
	feMul(&t, &t, x)
	t.normalize()
	*z = t
}

// scalarInverse returns 1/k mod n (0 for 0), using decred's
// ModNScalar.InverseValNonConst. Only public values (signature s) are
// inverted, so variable time is fine.
func scalarInverse(k *secp256k1.ModNScalar) secp256k1.ModNScalar {
	var inv secp256k1.ModNScalar
	inv.InverseValNonConst(k)
	return inv
}
