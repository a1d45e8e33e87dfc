package shamir

// Arithmetic in GF(2^8) modulo the AES polynomial x^8+x^4+x^3+x+1 (0x11b).
//
// Every operation here runs in time independent of its operands: no
// lookup tables indexed by secret data (cache timing, the flaw Vault's
// external review found in its log/exp tables) and no branches on secret
// bits; conditional steps are applied through all-zero/all-one masks.

// gfAdd adds (and subtracts) in GF(2^8).
func gfAdd(a, b byte) byte { return a ^ b }

// gfMul multiplies a and b by shift-and-add, reducing as it goes.
func gfMul(a, b byte) byte {
	var r byte
	for range 8 {
		// -(b&1) is 0xff when the low bit of b is set, 0x00 otherwise.
		r ^= -(b & 1) & a
		b >>= 1
		// Multiply a by x; when a bit falls off the top, reduce by 0x11b.
		carry := -(a >> 7)
		a = (a << 1) ^ (carry & 0x1b)
	}
	return r
}

// gfInv returns the multiplicative inverse of a as a^254 (a^255 = 1 for a ≠ 0),
// and 0 for 0. The exponent is a public constant, so the square-and-multiply
// sequence is the same for every a.
func gfInv(a byte) byte {
	const exp = 254
	r := byte(1)
	for bit := 7; bit >= 0; bit-- {
		r = gfMul(r, r)
		if exp>>bit&1 == 1 {
			r = gfMul(r, a)
		}
	}
	return r
}

// gfDiv returns a/b; b must be nonzero (division by zero yields 0).
func gfDiv(a, b byte) byte { return gfMul(a, gfInv(b)) }
