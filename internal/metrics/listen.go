package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Listen opens the metrics listener: "unix:/path" for a unix socket
// (a stale socket file left by a crash is replaced; the socket is made
// group-accessible, 0660), else a TCP host:port. A TCP listener that is
// not bound to loopback is refused unless allowRemote: the exposition is
// plain HTTP, meant for the host's scraper.
func Listen(addr string, allowRemote bool) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return listenUnix(path)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %q: %w", addr, err)
	}
	if !allowRemote {
		if ip := net.ParseIP(host); (ip == nil && !strings.EqualFold(host, "localhost")) || (ip != nil && !ip.IsLoopback()) {
			return nil, fmt.Errorf("metrics listen %q: not a loopback address (set metrics.allow_remote to expose plain-HTTP metrics beyond this host)", addr)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && !allowRemote && !ta.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("metrics listen %q: bound to %s, which is not loopback", addr, ta.IP)
	}
	return ln, nil
}

func listenUnix(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("metrics listen: unix: needs a socket path")
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("metrics listen unix:%s: exists and is not a socket", path)
		}
		// In use by another process: refuse. Left by a crash: replace.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("metrics listen unix:%s: another process is listening on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("metrics listen: removing the stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("metrics listen unix:%s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("metrics listen unix:%s: %w", path, err)
	}
	return ln, nil
}

// Server serves the exposition at /metrics on its own listener.
type Server struct {
	http *http.Server
}

// NewServer returns a server for h (normally Metrics.Handler) at /metrics.
func NewServer(h http.Handler) *Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("appliance metrics: GET /metrics\n"))
	})
	return &Server{http: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return context.Background() },
	}}
}

// Serve serves on ln until Shutdown; it returns nil after a clean shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting for scrapes in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }
