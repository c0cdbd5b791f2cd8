package controllers

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/engine"
	wire "github.com/hookline/hookline/internal/message"
	"github.com/hookline/hookline/internal/payload"
)

// loadMessage builds the body from the delivery's payload or its event's. A payload
// that cannot be sent (its event gone, or invalid) is an *engine.BadPayload.
func loadMessage(ctx context.Context, c client.Reader, d *hooklinev1.WebhookDelivery) (engine.Message, error) {
	data := d.Spec.Payload
	published := d.CreationTimestamp.Time
	uid := d.UID
	if ref := d.Spec.EventRef; ref != nil {
		var ev hooklinev1.WebhookEvent
		err := c.Get(ctx, types.NamespacedName{Namespace: d.Namespace, Name: ref.Name}, &ev)
		if apierrors.IsNotFound(err) {
			return engine.Message{}, &engine.BadPayload{Msg: fmt.Sprintf("WebhookEvent %s no longer exists", ref.Name)}
		}
		if err != nil {
			return engine.Message{}, err
		}
		data, published, uid = &ev.Spec.Payload, ev.CreationTimestamp.Time, ev.UID
	}
	if data == nil || len(data.Raw) == 0 {
		return engine.Message{}, &engine.BadPayload{Msg: "the payload is empty"}
	}
	// Admission refuses an invalid payload; this one got in before it or around it.
	if err := payload.Check(data.Raw); err != nil {
		logf.FromContext(ctx).Info("refusing to deliver an invalid payload", "delivery", client.ObjectKeyFromObject(d), "problem", err.Error())
		return engine.Message{}, &engine.BadPayload{Msg: err.Error()}
	}
	body, err := wire.Body(d.Spec.EventType, published, data.Raw)
	if err != nil {
		return engine.Message{}, &engine.BadPayload{Msg: err.Error()}
	}
	return engine.Message{ID: messageID(uid), Body: body, CreatedAt: published}, nil
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
