package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/kubernetes"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/callerauth"
	"github.com/hookline/hookline/internal/publishapi"
	"github.com/hookline/hookline/internal/testenv"
	"github.com/hookline/hookline/pkg/publish"
)

// The publish API as producers meet it: a batch from an allowed ServiceAccount is
// delivered, the same names again deliver nothing, a refused ServiceAccount gets 403
// with the reason, bad payloads a 4xx naming the rule, and while PostgreSQL is down
// 503 with Retry-After; nothing is lost.
func TestPublishAPI(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	pg, q := startQueueOn(t)
	conf := testConfig()
	conf.Queue = q
	ns := "own-20"
	ownNamespace(t, ns, conf)
	recv := newReceiver(t)
	activeEndpoint(t, newEndpoint(ns, "acme", recv.URL+"/", "order.created"))
	allowed, err := testEnv.ServiceAccountToken(ctx, ns, "producer",
		rbacv1.PolicyRule{APIGroups: []string{"hookline.dev"}, Resources: []string{"webhookevents"}, Verbs: []string{"create"}})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := testEnv.ServiceAccountToken(ctx, ns, "stranger")
	if err != nil {
		t.Fatal(err)
	}
	clientset, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(publishapi.Handler{
		Auth:      &callerauth.Cached{Reviewer: callerauth.KubeAuth{Client: clientset}, TTL: 10 * time.Second},
		Publisher: QueuePublisher{Endpoints: k8s, Queue: q},
	})
	t.Cleanup(srv.Close)
	producer := publish.Client{URL: srv.URL, Token: allowed, HTTP: srv.Client(), Attempts: 1}

	batch := make([]publish.Event, 50)
	for i := range batch {
		batch[i] = publish.Event{Name: fmt.Sprintf("order-%d", i), Type: "order.created", Payload: json.RawMessage(fmt.Sprintf(`{"order":%d}`, i))}
	}
	resp, err := producer.Publish(ctx, ns, batch...)
	if err != nil || resp != (publish.Response{Events: 50, Queued: 50}) {
		t.Fatalf("published %+v (%v), want 50 events, 50 deliveries", resp, err)
	}
	queueFinished(t, q, ns, 50)
	if resp, err := producer.Publish(ctx, ns, batch...); err != nil || resp.Queued != 0 {
		t.Fatalf("publishing the same names again queued %+v (%v), want none", resp, err)
	}
	if n := len(recv.got()); n != 50 {
		t.Fatalf("the receiver got %d requests, want 50", n)
	}

	refusals := []struct {
		what   string
		client publish.Client
		events []publish.Event
		code   int
		says   string
	}{
		{"a ServiceAccount without the Role", publish.Client{URL: srv.URL, Token: stranger, HTTP: srv.Client(), Attempts: 1}, batch[:1],
			http.StatusForbidden, `may not create webhookevents.hookline.dev in namespace "own-20"`},
		{"no valid token", publish.Client{URL: srv.URL, Token: "not-a-token", HTTP: srv.Client(), Attempts: 1}, batch[:1],
			http.StatusUnauthorized, "not valid"},
		{"too deep", producer, []publish.Event{{Name: "deep", Type: "order.created", Payload: nestedPayload(100)}},
			http.StatusUnprocessableEntity, "nested more than 64 levels"},
		{"too large", producer, []publish.Event{{Name: "large", Type: "order.created", Payload: json.RawMessage(`{"a":"` + strings.Repeat("x", 300<<10) + `"}`)}},
			http.StatusUnprocessableEntity, "at most 262144 (256 KiB)"},
		{"not an object", producer, []publish.Event{{Name: "array", Type: "order.created", Payload: json.RawMessage(`[1]`)}},
			http.StatusUnprocessableEntity, "must be a JSON object"},
		{"a bad name", producer, []publish.Event{{Name: "Not_A_Name", Type: "order.created", Payload: json.RawMessage(`{}`)}},
			http.StatusUnprocessableEntity, "name"},
		{"too many", producer, make([]publish.Event, publish.MaxEvents+1), http.StatusBadRequest, "1 to 1000 events"},
	}
	for _, r := range refusals {
		_, err := r.client.Publish(ctx, ns, r.events...)
		var apiErr *publish.Error
		if !errors.As(err, &apiErr) || apiErr.Code != r.code || !strings.Contains(apiErr.Message, r.says) {
			t.Errorf("%s: %v, want %d saying %q", r.what, err, r.code, r.says)
		}
	}

	// PostgreSQL down: 503 and Retry-After; the producer's retries carry it through.
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	_, err = producer.Publish(ctx, ns, publish.Event{Name: "while-down", Type: "order.created", Payload: json.RawMessage(`{}`)})
	var apiErr *publish.Error
	if !errors.As(err, &apiErr) || apiErr.Code != http.StatusServiceUnavailable || !strings.Contains(apiErr.Message, "retry") {
		t.Fatalf("while PostgreSQL is down: %v, want 503", err)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	patient := producer
	patient.Attempts = 20
	if resp, err := patient.Publish(ctx, ns, publish.Event{Name: "while-down", Type: "order.created", Payload: json.RawMessage(`{}`)}); err != nil || resp.Queued != 1 {
		t.Fatalf("after PostgreSQL came back: %+v (%v)", resp, err)
	}
	queueFinished(t, q, ns, 51)
	var deliveries hooklinev1.WebhookDeliveryList
	if err := k8s.List(ctx, &deliveries, inNamespace(ns)); err != nil || len(deliveries.Items) != 0 {
		t.Fatalf("%d WebhookDeliveries in the API server (%v)", len(deliveries.Items), err)
	}
}
