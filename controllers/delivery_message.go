package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
	wire "github.com/hookline/hookline/internal/message"
	"github.com/hookline/hookline/internal/payload"
	"github.com/hookline/hookline/internal/signing"
)

// message is what every attempt of a delivery sends: the same bytes each time.
type message struct {
	id        string
	body      []byte
	createdAt time.Time // when it was published, for the latency metric
}

// errWait means the delivery cannot be attempted yet; the message says why.
type errWait struct{ msg string }

func (e *errWait) Error() string { return e.msg }

// loadMessage builds the body from the delivery's payload or its event's.
func loadMessage(ctx context.Context, c client.Reader, d *hooklinev1.WebhookDelivery) (message, error) {
	data := d.Spec.Payload
	published := d.CreationTimestamp.Time
	uid := d.UID
	if ref := d.Spec.EventRef; ref != nil {
		var ev hooklinev1.WebhookEvent
		if err := c.Get(ctx, types.NamespacedName{Namespace: d.Namespace, Name: ref.Name}, &ev); err != nil {
			return message{}, err
		}
		data, published, uid = &ev.Spec.Payload, ev.CreationTimestamp.Time, ev.UID
	}
	if data == nil || len(data.Raw) == 0 {
		return message{}, fmt.Errorf("the payload is empty")
	}
	if err := payload.Check(data.Raw); err != nil {
		return message{}, err // admission refuses it; this one got in before it or around it
	}
	body, err := wire.Body(d.Spec.EventType, published, data.Raw)
	if err != nil {
		return message{}, err
	}
	return message{id: messageID(uid), body: body, createdAt: published}, nil
}

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

// buildRequest resolves the endpoint's headers and signs the message for this attempt.
func buildRequest(ctx context.Context, secrets SecretReader, ep *hooklinev1.WebhookEndpoint, m message, keys []signing.Key, now time.Time) (delivery.Request, string, error) {
	headers := make([]signing.Header, 0, len(ep.Spec.Headers))
	for _, h := range ep.Spec.Headers {
		value, err := headerValue(ctx, secrets, ep.Namespace, h)
		if err != nil {
			return delivery.Request{}, "", err
		}
		headers = append(headers, signing.Header{Name: h.Name, Value: value})
	}
	return wire.Build(wire.Attempt{ID: m.id, Body: m.body, URL: ep.Spec.URL, Headers: headers, Signer: signer(ep),
		Keys: keys, Now: now, Timeout: ep.Timeout()})
}

func headerValue(ctx context.Context, secrets SecretReader, namespace string, h hooklinev1.EndpointHeader) (string, error) {
	if h.Value != nil {
		return *h.Value, nil
	}
	ref := h.ValueFrom.SecretKeyRef
	s, err := secrets.Get(ctx, namespace, ref.Name)
	if apierrors.IsNotFound(err) {
		return "", &errWait{fmt.Sprintf("header %s: Secret %s not found", h.Name, ref.Name)}
	}
	if err != nil {
		return "", err
	}
	v, ok := s.Data[ref.Key]
	if !ok {
		return "", &errWait{fmt.Sprintf("header %s: Secret %s has no key %q", h.Name, ref.Name, ref.Key)}
	}
	return string(v), nil
}

// newTestDelivery is the hookline.test delivery of the send-test annotation.
func newTestDelivery(ep *hooklinev1.WebhookEndpoint, token string) *hooklinev1.WebhookDelivery {
	payload, _ := json.Marshal(map[string]string{"endpoint": ep.Name, "token": token, "message": "a test delivery from hookline"})
	return &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{
			Name:      deliveryName(ep.Name+"-test", token),
			Namespace: ep.Namespace,
		},
		Spec: hooklinev1.WebhookDeliverySpec{
			EndpointRef: hooklinev1.LocalRef{Name: ep.Name},
			EventType:   hooklinev1.TestEventType,
			Payload:     &runtime.RawExtension{Raw: payload},
		},
	}
}
