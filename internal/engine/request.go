package engine

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
	wire "github.com/hookline/hookline/internal/message"
	"github.com/hookline/hookline/internal/signing"
)

// Message is what every attempt of a delivery sends: the same bytes each time.
type Message struct {
	ID        string
	Body      []byte
	CreatedAt time.Time // when it was published, for the latency metric
}

// BadPayload is a message that cannot be sent: the delivery fails with reason
// BadPayload, and nothing is sent.
type BadPayload struct{ Msg string }

func (e *BadPayload) Error() string { return e.Msg }

// signer returns the endpoint's scheme as a signing.Signer.
func signer(ep *hooklinev1.WebhookEndpoint) signing.Signer {
	switch ep.SigningScheme() {
	case hooklinev1.SchemeHMACTimestamp:
		return signing.Signer{Scheme: signing.HMACTimestamp, HeaderName: ep.HMACTimestampHeader()}
	case hooklinev1.SchemeHTTPMessageSignatures:
		return signing.Signer{Scheme: signing.HTTPMessageSignatures}
	}
	return signing.Signer{Scheme: signing.StandardWebhooks}
}

// BuildRequest resolves the endpoint's headers and signs the message for this attempt.
func BuildRequest(ctx context.Context, secrets SecretReader, ep *hooklinev1.WebhookEndpoint, m Message, keys []signing.Key, now time.Time) (delivery.Request, string, error) {
	headers := make([]signing.Header, 0, len(ep.Spec.Headers))
	for _, h := range ep.Spec.Headers {
		value, err := headerValue(ctx, secrets, ep.Namespace, h)
		if err != nil {
			return delivery.Request{}, "", err
		}
		headers = append(headers, signing.Header{Name: h.Name, Value: value})
	}
	return wire.Build(wire.Attempt{ID: m.ID, Body: m.Body, URL: ep.Spec.URL, Headers: headers, Signer: signer(ep),
		Keys: keys, Now: now, Timeout: ep.Timeout()})
}

func headerValue(ctx context.Context, secrets SecretReader, namespace string, h hooklinev1.EndpointHeader) (string, error) {
	if h.Value != nil {
		return *h.Value, nil
	}
	ref := h.ValueFrom.SecretKeyRef
	s, err := secrets.Get(ctx, namespace, ref.Name)
	if apierrors.IsNotFound(err) {
		return "", &Wait{fmt.Sprintf("header %s: Secret %s not found", h.Name, ref.Name)}
	}
	if err != nil {
		return "", err
	}
	v, ok := s.Data[ref.Key]
	if !ok {
		return "", &Wait{fmt.Sprintf("header %s: Secret %s has no key %q", h.Name, ref.Name, ref.Key)}
	}
	return string(v), nil
}
