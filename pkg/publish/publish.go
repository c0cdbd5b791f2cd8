// Package publish is a client of hookline's publish API (the PostgreSQL delivery
// store): publish one event or a batch of up to 1,000, idempotent by each event's name,
// with retries while the manager asks for them. Authenticate with a ServiceAccount
// token whose Role allows create on webhookevents.hookline.dev in the namespace.
//
//	c := publish.Client{URL: "https://hookline-publish.hookline-system.svc:8445", Token: token}
//	_, err := c.Publish(ctx, "shop", publish.Event{Name: "order-1234-created", Type: "order.created",
//		Payload: json.RawMessage(`{"order":1234}`)})
package publish

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Event is one event to publish. Its name is its idempotency key: publishing the same
// name again in the namespace queues nothing.
type Event struct {
	Name             string                `json:"name"`
	Type             string                `json:"type"`
	Payload          json.RawMessage       `json:"payload"`
	EndpointSelector *metav1.LabelSelector `json:"endpointSelector,omitempty"`
}

// Request is the body of POST /v1/namespaces/{namespace}/events.
type Request struct {
	Events []Event `json:"events"`
}

// Response says what was published.
type Response struct {
	// Events is how many events of the request were taken (new or already there).
	Events int `json:"events"`
	// Queued is how many deliveries were queued; an event published before queues none.
	Queued int `json:"queued"`
}

// MaxEvents is the most events one request may carry.
const MaxEvents = 1000

// Error is an answer other than 200: the status code and the manager's message.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	// retryAfter is the manager's Retry-After.
	retryAfter time.Duration
}

func (e *Error) Error() string { return fmt.Sprintf("publish API (%d): %s", e.Code, e.Message) }

// Retryable reports whether the request may succeed if sent again unchanged.
func (e *Error) Retryable() bool {
	return e.Code == http.StatusServiceUnavailable || e.Code == http.StatusTooManyRequests || e.Code >= 500
}

// Client publishes to one manager's publish API.
type Client struct {
	// URL of the publish API, e.g. https://hookline-publish.hookline-system.svc:8445.
	URL string
	// Token is the caller's bearer token.
	Token string
	// HTTP is the client used; nil: one that accepts the manager's self-made
	// certificate (the token, not the certificate, is what is trusted).
	HTTP *http.Client
	// Attempts bounds the tries of one request (default 5), with backoff from 200 ms
	// or as Retry-After says.
	Attempts int
}

// Publish publishes events (at most MaxEvents) to namespace.
func (c Client) Publish(ctx context.Context, namespace string, events ...Event) (Response, error) {
	body, err := json.Marshal(Request{Events: events})
	if err != nil {
		return Response{}, err
	}
	endpoint := c.URL + "/v1/namespaces/" + url.PathEscape(namespace) + "/events"
	attempts := c.Attempts
	if attempts <= 0 {
		attempts = 5
	}
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		resp, err := c.post(ctx, endpoint, body)
		var apiErr *Error
		retry := err != nil
		if e, ok := err.(*Error); ok {
			apiErr, retry = e, e.Retryable()
		}
		if err == nil || !retry || attempt >= attempts {
			return resp, err
		}
		if apiErr != nil && apiErr.retryAfter > 0 {
			wait = apiErr.retryAfter
		}
		select {
		case <-ctx.Done():
			return Response{}, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

func (c Client) post(ctx context.Context, endpoint string, body []byte) (Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return Response{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Response{}, err
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{Code: resp.StatusCode}
		if json.Unmarshal(raw, e) != nil || e.Message == "" {
			e.Message = string(raw)
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			e.retryAfter = time.Duration(s) * time.Second
		}
		return Response{}, e
	}
	var out Response
	return out, json.Unmarshal(raw, &out)
}

func (c Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, //nolint:gosec // the token is what is trusted
		MaxIdleConnsPerHost: 16,
	}}
}
