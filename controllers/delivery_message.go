package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
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
	body, err := messageBody(d.Spec.EventType, published, data)
	if err != nil {
		return message{}, err
	}
	return message{id: messageID(uid), body: body, createdAt: published}, nil
}

// messageBody is {"type":…,"timestamp":…,"data":…}; the payload's bytes are kept as the
// API server returned them (compact JSON), so every attempt sends the same bytes.
func messageBody(eventType string, published time.Time, payload *runtime.RawExtension) ([]byte, error) {
	if !json.Valid(payload.Raw) {
		return nil, fmt.Errorf("the payload is not valid JSON")
	}
	typ, _ := json.Marshal(eventType)
	ts := published.UTC().Format(time.RFC3339)
	body := make([]byte, 0, len(payload.Raw)+len(typ)+len(ts)+40)
	body = append(body, `{"type":`...)
	body = append(body, typ...)
	body = append(body, `,"timestamp":"`...)
	body = append(body, ts...)
	body = append(body, `","data":`...)
	body = append(body, payload.Raw...)
	return append(body, '}'), nil
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

// buildRequest signs the message for this attempt and adds the endpoint's headers.
func buildRequest(ctx context.Context, secrets SecretReader, ep *hooklinev1.WebhookEndpoint, m message, keys []signing.Key, now time.Time) (delivery.Request, string, error) {
	ts := now.Unix()
	sigHeaders, err := signer(ep).Sign(signing.Request{
		ID: m.id, Timestamp: ts, Body: m.body,
		Method: "POST", TargetURI: ep.Spec.URL, ContentType: "application/json",
	}, keys)
	if err != nil {
		return delivery.Request{}, "", err
	}
	headers := make([]delivery.Header, 0, len(ep.Spec.Headers)+len(sigHeaders)+2)
	for _, h := range ep.Spec.Headers {
		value, err := headerValue(ctx, secrets, ep.Namespace, h)
		if err != nil {
			return delivery.Request{}, "", err
		}
		headers = append(headers, delivery.Header{Name: h.Name, Value: value})
	}
	headers = append(headers,
		delivery.Header{Name: signing.HeaderWebhookID, Value: m.id},
		delivery.Header{Name: signing.HeaderWebhookTimestamp, Value: strconv.FormatInt(ts, 10)})
	for _, h := range sigHeaders {
		headers = append(headers, delivery.Header{Name: h.Name, Value: h.Value})
	}
	return delivery.Request{URL: ep.Spec.URL, Body: m.body, Headers: headers, Timeout: ep.Timeout()}, sigHeaders[0].Value, nil
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
