package secp

// Group arithmetic on secp256k1 (y^2 = x^3 + 7) with the fe field type.
// All functions are variable time and handle every special case (doubling,
// inverse points, the point at infinity) by branching, so they are complete
// for all inputs on the curve.

// affinePoint is a finite curve point (x, y).
type affinePoint struct {
	x, y fe
}

// jacobianPoint is (X, Y, Z) representing (X/Z^2, Y/Z^3), or the point at
// infinity when inf is set (the coordinates are then meaningless).
type jacobianPoint struct {
	x, y, z fe
	inf     bool
}

var (
	curveGx = feFromHex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
	curveGy = feFromHex("483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8")
	curveB  = fe{7, 0, 0, 0}
)

// isOnCurve reports whether y^2 = x^3 + 7.
func isOnCurve(x, y *fe) bool {
	var l, r fe
	feSqr(&l, y)
	feSqr(&r, x)
	feMul(&r, &r, x)
	feAdd(&r, &r, &curveB)
	return l.equal(&r)
}

func (p *jacobianPoint) setAffine(a *affinePoint) {
	p.x, p.y, p.z, p.inf = a.x, a.y, feOne, false
}

// double sets r = 2p (r may alias p), in 3M + 4S, by the a = 0 Jacobian
// doubling formula with the slope halved: with L = 3X^2/2, S = Y^2, T = X*S,
// X3 = L^2 - 2T, Y3 = L(T - X3) - S^2, Z3 = Y*Z. (This is the usual
// doubling scaled by 1/2, a different representative of the same point.)
// secp256k1 has no point of order 2, so a finite point doubles to a finite
// point.
func (r *jacobianPoint) double(p *jacobianPoint) {
	if p.inf {
		r.inf = true
		return
	}
	var l, s, t, x3, y3, z3 fe
	feMul(&z3, &p.y, &p.z) // Z3 = Y*Z
	feSqr(&s, &p.y)        // S = Y^2
	feSqr(&l, &p.x)
	feAdd(&t, &l, &l)
	feAdd(&l, &t, &l)
	feHalf(&l, &l)      // L = 3X^2/2
	feMul(&t, &p.x, &s) // T = X*S
	feSqr(&x3, &l)
	feSub(&x3, &x3, &t)
	feSub(&x3, &x3, &t) // X3 = L^2 - 2T
	feSqr(&s, &s)       // S^2
	feSub(&y3, &t, &x3)
	feMul(&y3, &y3, &l)
	feSub(&y3, &y3, &s) // Y3 = L(T - X3) - S^2
	r.x, r.y, r.z, r.inf = x3, y3, z3, false
}

// addAffine sets r = p + q, or p - q if neg (r may alias p). Mixed addition,
// 8M + 3S.
func (r *jacobianPoint) addAffine(p *jacobianPoint, q *affinePoint, neg bool) {
	if p.inf {
		r.x, r.y, r.z, r.inf = q.x, q.y, feOne, false
		if neg {
			feNeg(&r.y, &r.y)
		}
		return
	}
	var z1z1, u2, s2, h, rr fe
	feSqr(&z1z1, &p.z)
	feMul(&u2, &q.x, &z1z1) // U2 = x2*Z1^2
	feMul(&s2, &p.z, &z1z1)
	feMul(&s2, &s2, &q.y) // S2 = y2*Z1^3
	if neg {
		feNeg(&s2, &s2)
	}
	feSub(&h, &u2, &p.x)  // H = U2 - X1
	feSub(&rr, &s2, &p.y) // R = S2 - Y1
	if h.isZero() {
		if rr.isZero() {
			r.double(p) // p == q
		} else {
			r.inf = true // p == -q
		}
		return
	}
	var hh, hhh, v, x3, y3, z3 fe
	feSqr(&hh, &h)
	feMul(&hhh, &h, &hh)
	feMul(&v, &p.x, &hh)
	feSqr(&x3, &rr)
	feSub(&x3, &x3, &hhh)
	feSub(&x3, &x3, &v)
	feSub(&x3, &x3, &v) // X3 = R^2 - H^3 - 2V
	feSub(&y3, &v, &x3)
	feMul(&y3, &y3, &rr)
	feMul(&hhh, &hhh, &p.y)
	feSub(&y3, &y3, &hhh) // Y3 = R(V - X3) - Y1*H^3
	feMul(&z3, &p.z, &h)  // Z3 = Z1*H
	r.x, r.y, r.z, r.inf = x3, y3, z3, false
}

