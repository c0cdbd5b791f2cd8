package jsondepth

import (
	"net/http"
	"strings"
)

// CapResponses wraps an API client's transport: JSON responses (LIST, GET, WATCH
// streams, write responses) to paths under pathPrefix come back with every value
// nested deeper than max replaced by null, so that no object stored in the API server
// can make the client's decoder fail on a whole list or watch. The transport never
// touches requests, and leaves other paths and content types alone.
func CapResponses(rt http.RoundTripper, pathPrefix string, max int) http.RoundTripper {
	return &capTransport{next: rt, prefix: pathPrefix, max: max}
}

type capTransport struct {
	next   http.RoundTripper
	prefix string
	max    int
}

func (t *capTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || resp.Body == nil || !strings.HasPrefix(req.URL.Path, t.prefix) ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return resp, err
	}
	resp.Body = &cappedBody{Reader: Capped(resp.Body, t.max), closer: resp.Body}
	// The length may change; readers must not rely on the header.
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	return resp, nil
}

type cappedBody struct {
	Reader interface{ Read([]byte) (int, error) }
	closer interface{ Close() error }
}

func (b *cappedBody) Read(p []byte) (int, error) { return b.Reader.Read(p) }
func (b *cappedBody) Close() error               { return b.closer.Close() }
