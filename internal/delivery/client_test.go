package delivery

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookline/hookline/internal/conncount"
	"github.com/hookline/hookline/internal/signing"
)

func send(t *testing.T, c *Client, url string, timeout time.Duration) Result {
	t.Helper()
	return c.Send(context.Background(), Request{URL: url, Body: []byte(`{"a":1}`), Timeout: timeout,
		Headers: []signing.Header{{Name: "webhook-id", Value: "msg_1"}, {Name: "X-Tenant", Value: "acme"}}})
}

func TestOutcomes(t *testing.T) {
	mux := http.NewServeMux()
	var got *http.Request
	var gotBody []byte
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		got, gotBody = r, must(io.ReadAll(r.Body))
		w.WriteHeader(204)
	})
	mux.HandleFunc("/gone", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(410) })
	mux.HandleFunc("/busy", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(503)
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
		_, _ = w.Write([]byte(strings.Repeat("x", 1<<20)))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := NewClient(Options{AllowPrivateNetworks: true, AllowInsecureHTTP: true, UserAgent: "hookline/test"})

	if r := send(t, c, srv.URL+"/ok", time.Second); r.Outcome != Succeeded || r.StatusCode != 204 {
		t.Fatalf("/ok: %+v", r)
	}
	if got.Method != "POST" || got.Header.Get("Content-Type") != "application/json" || got.Header.Get("User-Agent") != "hookline/test" ||
		got.Header.Get("webhook-id") != "msg_1" || got.Header.Get("X-Tenant") != "acme" || string(gotBody) != `{"a":1}` {
		t.Fatalf("request as received: %s %v %q", got.Method, got.Header, gotBody)
	}
	if r := send(t, c, srv.URL+"/gone", time.Second); r.Outcome != Gone {
		t.Errorf("/gone: %+v", r)
	}
	if r := send(t, c, srv.URL+"/busy", time.Second); r.Outcome != Retry || r.RetryAfter != 2*time.Minute {
		t.Errorf("/busy: %+v", r)
	}
	if r := send(t, c, srv.URL+"/redirect", time.Second); r.Outcome != Retry || r.StatusCode != 302 {
		t.Errorf("/redirect: a redirect must not be followed: %+v", r)
	}
	if r := send(t, c, srv.URL+"/big", time.Second); r.Outcome != Retry || len(r.Response) != MaxResponseBytes {
		t.Errorf("/big: kept %d bytes, want %d", len(r.Response), MaxResponseBytes)
	}
	if r := send(t, c, srv.URL+"/slow", 200*time.Millisecond); r.Outcome != Retry || !strings.Contains(r.Error, "timeout") {
		t.Errorf("/slow: %+v", r)
	}
	closed := httptest.NewServer(mux)
	closed.Close()
	if r := send(t, c, closed.URL+"/ok", time.Second); r.Outcome != Retry || r.Error == "" {
		t.Errorf("connection refused: %+v", r)
	}
	if r := send(t, NewClient(Options{AllowPrivateNetworks: true}), srv.URL+"/ok", time.Second); r.Outcome != Invalid {
		t.Errorf("http:// without --allow-insecure-http: %+v", r)
	}
}

func TestGuardBlocksWhatResolvesInternally(t *testing.T) {
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	defer srv.Close()
	c := NewClient(Options{AllowInsecureHTTP: true})
	port := srv.URL[strings.LastIndex(srv.URL, ":"):]
	// "localhost" is a name: the guard judges the address it resolves to.
	for _, u := range []string{srv.URL, "http://localhost" + port, "http://[::ffff:127.0.0.1]" + port} {
		r := send(t, c, u+"/x", time.Second)
		if r.Outcome != Blocked || !strings.Contains(r.Error, "blocked address") {
			t.Errorf("%s: %+v, want Blocked", u, r)
		}
	}
	if hits != 0 {
		t.Fatalf("the receiver was reached %d times", hits)
	}
}

func TestIsBlocked(t *testing.T) {
	blocked := []string{"127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
		"0.0.0.0", "224.0.0.1", "::1", "::", "fd00:ec2::254", "fe80::1", "ff02::1", "::ffff:10.0.0.1", "::ffff:169.254.169.254"}
	for _, s := range blocked {
		if !IsBlocked(netip.MustParseAddr(s)) {
			t.Errorf("%s is not blocked", s)
		}
	}
	for _, s := range []string{"8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "172.32.0.1", "100.128.0.1"} {
		if IsBlocked(netip.MustParseAddr(s)) {
			t.Errorf("%s is blocked", s)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// connCounter is a test receiver that counts the connections open to it.
type connCounter struct {
	*httptest.Server
	conncount.Counter
}

func newConnCounter(t *testing.T, h http.Handler) *connCounter {
	t.Helper()
	c := &connCounter{}
	c.Server = httptest.NewUnstartedServer(h)
	c.Config.ConnState = c.ConnState
	c.Start()
	t.Cleanup(c.Close)
	return c
}

// One receiver and many concurrent attempts: the receiver never sees more open
// connections than the cap.
func TestOpenConnectionsNeverExceedTheCap(t *testing.T) {
	slow := newConnCounter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
	}))
	c := NewClient(Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true, MaxOpenConns: 4, MaxConnsPerHost: 16})
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if res := send(t, c, slow.URL, 10*time.Second); res.Outcome != Succeeded {
				t.Errorf("attempt %d: %+v", i, res)
			}
		}()
	}
	wg.Wait()
	if peak := slow.Peak(); peak > 4 {
		t.Fatalf("the receiver saw %d connections open at once, cap 4", peak)
	}
	t.Logf("peak open connections seen by the receiver: %d (cap 4)", slow.Peak())
}

// Idle connections to one receiver hold slots; attempts to another still go (idle
// ones are closed to make room), and the cap holds on the client's side throughout.
func TestIdleConnectionsMakeRoomForOtherReceivers(t *testing.T) {
	a := newConnCounter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	b := newConnCounter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	c := NewClient(Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true, MaxOpenConns: 2, MaxConnsPerHost: 16})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := a.URL
			if i%2 == 1 {
				target = b.URL
			}
			if res := send(t, c, target, 5*time.Second); res.Outcome != Succeeded {
				t.Errorf("attempt %d: %+v", i, res)
			}
			if n := c.OpenConns(); n > 2 {
				t.Errorf("%d connections open, cap 2", n)
			}
		}()
	}
	wg.Wait()
}

func TestHugeResponseHeadersCostAnAttemptNotMemory(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		big := strings.Repeat("x", 8<<10)
		for i := range 64 {
			w.Header().Set(fmt.Sprintf("X-Big-%d", i), big) // 512 KiB of headers
		}
	}))
	defer srv.Close()
	res := send(t, NewClient(Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true}), srv.URL, 5*time.Second)
	if res.Outcome != Retry || !strings.Contains(res.Error, "exceeded") {
		t.Fatalf("result %+v", res)
	}
}

func TestTimeoutIsMarked(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // the server notices the client leave once the body is read
		<-r.Context().Done()
	}))
	defer srv.Close()
	res := send(t, NewClient(Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true}), srv.URL, 100*time.Millisecond)
	if res.Outcome != Retry || !res.TimedOut {
		t.Fatalf("result %+v", res)
	}
}
