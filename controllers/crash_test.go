package controllers

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// With hundreds of deliveries in flight the manager is stopped and a new one started:
// every message arrives at least once, and a message that arrives twice carries the
// same webhook-id and the same body.
func TestManagerRestartLosesNothing(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	const events = 300
	ctx := context.Background()
	ns := "own-3"
	var mu sync.Mutex
	received := map[string][]string{} // webhook-id -> bodies
	total := 0
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond)
		buf := make([]byte, 4096)
		n, _ := r.Body.Read(buf)
		mu.Lock()
		received[r.Header.Get("webhook-id")] = append(received[r.Header.Get("webhook-id")], string(buf[:n]))
		total++
		mu.Unlock()
	}))
	defer recv.Close()
	count := func() int { mu.Lock(); defer mu.Unlock(); return total }

	conf := testConfig()
	stopFirst := ownNamespace(t, ns, conf)
	ep := newEndpoint(ns, "ep", recv.URL+"/", "*")
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 500 * time.Millisecond}}}
	createAll(ctx, t, ep)
	waitReady(t, ns, "ep", hooklinev1.ReasonActive)
	for i := 0; i < events; i++ {
		createAll(ctx, t, newEvent(ns, fmt.Sprintf("e-%d", i), "order.created", fmt.Sprintf(`{"i":%d}`, i)))
	}
	eventually(t, 60*time.Second, "a third received", func(context.Context) (bool, string, error) {
		return count() >= events/3, fmt.Sprint(count()), nil
	})
	stopFirst() // in the middle of the work: requests in flight are cut off
	atStop := count()

	stopSecond, err := startManager(ctx, restConfig, conf, namespaceOnly(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer stopSecond()
	eventually(t, 120*time.Second, "every delivery succeeded", func(ctx context.Context) (bool, string, error) {
		var list hooklinev1.WebhookDeliveryList
		if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		done := 0
		for _, d := range list.Items {
			if d.Status.Phase == hooklinev1.PhaseSucceeded {
				done++
			}
		}
		return done == events, fmt.Sprintf("%d of %d deliveries succeeded", done, len(list.Items)), nil
	})

	var evs hooklinev1.WebhookEventList
	eventually(t, 30*time.Second, "every event complete", func(ctx context.Context) (bool, string, error) {
		if err := k8s.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		complete := 0
		for _, e := range evs.Items {
			if e.Status.MessageID != "" && e.Status.CompletionTime != nil {
				complete++
			}
		}
		return complete == events, fmt.Sprintf("%d of %d events complete", complete, len(evs.Items)), nil
	})
	mu.Lock()
	defer mu.Unlock()
	duplicates := 0
	for _, e := range evs.Items {
		bodies := received[e.Status.MessageID]
		if len(bodies) == 0 {
			t.Errorf("message %s of event %s was never received", e.Status.MessageID, e.Name)
			continue
		}
		for _, b := range bodies[1:] {
			duplicates++
			if b != bodies[0] {
				t.Errorf("a redelivery of %s carries another body", e.Status.MessageID)
			}
		}
	}
	if len(received) != events {
		t.Errorf("%d distinct webhook-ids received, want %d", len(received), events)
	}
	t.Logf("restart: %d events, %d requests received before the stop, %d in all, %d distinct messages, %d duplicates",
		events, atStop, total, len(received), duplicates)
}
