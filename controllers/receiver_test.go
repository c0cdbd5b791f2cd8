package controllers

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// capturedRequest is one request a test receiver got.
type capturedRequest struct {
	header http.Header
	body   []byte
	target string
}

// receiver is an httptest server on loopback that records requests and answers with
// the status codes it is given, in order (the last one repeats).
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	requests []capturedRequest
	codes    []int
}

func newReceiver(t *testing.T, codes ...int) *receiver {
	t.Helper()
	if len(codes) == 0 {
		codes = []int{http.StatusOK}
	}
	r := &receiver{codes: codes}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.requests = append(r.requests, capturedRequest{header: req.Header.Clone(), body: body, target: req.URL.String()})
		code := r.codes[min(len(r.requests), len(r.codes))-1]
		r.mu.Unlock()
		w.WriteHeader(code)
		_, _ = w.Write([]byte("received"))
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got() []capturedRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]capturedRequest(nil), r.requests...)
}

// activeEndpoint creates an endpoint and waits until it accepts deliveries.
func activeEndpoint(t *testing.T, ep *hooklinev1.WebhookEndpoint) *hooklinev1.WebhookEndpoint {
	t.Helper()
	if err := k8s.Create(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	return waitReady(t, ep.Namespace, ep.Name, hooklinev1.ReasonActive)
}

// hangingServer answers nothing until the test ends or the client gives up; inFlight
// counts the requests it holds.
func hangingServer(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	hang := make(chan struct{})
	inFlight := &atomic.Int32{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(hang); srv.Close() })
	return srv, inFlight
}

// newHandlerServer serves h on loopback until the test ends.
func newHandlerServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}
