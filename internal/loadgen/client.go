package loadgen

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

// TLSFiles locate the client's certificate and the CA of the server's.
type TLSFiles struct {
	Cert, Key, CA string
}

// clientTLS builds the mutual-TLS 1.3 client configuration, HTTP/1.1 only.
func clientTLS(f TLSFiles, serverName string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("CA %s: no certificate", f.CA)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
		ServerName:   serverName,
		NextProtos:   []string{"http/1.1"},
	}, nil
}

// conn is one persistent HTTP/1.1 connection over mutual TLS, reused for
// every request of one worker. It is deliberately minimal so that the load
// generator costs little of the CPU it shares with the appliance: the
// request is written in one call from a reused buffer and the answer is
// read into a reused buffer, without net/http's per-request allocations.
// It is not safe for concurrent use.
type conn struct {
	addr string
	cfg  *tls.Config
	head []byte // "POST path HTTP/1.1\r\nHost…\r\nContent-Length: "

	tc   *tls.Conn
	br   *bufio.Reader
	wbuf []byte
	body []byte
}

func newConn(addr, host, path string, cfg *tls.Config) *conn {
	head := fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: ", path, host)
	return &conn{addr: addr, cfg: cfg, head: head}
}

// dial (re)connects and completes the TLS handshake.
func (c *conn) dial(timeout time.Duration) error {
	c.close()
	d := &net.Dialer{Timeout: timeout}
	tc, err := tls.DialWithDialer(d, "tcp", c.addr, c.cfg)
	if err != nil {
		return err
	}
	c.tc = tc
	if c.br == nil {
		c.br = bufio.NewReaderSize(tc, 16<<10)
	} else {
		c.br.Reset(tc)
	}
	return nil
}

func (c *conn) close() {
	if c.tc != nil {
		_ = c.tc.Close()
		c.tc = nil
	}
}

// post sends body and returns the status and the answer's body, which is
// valid until the next call. After an error the connection is closed; the
// next post redials.
func (c *conn) post(body []byte) (int, []byte, error) {
	if c.tc == nil {
		if err := c.dial(10 * time.Second); err != nil {
			return 0, nil, err
		}
	}
	c.wbuf = append(c.wbuf[:0], c.head...)
	c.wbuf = strconv.AppendInt(c.wbuf, int64(len(body)), 10)
	c.wbuf = append(c.wbuf, "\r\n\r\n"...)
	c.wbuf = append(c.wbuf, body...)
	if _, err := c.tc.Write(c.wbuf); err != nil {
		c.close()
		return 0, nil, err
	}
	status, keep, err := c.readResponse()
	if err != nil || !keep {
		c.close()
	}
	return status, c.body, err
}

// readResponse reads one HTTP/1.1 answer into c.body: the status line, the
// headers it needs (Content-Length, Transfer-Encoding, Connection) and the
// body, plain or chunked.
func (c *conn) readResponse() (status int, keep bool, err error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, false, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, fmt.Errorf("bad status line %q", line)
	}
	length, chunked, keep := -1, false, true
	for {
		h, err := c.br.ReadSlice('\n')
		if err != nil {
			return status, false, err
		}
		h = bytes.TrimRight(h, "\r\n")
		if len(h) == 0 {
			break
		}
		name, val, ok := bytes.Cut(h, []byte{':'})
		if !ok {
			return status, false, fmt.Errorf("bad header line %q", h)
		}
		val = bytes.TrimSpace(val)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(val)); err != nil || length < 0 {
				return status, false, fmt.Errorf("bad Content-Length %q", val)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(val, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			keep = !bytes.EqualFold(val, []byte("close"))
		}
	}
	c.body = c.body[:0]
	switch {
	case chunked:
		return status, keep, c.readChunked()
	case length >= 0:
		c.body = grow(c.body, length)
		_, err = io.ReadFull(c.br, c.body)
		return status, keep, err
	default:
		// Neither: the body runs to the end of the connection.
		var b bytes.Buffer
		_, err = b.ReadFrom(c.br)
		c.body = append(c.body, b.Bytes()...)
		return status, false, err
	}
}

func (c *conn) readChunked() error {
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 31)
		if err != nil {
			return fmt.Errorf("bad chunk size %q", line)
		}
		if n == 0 {
			// Trailers, then the final empty line.
			for {
				t, err := c.br.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(bytes.TrimRight(t, "\r\n")) == 0 {
					return nil
				}
			}
		}
		off := len(c.body)
		c.body = grow(c.body, off+int(n))
		if _, err := io.ReadFull(c.br, c.body[off:]); err != nil {
			return err
		}
		crlf, err := c.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(bytes.TrimRight(crlf, "\r\n")) != 0 {
			return errors.New("chunk not followed by CRLF")
		}
	}
}

// grow returns b resized to n bytes, reusing its array when it is large enough.
func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]byte, n, max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}
