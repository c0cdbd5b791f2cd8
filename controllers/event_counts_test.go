package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// The counts are written out whole, zeros included, even when the event reaches no
// endpoint: clients read status.deliveries.total and the DELIVERIES column shows 0.
func TestEventReachingNoEndpointHasZeroCounts(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	if err := k8s.Create(ctx, newEvent(ns, "nobody-listens", "order.created", `{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ns, "nobody-listens", 10*time.Second, "complete", completeWith(hooklinev1.ReasonNoEndpoints))

	// Read it as a generic client would, without our Go types' zero values.
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(hooklinev1.GroupVersion.WithKind("WebhookEvent"))
	if err := k8s.Get(ctx, key(ns, "nobody-listens"), u); err != nil {
		t.Fatal(err)
	}
	for _, counter := range []string{"total", "pending", "retrying", "succeeded", "failed", "exhausted"} {
		v, found, err := unstructured.NestedInt64(u.Object, "status", "deliveries", counter)
		if err != nil || !found || v != 0 {
			t.Errorf("status.deliveries.%s: found %v, value %d, err %v; want a written 0", counter, found, v, err)
		}
	}

	// What `kubectl get whev` shows: the API server renders the printer columns.
	table := printerTable(ctx, t, ns, "webhookevents")
	for i, col := range table.ColumnDefinitions {
		if col.Name == "Deliveries" {
			if cell := table.Rows[0].Cells[i]; fmt.Sprint(cell) != "0" {
				t.Fatalf("DELIVERIES column shows %v, want 0", cell)
			}
			t.Logf("kubectl get whev: %v", table.Rows[0].Cells)
			return
		}
	}
	t.Fatal("no Deliveries column")
}

// printerTable is the meta.k8s.io Table the API server renders for kubectl get.
func printerTable(ctx context.Context, t *testing.T, ns, resource string) *metav1.Table {
	t.Helper()
	hc, err := rest.HTTPClientFor(restConfig)
	if err != nil {
		t.Fatal(err)
	}
	url := strings.TrimSuffix(restConfig.Host, "/") + "/apis/hookline.dev/v1alpha1/namespaces/" + ns + "/" + resource
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var table metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&table); err != nil || len(table.Rows) == 0 {
		t.Fatalf("table: %v, %d rows", err, len(table.Rows))
	}
	return &table
}

// A manual retry of an Exhausted delivery reaches its event, after the event was
// complete and after the manager that completed it was replaced by a new one.
func TestManualRetryReachesTheEventAlsoAfterARestart(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := "own-4"
	conf := testConfig()
	stopFirst := ownNamespace(t, ns, conf)
	recv := newReceiver(t, http.StatusServiceUnavailable, http.StatusOK)
	ep := newEndpoint(ns, "down", recv.URL+"/", "order.created")
	ep.Spec.Retry = hooklinev1.RetrySpec{MaxAttempts: ptr(int32(1))}
	activeEndpoint(t, ep)
	if err := k8s.Create(ctx, newEvent(ns, "order-1", "order.created", `{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	exhausted := waitEvent(t, ns, "order-1", 10*time.Second, "SomeFailed", completeWith(hooklinev1.ReasonSomeFailed))
	if c := exhausted.Status.Deliveries; c == nil || *c != (hooklinev1.DeliveryCounts{Total: 1, Exhausted: 1}) || exhausted.Status.CompletionTime == nil {
		t.Fatalf("before the retry: %+v", exhausted.Status)
	}
	t.Logf("before the retry: %+v", *exhausted.Status.Deliveries)

	// The manager that completed the event is gone; a new one must not depend on it.
	stopFirst()
	stopSecond, err := startManager(ctx, restConfig, conf, namespaceOnly(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer stopSecond()

	d := waitDeliveryPhase(t, ns, deliveryName("order-1", "down"), hooklinev1.PhaseExhausted, 5*time.Second)
	patched(t, d, func(o *hooklinev1.WebhookDelivery) {
		o.Annotations = map[string]string{hooklinev1.AnnotationRetry: "try-1"}
	})
	after := waitEvent(t, ns, "order-1", 10*time.Second, "AllSucceeded after the retry", completeWith(hooklinev1.ReasonAllSucceeded))
	if c := after.Status.Deliveries; c == nil || *c != (hooklinev1.DeliveryCounts{Total: 1, Succeeded: 1}) {
		t.Fatalf("after the retry: %+v", after.Status)
	}
	if after.Status.CompletionTime == nil || after.Status.CompletionTime.Before(exhausted.Status.CompletionTime) {
		t.Fatalf("completionTime must follow the retry: before %v, after %v", exhausted.Status.CompletionTime, after.Status.CompletionTime)
	}
	t.Logf("after the retry: %+v", *after.Status.Deliveries)
	if got := len(recv.got()); got != 2 {
		t.Fatalf("receiver got %d requests, want 2", got)
	}
}
