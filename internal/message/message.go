// Package message builds what goes over the wire for one attempt: the body, the same
// bytes on every attempt, and the signed request around it. It knows nothing of
// Kubernetes: the controllers resolve the endpoint's headers and keys first.
package message

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/signing"
)

// Body is {"type":…,"timestamp":…,"data":…}; the payload's bytes are kept as given
// (compact JSON from the API server), so every attempt sends the same bytes.
func Body(eventType string, published time.Time, payload []byte) ([]byte, error) {
	if !json.Valid(payload) {
		return nil, fmt.Errorf("the payload is not valid JSON")
	}
	typ, _ := json.Marshal(eventType)
	ts := published.UTC().Format(time.RFC3339)
	body := make([]byte, 0, len(payload)+len(typ)+len(ts)+40)
	body = append(body, `{"type":`...)
	body = append(body, typ...)
	body = append(body, `,"timestamp":"`...)
	body = append(body, ts...)
	body = append(body, `","data":`...)
	body = append(body, payload...)
	return append(body, '}'), nil
}

// Attempt is what one signed request is made of.
type Attempt struct {
	ID      string // the webhook-id
	Body    []byte
	URL     string
	Headers []signing.Header // the endpoint's own headers, values resolved
	Signer  signing.Signer
	Keys    []signing.Key // current first
	Now     time.Time     // the attempt's webhook-timestamp
	Timeout time.Duration
}

// Build signs the attempt: the endpoint's headers, webhook-id, webhook-timestamp and
// the scheme's signature headers. It returns the request and the signature header's
// value (recorded in the delivery's status).
func Build(a Attempt) (delivery.Request, string, error) {
	ts := a.Now.Unix()
	sigHeaders, err := a.Signer.Sign(signing.Request{
		ID: a.ID, Timestamp: ts, Body: a.Body,
		Method: "POST", TargetURI: a.URL, ContentType: "application/json",
	}, a.Keys)
	if err != nil {
		return delivery.Request{}, "", err
	}
	headers := make([]signing.Header, 0, len(a.Headers)+len(sigHeaders)+2)
	headers = append(headers, a.Headers...)
	headers = append(headers,
		signing.Header{Name: signing.HeaderWebhookID, Value: a.ID},
		signing.Header{Name: signing.HeaderWebhookTimestamp, Value: strconv.FormatInt(ts, 10)})
	headers = append(headers, sigHeaders...)
	return delivery.Request{URL: a.URL, Body: a.Body, Headers: headers, Timeout: a.Timeout}, sigHeaders[0].Value, nil
}