// add sets r = p + q for Jacobian p and q (r may alias either). 12M + 4S.
func (r *jacobianPoint) add(p, q *jacobianPoint) {
	if p.inf {
		*r = *q
		return
	}
	if q.inf {
		*r = *p
		return
	}
	var z1z1, z2z2, u1, u2, s1, s2, h, rr fe
	feSqr(&z1z1, &p.z)
	feSqr(&z2z2, &q.z)
	feMul(&u1, &p.x, &z2z2)
	feMul(&u2, &q.x, &z1z1)
	feMul(&s1, &q.z, &z2z2)
	feMul(&s1, &s1, &p.y)
	feMul(&s2, &p.z, &z1z1)
	feMul(&s2, &s2, &q.y)
	feSub(&h, &u2, &u1)
	feSub(&rr, &s2, &s1)
	if h.isZero() {
		if rr.isZero() {
			r.double(p)
		} else {
			r.inf = true
		}
		return
	}
	var hh, hhh, v, x3, y3, z3 fe
	feSqr(&hh, &h)
	feMul(&hhh, &h, &hh)
	feMul(&v, &u1, &hh)
	feSqr(&x3, &rr)
	feSub(&x3, &x3, &hhh)
	feSub(&x3, &x3, &v)
	feSub(&x3, &x3, &v)
	feSub(&y3, &v, &x3)
	feMul(&y3, &y3, &rr)
	feMul(&hhh, &hhh, &s1)
	feSub(&y3, &y3, &hhh)
	feMul(&z3, &p.z, &q.z)
	feMul(&z3, &z3, &h)
	r.x, r.y, r.z, r.inf = x3, y3, z3, false
}

// toAffine returns p in affine form; ok is false for the point at infinity.
func (p *jacobianPoint) toAffine() (a affinePoint, ok bool) {
	if p.inf || p.z.isZero() {
		return a, false
	}
	var zi, zi2 fe
	feInv(&zi, &p.z)
	feSqr(&zi2, &zi)
	feMul(&a.x, &p.x, &zi2)
	feMul(&zi2, &zi2, &zi)
	feMul(&a.y, &p.y, &zi2)
	a.x.normalize()
	a.y.normalize()
	return a, true
}

// batchToAffine converts finite Jacobian points to affine with a single
// inversion (Montgomery's trick). scratch must have len(in) elements.
func batchToAffine(out []affinePoint, in []jacobianPoint, scratch []fe) {
	if len(in) == 0 {
		return
	}
	scratch[0] = in[0].z
	for i := 1; i < len(in); i++ {
		feMul(&scratch[i], &scratch[i-1], &in[i].z)
	}
	var inv, zi, zi2 fe
	feInv(&inv, &scratch[len(in)-1])
	for i := len(in) - 1; i >= 0; i-- {
		if i > 0 {
			feMul(&zi, &inv, &scratch[i-1])
			feMul(&inv, &inv, &in[i].z)
		} else {
			zi = inv
		}
		feSqr(&zi2, &zi)
		feMul(&out[i].x, &in[i].x, &zi2)
		feMul(&zi2, &zi2, &zi)
		feMul(&out[i].y, &in[i].y, &zi2)
		out[i].x.normalize()
		out[i].y.normalize()
	}
}

// oddMultiples fills jac with P, 3P, 5P, ... (len(jac) entries) in Jacobian
// form, P being finite.
func oddMultiples(jac []jacobianPoint, p *jacobianPoint) {
	var d jacobianPoint
	d.double(p)
	jac[0] = *p
	for i := 1; i < len(jac); i++ {
		jac[i].add(&jac[i-1], &d)
	}
}

// mulBeta sets out[i] = λ·in[i] = (β·x, y) using the curve endomorphism.
func mulBeta(out, in []affinePoint) {
	for i := range in {
		feMul(&out[i].x, &in[i].x, &feBeta)
		out[i].x.normalize()
		out[i].y = in[i].y
	}
}
