package ethereum

import (
	"errors"
	"fmt"
	"math/big"
	"math/bits"
)

// The RLP codec here is deliberately minimal and strict. go-ethereum's rlp
// package is (L)GPL, and a signer must refuse every payload that has more
// than one encoding, so decode accepts only the canonical form: that way the
// bytes an operator approved and the bytes hashed for signing are the same.

// maxRLPDepth bounds list nesting. Transactions nest at most four deep
// (envelope, access list, tuple, storage keys); the bound exists so hostile
// input cannot drive unbounded recursion.
const maxRLPDepth = 16

var (
	errRLPTruncated    = errors.New("rlp: input truncated")
	errRLPNonCanonical = errors.New("rlp: non-canonical encoding")
	errRLPTrailing     = errors.New("rlp: trailing bytes after value")
	errRLPTooDeep      = errors.New("rlp: lists nested too deeply")
)

// rlpValue is a decoded RLP item: either a byte string or a list.
// Decoded strings alias the input buffer; callers copy what they keep.
type rlpValue struct {
	isList bool
	str    []byte
	list   []rlpValue
}

// rlpDecode decodes exactly one canonical RLP item spanning all of b.
func rlpDecode(b []byte) (rlpValue, error) {
	v, rest, err := rlpDecodeItem(b, 0)
	if err != nil {
		return rlpValue{}, err
	}
	if len(rest) != 0 {
		return rlpValue{}, fmt.Errorf("%w: %d bytes", errRLPTrailing, len(rest))
	}
	return v, nil
}

func rlpDecodeItem(b []byte, depth int) (rlpValue, []byte, error) {
	isList, content, rest, err := rlpSplit(b)
	if err != nil {
		return rlpValue{}, nil, err
	}
	if !isList {
		return rlpValue{str: content}, rest, nil
	}
	if depth >= maxRLPDepth {
		return rlpValue{}, nil, errRLPTooDeep
	}
	// A non-nil empty slice keeps "empty list" distinct from "string".
	items := []rlpValue{}
	for len(content) > 0 {
		var item rlpValue
		item, content, err = rlpDecodeItem(content, depth+1)
		if err != nil {
			return rlpValue{}, nil, err
		}
		items = append(items, item)
	}
	return rlpValue{isList: true, list: items}, rest, nil
}

// rlpSplit reads one item header and returns its payload and what follows.
func rlpSplit(b []byte) (isList bool, content, rest []byte, err error) {
	if len(b) == 0 {
		return false, nil, nil, errRLPTruncated
	}
	p := b[0]
	switch {
	case p < 0x80:
		return false, b[:1], b[1:], nil
	case p <= 0xb7:
		n := int(p - 0x80)
		if len(b)-1 < n {
			return false, nil, nil, errRLPTruncated
		}
		if n == 1 && b[1] < 0x80 {
			return false, nil, nil, fmt.Errorf("%w: single byte 0x%02x wrapped in a string header", errRLPNonCanonical, b[1])
		}
		return false, b[1 : 1+n], b[1+n:], nil
	case p < 0xc0:
		content, rest, err := rlpLongPayload(b, int(p-0xb7))
		return false, content, rest, err
	case p <= 0xf7:
		n := int(p - 0xc0)
		if len(b)-1 < n {
			return false, nil, nil, errRLPTruncated
		}
		return true, b[1 : 1+n], b[1+n:], nil
	default:
		content, rest, err := rlpLongPayload(b, int(p-0xf7))
		return true, content, rest, err
	}
}

// rlpLongPayload handles the long forms, whose length is itself encoded in
// lenOfLen big-endian bytes after the prefix.
func rlpLongPayload(b []byte, lenOfLen int) (content, rest []byte, err error) {
	if len(b)-1 < lenOfLen {
		return nil, nil, errRLPTruncated
	}
	lb := b[1 : 1+lenOfLen]
	if lb[0] == 0 {
		return nil, nil, fmt.Errorf("%w: length has a leading zero byte", errRLPNonCanonical)
	}
	if lenOfLen > 8 {
		return nil, nil, errRLPTruncated // a length over 2^64 cannot be in memory
	}
	var n uint64
	for _, c := range lb {
		n = n<<8 | uint64(c)
	}
	if n < 56 {
		return nil, nil, fmt.Errorf("%w: long form used for length %d", errRLPNonCanonical, n)
	}
	avail := uint64(len(b) - 1 - lenOfLen)
	if n > avail {
		return nil, nil, errRLPTruncated
	}
	start := 1 + lenOfLen
	return b[start : start+int(n)], b[start+int(n):], nil
}

// rlpEncode appends the encoding of v to dst.
func rlpEncode(dst []byte, v rlpValue) []byte {
	if !v.isList {
		if len(v.str) == 1 && v.str[0] < 0x80 {
			return append(dst, v.str[0])
		}
		dst = rlpAppendHeader(dst, 0x80, uint64(len(v.str)))
		return append(dst, v.str...)
	}
	var body []byte
	for _, item := range v.list {
		body = rlpEncode(body, item)
	}
	dst = rlpAppendHeader(dst, 0xc0, uint64(len(body)))
	return append(dst, body...)
}

func rlpAppendHeader(dst []byte, base byte, n uint64) []byte {
	if n < 56 {
		return append(dst, base+byte(n))
	}
	lenOfLen := (bits.Len64(n) + 7) / 8
	dst = append(dst, base+55+byte(lenOfLen))
	for i := lenOfLen - 1; i >= 0; i-- {
		dst = append(dst, byte(n>>(8*uint(i))))
	}
	return dst
}

func rlpBytes(b []byte) rlpValue { return rlpValue{str: b} }

func rlpList(items ...rlpValue) rlpValue {
	if items == nil {
		items = []rlpValue{}
	}
	return rlpValue{isList: true, list: items}
}

// rlpUint encodes an integer as its minimal big-endian bytes (zero is empty).
func rlpUint(u uint64) rlpValue {
	var buf [8]byte
	n := (bits.Len64(u) + 7) / 8
	for i := 0; i < n; i++ {
		buf[i] = byte(u >> (8 * uint(n-1-i)))
	}
	return rlpValue{str: buf[:n]}
}

// rlpBig encodes a non-negative integer; nil encodes as zero.
func rlpBig(x *big.Int) rlpValue {
	if x == nil {
		return rlpValue{str: nil}
	}
	return rlpValue{str: x.Bytes()}
}
