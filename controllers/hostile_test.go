package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// hostileDepth is deep enough for the API server to store the object and for a
// client to read it alone, but not inside a list (the list adds two levels): before
// the manager capped what it decodes, such an object made every LIST of its kind fail,
// and a manager starting (or relisting) then never synced its WebhookEvent informer.
// (The payload is an atomic map, so managedFields no longer repeat its nesting: 9,994
// levels did break a LIST while they did, 9,997 are needed now. Objects written
// before that change keep their deep managedFields, and the guard still matters.)
const hostileDepth = 9997

func nestedPayload(depth int) []byte {
	return []byte(strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1))
}

// An event and a delivery nested far beyond the payload limit exist (created while
// admission was off) when a manager starts: it syncs, delivers everything else, and
// refuses the bad objects once, with a condition, a Warning Event and a log line.
func TestHostilyNestedObjectsStopNobody(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := "own-5"
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	recvHostile := newReceiver(t)
	recv := newReceiver(t)
	deepEvent := &hooklinev1.WebhookEvent{
		ObjectMeta: metav1.ObjectMeta{Name: "deep", Namespace: ns},
		Spec:       hooklinev1.WebhookEventSpec{Type: "order.deep", Payload: runtime.RawExtension{Raw: nestedPayload(hostileDepth)}},
	}
	deepDelivery := &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{Name: "deep-direct", Namespace: ns},
		Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "target"}, EventType: "order.deep",
			Payload: &runtime.RawExtension{Raw: nestedPayload(hostileDepth)}},
	}
	for _, o := range []client.Object{
		newEndpoint(ns, "target", recvHostile.URL+"/", "order.deep"),
		newEndpoint(ns, "acme", recv.URL+"/", "order.created"),
		deepEvent, deepDelivery,
	} {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	// Gone at the end: no other test's cluster-wide LIST meets them.
	t.Cleanup(func() {
		for _, o := range []client.Object{deepEvent, deepDelivery} {
			_ = k8s.Delete(context.Background(), o)
		}
	})
	// The objects are hostile: a plain client cannot list them.
	var plain hooklinev1.WebhookEventList
	if err := k8s.List(ctx, &plain, client.InNamespace(ns)); err == nil || !strings.Contains(err.Error(), "exceeded max depth") {
		t.Fatalf("a plain LIST should fail on the nested event, got %v", err)
	}

	stop, err := startManager(ctx, restConfig, testConfig(), namespaceOnly(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	waitReady(t, ns, "acme", hooklinev1.ReasonActive)
	for i := range 3 {
		if err := k8s.Create(ctx, newEvent(ns, fmt.Sprintf("order-%d", i), "order.created", `{"n":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		waitDeliveryPhase(t, ns, deliveryName(fmt.Sprintf("order-%d", i), "acme"), hooklinev1.PhaseSucceeded, 15*time.Second)
	}
	// The hostile objects are refused with a message that names the limit.
	ev := waitEvent(t, ns, "deep", 10*time.Second, "InvalidPayload", completeWith(hooklinev1.ReasonInvalidPayload))
	if c := meta.FindStatusCondition(ev.Status.Conditions, hooklinev1.ConditionComplete); !strings.Contains(c.Message, "at most 64 levels") {
		t.Fatalf("condition message: %q", c.Message)
	}
	d := waitDeliveryPhase(t, ns, "deep-direct", hooklinev1.PhaseFailed, 10*time.Second)
	if c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded); c.Reason != hooklinev1.ReasonBadPayload || !strings.Contains(c.Message, "at most 64 levels") {
		t.Fatalf("delivery condition: %+v", c)
	}
	if n := len(recvHostile.got()); n != 0 {
		t.Fatalf("the hostile payload reached a receiver %d times", n)
	}
	eventually(t, 10*time.Second, "Warning Events naming both objects", func(ctx context.Context) (bool, string, error) {
		var events eventsv1.EventList
		if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		seen := map[string]bool{}
		for _, e := range events.Items {
			if e.Regarding.Kind == "WebhookEndpoint" {
				continue
			}
			if e.Type == corev1.EventTypeWarning {
				seen[e.Regarding.Name+"/"+e.Reason] = true
			}
		}
		return seen["deep/"+hooklinev1.ReasonInvalidPayload] && seen["deep-direct/"+string(hooklinev1.PhaseFailed)], fmt.Sprint(seen), nil
	})
	// Refused once each: one Warning Event, not one per reconcile.
	waitEventsRecorded(t, ns, "deep", map[string]int{hooklinev1.ReasonInvalidPayload: 1})
	waitEventsRecorded(t, ns, "deep-direct", map[string]int{string(hooklinev1.PhaseFailed): 1})
}
