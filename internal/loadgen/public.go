package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// The pieces of the load generator other harnesses reuse (the crash
// consistency test, internal/crashtest): the keep-alive mutual-TLS
// connection and the request bodies, with the amounts they move.

// Conn is one keep-alive HTTP/1.1 connection over mutual TLS that posts
// JSON to one path, redialling after an error. Unlike the load generator's
// own connections, every exchange has a deadline, so a harness that kills
// the server never waits on a dead connection. It is not safe for
// concurrent use.
type Conn struct {
	c       *conn
	timeout time.Duration
}

// NewConn returns a connection to addr (host:port; the host is also the TLS
// server name) that posts to path as the client in files. It dials on the
// first Post.
func NewConn(addr, path string, files TLSFiles, timeout time.Duration) (*Conn, error) {
	if timeout <= 0 {
		return nil, errors.New("loadgen: a positive timeout is required")
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("loadgen: address %q: %w", addr, err)
	}
	cfg, err := clientTLS(files, host)
	if err != nil {
		return nil, err
	}
	return &Conn{c: newConn(addr, addr, path, cfg), timeout: timeout}, nil
}

// Post sends body and returns the status and a copy of the answer's body.
// A transport error (refused, reset, timed out) closes the connection; the
// next Post redials.
func (c *Conn) Post(body []byte) (int, []byte, error) {
	if c.c.tc == nil {
		if err := c.c.dial(c.timeout); err != nil {
			return 0, nil, err
		}
	}
	if err := c.c.tc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		c.c.close()
		return 0, nil, err
	}
	status, answer, err := c.c.post(body)
	return status, bytes.Clone(answer), err
}

// Close closes the connection.
func (c *Conn) Close() { c.c.close() }

// Bodies makes POST /v1/sign bodies, each with a payload and an idempotency
// key never used before ("lg-<tag>-eth-<n>" or "lg-<tag>-btc-<n>").
type Bodies struct{ src bodySource }

// EthBodies makes EIP-1559 transfers of EthValue wei to EthDestination
// with increasing nonces, for key keyID on chain chainID.
func EthBodies(keyID string, chainID int64, tag string) (*Bodies, error) {
	s, err := newEthSource(keyID, chainID, tag)
	if err != nil {
		return nil, err
	}
	return &Bodies{src: s}, nil
}

// BTCBodies makes one-input P2WPKH PSBTs spending a (made-up) BTCCoin
// satoshi output of the key whose uncompressed public key is pub65: a
// payment of BTCPayment to BTCDestinationProgram, the rest less the fee
// back to the key.
func BTCBodies(keyID, network string, pub65 []byte, tag string) (*Bodies, error) {
	s, err := newBTCSource(keyID, network, pub65, tag)
	if err != nil {
		return nil, err
	}
	return &Bodies{src: s}, nil
}

// Next returns the next body.
func (b *Bodies) Next() ([]byte, error) {
	out, err := b.src.build(1)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// EthValue returns the value in wei of every Ethereum transfer EthBodies
// makes: what each one counts against the key's ETH windows.
func EthValue() *big.Int { return new(big.Int).Set(ethValue) }

// Bitcoin amounts of BTCBodies' PSBTs, in satoshi: the coin spent, and the
// payment to the foreign destination (what each one counts against the
// key's BTC windows; the change returns to the key).
const (
	BTCCoin    = btcCoin
	BTCPayment = btcPay
)
