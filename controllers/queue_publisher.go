package controllers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/publishapi"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
)

// QueuePublisher fans events of the publish API out to the namespace's receiving
// endpoints (from the manager's cache) and queues them in one transaction.
type QueuePublisher struct {
	Endpoints client.Reader
	Queue     *pgstore.Queue
}

// Publish queues the events; an event whose name is queued already queues nothing.
func (p QueuePublisher) Publish(ctx context.Context, namespace string, events []publishapi.Event) (int, error) {
	var endpoints hooklinev1.WebhookEndpointList
	if err := p.Endpoints.List(ctx, &endpoints, client.InNamespace(namespace)); err != nil {
		return 0, fmt.Errorf("%w: listing endpoints: %v", publishapi.ErrUnavailable, err)
	}
	batch := make([]pgstore.Event, len(events))
	for i, e := range events {
		selector := labels.Everything()
		if e.EndpointSelector != nil {
			s, err := metav1.LabelSelectorAsSelector(e.EndpointSelector)
			if err != nil {
				return 0, err // checked by the handler
			}
			selector = s
		}
		var names []string
		for j := range endpoints.Items {
			if receives(&endpoints.Items[j], e.Type, selector) {
				names = append(names, endpoints.Items[j].Name)
			}
		}
		// A fresh id: if the name was published before, the stored one stays.
		uid := make([]byte, 16)
		_, _ = rand.Read(uid)
		id := hex.EncodeToString(uid)
		batch[i] = pgstore.Event{Namespace: namespace, Name: e.Name, UID: id, Type: e.Type, Payload: e.Payload,
			MessageID: "msg_" + id, Endpoints: names}
	}
	queued, err := p.Queue.Publish(ctx, batch)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", publishapi.ErrUnavailable, err)
	}
	return queued, nil
}
