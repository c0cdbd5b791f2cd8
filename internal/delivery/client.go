// Package delivery sends one signed webhook request and classifies what came back. It
// guards the addresses it dials, follows no redirect and reads at most 1 KiB of the
// answer. It knows nothing of Kubernetes.
package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/hookline/hookline/internal/backoff"
	"github.com/hookline/hookline/internal/signing"
)

// drainLimit is how much more is read so the connection can be reused; beyond it the
// connection is dropped rather than read on.
const drainLimit = 64 << 10

// Outcome is what an attempt means for the delivery.
type Outcome int

const (
	// Succeeded: a 2xx answer.
	Succeeded Outcome = iota + 1
	// Retry: anything that may work later (other status codes, timeouts, connection,
	// TLS and DNS errors).
	Retry
	// Gone: 410, the receiver asks never to be called again.
	Gone
	// Blocked: the address is internal and private networks are not allowed.
	Blocked
	// Invalid: the request cannot be made at all (bad URL, http:// not allowed).
	Invalid
)

// Options are the manager-wide settings of the client.
type Options struct {
	AllowPrivateNetworks bool
	AllowInsecureHTTP    bool
	UserAgent            string
	// MaxConnsPerHost bounds the idle connections kept per receiver host; 0 means 16,
	// or MaxOpenConns when that is set.
	MaxConnsPerHost int
	// MaxOpenConns caps the connections open at once, idle ones included, across
	// every receiver; 0 means no cap. The manager sets --max-concurrent-deliveries.
	MaxOpenConns int
}

// MaxResponseHeaderBytes bounds a response's headers: a receiver answering with
// megabytes of headers costs an attempt (an error in its history), not the manager's
// memory.
const MaxResponseHeaderBytes = 64 << 10

// Client sends webhook requests.
type Client struct {
	http  *http.Client
	opts  Options
	conns *connLimiter // nil without MaxOpenConns
}

// NewClient returns a client whose dialer enforces the address guard.
func NewClient(opts Options) *Client {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if !opts.AllowPrivateNetworks {
		dialer.Control = guardControl
	}
	perHost := opts.MaxConnsPerHost
	if perHost <= 0 {
		perHost = 16
	}
	transport := &http.Transport{
		Proxy:                  nil, // a proxy would dial on our behalf, around the guard
		DialContext:            dialer.DialContext,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    10 * time.Second,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    perHost,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: MaxResponseHeaderBytes,
		ForceAttemptHTTP2:      true,
	}
	c := &Client{opts: opts}
	if opts.MaxOpenConns > 0 {
		c.conns = newConnLimiter(opts.MaxOpenConns, dialer.DialContext)
		c.conns.closeIdle = transport.CloseIdleConnections
		transport.DialContext = c.conns.DialContext
		transport.MaxIdleConns = min(transport.MaxIdleConns, opts.MaxOpenConns)
		// Many endpoints often share one host (a receiver per customer path): with
		// fewer idle connections kept per host than attempts in flight to it, every
		// attempt beyond them dialled and closed a connection. The cap bounds the
		// idle ones overall.
		if opts.MaxConnsPerHost <= 0 {
			transport.MaxIdleConnsPerHost = max(perHost, opts.MaxOpenConns)
		}
	}
	c.http = &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// OpenConns is the number of connections open now (0 without MaxOpenConns).
func (c *Client) OpenConns() int {
	if c.conns == nil {
		return 0
	}
	return c.conns.Open()
}

// Request is one attempt.
type Request struct {
	URL     string
	Body    []byte
	Headers []signing.Header
	Timeout time.Duration
}

// Result is what an attempt produced.
type Result struct {
	Outcome    Outcome
	StatusCode int
	// Response is the start of the body as printable UTF-8, at most MaxResponseBytes
	// as stored (see Excerpt).
	Response string
	// Error explains a failure without a status code; it never contains the URL.
	Error string
	// TimedOut: no complete answer within the timeout.
	TimedOut   bool
	Duration   time.Duration
	RetryAfter time.Duration
}

// Sender makes attempts; *Client is the real one, and a test may put another behind
// the seam.
type Sender interface {
	Send(ctx context.Context, r Request) Result
}

// Send makes one attempt. It never returns an error: every failure is a Result.
func (c *Client) Send(ctx context.Context, r Request) Result {
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return Result{Outcome: Invalid, Error: "the endpoint URL is not an absolute http(s) URL"}
	}
	if u.Scheme == "http" && !c.opts.AllowInsecureHTTP {
		return Result{Outcome: Invalid, Error: "http:// URLs are refused; the manager's --allow-insecure-http permits them"}
	}
	if r.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return Result{Outcome: Invalid, Error: "cannot build the request"}
	}
	for _, h := range r.Headers {
		req.Header.Set(h.Name, h.Value)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", c.opts.UserAgent)

	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		res := Result{Outcome: Retry, Error: describe(err), Duration: time.Since(start), TimedOut: errors.Is(err, context.DeadlineExceeded)}
		if errors.Is(err, ErrBlockedAddress) {
			res.Outcome = Blocked
		}
		return res
	}
	head, _ := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes))
	_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
	_ = resp.Body.Close()

	res := Result{
		StatusCode: resp.StatusCode,
		Response:   Excerpt(head, MaxResponseBytes),
		Duration:   time.Since(start),
	}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		res.Outcome = Succeeded
	case resp.StatusCode == http.StatusGone:
		res.Outcome = Gone
	default:
		res.Outcome = Retry
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			res.RetryAfter = backoff.RetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			res.Error = "redirects are not followed"
		}
	}
	return res
}

// describe turns a transport error into a short text for the delivery's history,
// without the URL (it may carry tokens in its query).
func describe(err error) string {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout: no complete answer within the endpoint's timeoutSeconds"
	case errors.Is(err, ErrBlockedAddress):
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Err != nil {
			return opErr.Err.Error()
		}
	}
	msg := err.Error()
	if len(msg) > 300 {
		msg = msg[:300]
	}
	return msg
}
