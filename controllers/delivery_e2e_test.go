package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

func newEndpoint(ns, name, url string, events ...string) *hooklinev1.WebhookEndpoint {
	return &hooklinev1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       hooklinev1.WebhookEndpointSpec{URL: url, Events: events},
	}
}

// receivers are the endpoints an event fans out to, read from the API server.
func receivers(ctx context.Context, t *testing.T, ev *hooklinev1.WebhookEvent) []*hooklinev1.WebhookEndpoint {
	t.Helper()
	eps, err := (&EventReconciler{Client: k8s}).receivers(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	return eps
}

func newEvent(ns, name, typ, payload string) *hooklinev1.WebhookEvent {
	return &hooklinev1.WebhookEvent{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       hooklinev1.WebhookEventSpec{Type: typ, Payload: runtime.RawExtension{Raw: []byte(payload)}},
	}
}

// waitReady waits for the endpoint's Ready condition to have this reason.
func waitReady(t *testing.T, ns, name, reason string) *hooklinev1.WebhookEndpoint {
	t.Helper()
	var ep hooklinev1.WebhookEndpoint
	eventually(t, 20*time.Second, "endpoint "+name+" Ready reason "+reason, func(ctx context.Context) (bool, string, error) {
		if err := k8s.Get(ctx, key(ns, name), &ep); err != nil {
			return false, "", err
		}
		c := meta.FindStatusCondition(ep.Status.Conditions, hooklinev1.ConditionReady)
		if c == nil {
			return false, "no Ready condition", nil
		}
		return c.Reason == reason && c.ObservedGeneration == ep.Generation, fmt.Sprintf("%s/%s: %s", c.Status, c.Reason, c.Message), nil
	})
	return &ep
}

// waitEvent waits until done holds for the event.
func waitEvent(t *testing.T, ns, name string, timeout time.Duration, what string, done func(*hooklinev1.WebhookEvent) bool) *hooklinev1.WebhookEvent {
	t.Helper()
	var e hooklinev1.WebhookEvent
	eventually(t, timeout, "event "+name+": "+what, func(ctx context.Context) (bool, string, error) {
		if err := k8s.Get(ctx, key(ns, name), &e); err != nil {
			return false, "", err
		}
		return done(&e), fmt.Sprintf("%+v", e.Status), nil
	})
	return &e
}

func completeWith(reason string) func(*hooklinev1.WebhookEvent) bool {
	return func(e *hooklinev1.WebhookEvent) bool {
		c := meta.FindStatusCondition(e.Status.Conditions, hooklinev1.ConditionComplete)
		return c != nil && c.Reason == reason
	}
}

// waitDeliveryPhase waits for a delivery to reach a phase.
func waitDeliveryPhase(t *testing.T, ns, name string, phase hooklinev1.DeliveryPhase, timeout time.Duration) *hooklinev1.WebhookDelivery {
	t.Helper()
	var d hooklinev1.WebhookDelivery
	eventually(t, timeout, "delivery "+name+" "+string(phase), func(ctx context.Context) (bool, string, error) {
		if err := k8s.Get(ctx, key(ns, name), &d); err != nil {
			return false, err.Error(), client.IgnoreNotFound(err)
		}
		return d.Status.Phase == phase, fmt.Sprintf("phase %q attempts %d conditions %v", d.Status.Phase, d.Status.Attempts, d.Status.Conditions), nil
	})
	return &d
}

func TestEndpointEventDeliveryEndToEnd(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t, http.StatusNoContent)

	ep := newEndpoint(ns, "acme-orders", recv.URL+"/hooks", "order.created", "order.succeeded")
	if err := k8s.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	ep = waitReady(t, ns, "acme-orders", hooklinev1.ReasonActive)

	// The signing Secret: whsec_ + base64 of 32 bytes, owned by the endpoint.
	var secret corev1.Secret
	if err := k8s.Get(ctx, key(ns, "acme-orders-signing-secret"), &secret); err != nil {
		t.Fatal(err)
	}
	signingSecret := string(secret.Data[hooklinev1.SecretKeySigningSecret])
	if !strings.HasPrefix(signingSecret, "whsec_") || len(signingSecret) != len("whsec_")+44 {
		t.Fatalf("signing secret has the wrong shape (length %d)", len(signingSecret))
	}
	if !metav1.IsControlledBy(&secret, ep) {
		t.Fatalf("Secret owner references: %v", secret.OwnerReferences)
	}
	if ep.Status.SecretName != "acme-orders-signing-secret" || ep.Status.SecretHint != signingSecret[:8]+"..." || ep.Status.ObservedGeneration != ep.Generation {
		t.Fatalf("endpoint status: %+v", ep.Status)
	}

	ev := newEvent(ns, "order-1234-created", "order.created", `{"order":1234,"amount":990}`)
	if err := k8s.Create(ctx, ev); err != nil {
		t.Fatal(err)
	}
	got := *waitEvent(t, ns, ev.Name, 20*time.Second, "complete", completeWith(hooklinev1.ReasonAllSucceeded))
	if got.Status.Deliveries == nil || *got.Status.Deliveries != (hooklinev1.DeliveryCounts{Total: 1, Succeeded: 1}) || got.Status.CompletionTime == nil {
		t.Fatalf("event status: %+v", got.Status)
	}

	d := waitDeliveryPhase(t, ns, deliveryName(ev.Name, ep.Name), hooklinev1.PhaseSucceeded, 10*time.Second)
	if he, hd := argoHealth(t, &got), argoHealth(t, d); he != "Healthy" || hd != "Healthy" {
		t.Fatalf("Argo CD health of the event %s, of the delivery %s; want Healthy", he, hd)
	}
	if d.Spec.Payload != nil || d.Spec.EventRef == nil || d.Spec.EventRef.Name != ev.Name {
		t.Fatalf("a fanned-out delivery refers to its event instead of copying the payload: %+v", d.Spec)
	}
	if d.Status.Attempts != 1 || d.Status.ResponseStatusCode != 204 || d.Status.MessageID != got.Status.MessageID ||
		d.Status.LastAttemptTime == nil || d.Status.CompletionTime == nil || len(d.Status.History) != 1 || !strings.HasPrefix(d.Status.Signature, "v1,") {
		t.Fatalf("delivery status: %+v", d.Status)
	}

	reqs := recv.got()
	if len(reqs) != 1 {
		t.Fatalf("receiver got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	// The Standard Webhooks reference library, with the secret from the cluster.
	wh, err := standardwebhooks.NewWebhook(signingSecret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(r.body, r.header); err != nil {
		t.Fatalf("reference verifier rejects the request: %v", err)
	}
	if r.header.Get("webhook-id") != got.Status.MessageID || r.header.Get("Content-Type") != "application/json" ||
		r.header.Get("User-Agent") != "hookline/test" || r.target != "/hooks" {
		t.Fatalf("request headers: %v target %s", r.header, r.target)
	}
	var body struct {
		Type      string          `json:"type"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatal(err)
	}
	if body.Type != "order.created" || string(body.Data) != `{"amount":990,"order":1234}` || body.Timestamp.IsZero() {
		t.Fatalf("body: %s", r.body)
	}

	// The secret never shows up in what the manager logged or wrote to status.
	statusJSON, _ := json.Marshal([]any{ep.Status, got.Status, d.Status})
	for where, text := range map[string]string{"manager log": managerLog.String(), "status": string(statusJSON)} {
		if strings.Contains(text, signingSecret[6:]) {
			t.Errorf("the signing secret appears in the %s", where)
		}
	}
}

func TestFanOutOncePerSubscribedReadyEndpoint(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)

	subscribed := newEndpoint(ns, "subscribed", recv.URL+"/a", "order.created")
	everything := newEndpoint(ns, "everything", recv.URL+"/b", "*")
	other := newEndpoint(ns, "other-type", recv.URL+"/c", "invoice.paid")
	paused := newEndpoint(ns, "paused", recv.URL+"/d", "order.created")
	paused.Spec.Paused = true
	unlabelled := newEndpoint(ns, "no-label", recv.URL+"/e", "order.created")
	for _, ep := range []*hooklinev1.WebhookEndpoint{subscribed, everything, other, paused, unlabelled} {
		if ep.Name != "no-label" {
			ep.Labels = map[string]string{"customer": "acme"}
		}
		if err := k8s.Create(ctx, ep); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"subscribed", "everything", "other-type", "no-label"} {
		waitReady(t, ns, name, hooklinev1.ReasonActive)
	}
	waitReady(t, ns, "paused", hooklinev1.ReasonPaused)

	ev := newEvent(ns, "order-1", "order.created", `{"n":1}`)
	ev.Spec.EndpointSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"customer": "acme"}}
	if err := k8s.Create(ctx, ev); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ns, ev.Name, 20*time.Second, "two deliveries succeed", func(e *hooklinev1.WebhookEvent) bool {
		return e.Status.Deliveries != nil && e.Status.Deliveries.Succeeded == 2
	})
	var list hooklinev1.WebhookDeliveryList
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, d := range list.Items {
		names[d.Spec.EndpointRef.Name] = true
	}
	if len(list.Items) != 2 || !names["subscribed"] || !names["everything"] {
		t.Fatalf("deliveries went to %v, want subscribed and everything", names)
	}

	// Running the fan-out again creates nothing new.
	var fresh hooklinev1.WebhookEvent
	if err := k8s.Get(ctx, key(ns, ev.Name), &fresh); err != nil {
		t.Fatal(err)
	}
	again, err := (&EventReconciler{Client: k8s}).fanOut(ctx, &fresh, receivers(ctx, t, &fresh))
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if again != 2 || len(list.Items) != 2 {
		t.Fatalf("second fan-out: matched %d, deliveries now %d; want 2 and 2", again, len(list.Items))
	}
	if n := len(recv.got()); n != 2 {
		t.Fatalf("receiver got %d requests, want 2", n)
	}

	// An event no endpoint matches completes with NoEndpoints.
	lonely := newEvent(ns, "nobody", "shipment.lost", `{}`)
	lonely.Spec.EndpointSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"customer": "nobody"}}
	if err := k8s.Create(ctx, lonely); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ns, lonely.Name, 10*time.Second, "NoEndpoints", completeWith(hooklinev1.ReasonNoEndpoints))
}

func TestFailingReceiverIsRetriedOnScheduleNotHotLooped(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t, http.StatusInternalServerError, http.StatusOK)
	ep := newEndpoint(ns, "flaky", recv.URL+"/", "order.created")
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 2 * time.Second}}}
	if err := k8s.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ns, "flaky", hooklinev1.ReasonActive)
	if err := k8s.Create(ctx, newEvent(ns, "e1", "order.created", `{}`)); err != nil {
		t.Fatal(err)
	}
	name := deliveryName("e1", "flaky")
	d := waitDeliveryPhase(t, ns, name, hooklinev1.PhaseRetrying, 10*time.Second)
	if d.Status.Attempts != 1 || d.Status.ResponseStatusCode != 500 || d.Status.NextAttemptTime == nil {
		t.Fatalf("after the first attempt: %+v", d.Status)
	}
	wait := d.Status.NextAttemptTime.Sub(d.Status.LastAttemptTime.Time)
	if wait < 1600*time.Millisecond || wait > 2400*time.Millisecond {
		t.Fatalf("next attempt %v after the last, want 2s ±20%%", wait)
	}
	d = waitDeliveryPhase(t, ns, name, hooklinev1.PhaseSucceeded, 10*time.Second)
	reqs := recv.got()
	if d.Status.Attempts != 2 || len(reqs) != 2 || len(d.Status.History) != 2 {
		t.Fatalf("attempts %d, requests %d, history %d; want 2 each", d.Status.Attempts, len(reqs), len(d.Status.History))
	}
	if reqs[0].header.Get("webhook-id") != reqs[1].header.Get("webhook-id") || string(reqs[0].body) != string(reqs[1].body) {
		t.Fatal("a retry must send the same webhook-id and the same body bytes")
	}
	if d.Status.History[0].StatusCode != 500 || d.Status.History[0].Response != "received" {
		t.Fatalf("history: %+v", d.Status.History)
	}
	var e hooklinev1.WebhookEndpoint
	eventually(t, 5*time.Second, "endpoint health", func(ctx context.Context) (bool, string, error) {
		if err := k8s.Get(ctx, key(ns, "flaky"), &e); err != nil {
			return false, "", err
		}
		return e.Status.LastSuccessTime != nil && e.Status.LastFailureTime != nil && e.Status.ConsecutiveFailures == 0,
			fmt.Sprintf("%+v", e.Status), nil
	})
}

func TestExhaustedThenManualRetry(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t, http.StatusServiceUnavailable, http.StatusOK)
	ep := newEndpoint(ns, "down", recv.URL+"/", "order.created")
	one := int32(1)
	ep.Spec.Retry = hooklinev1.RetrySpec{MaxAttempts: &one}
	if err := k8s.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ns, "down", hooklinev1.ReasonActive)
	direct := &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{Name: "direct", Namespace: ns},
		Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "down"}, EventType: "order.created",
			Payload: &runtime.RawExtension{Raw: []byte(`{"direct":true}`)}},
	}
	if err := k8s.Create(ctx, direct); err != nil {
		t.Fatal(err)
	}
	d := waitDeliveryPhase(t, ns, "direct", hooklinev1.PhaseExhausted, 10*time.Second)
	if d.Status.Attempts != 1 || d.Status.CompletionTime == nil || argoHealth(t, d) != "Degraded" {
		t.Fatalf("exhausted: %+v", d.Status)
	}
	eventually(t, 5*time.Second, "an Exhausted Event on the delivery", func(ctx context.Context) (bool, string, error) {
		var events eventsv1.EventList
		if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		for _, e := range events.Items {
			if e.Regarding.Name == "direct" && e.Reason == string(hooklinev1.PhaseExhausted) && e.Type == corev1.EventTypeWarning {
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%d events", len(events.Items)), nil
	})
	d = patched(t, d, func(o *hooklinev1.WebhookDelivery) {
		o.Annotations = map[string]string{hooklinev1.AnnotationRetry: "try-1"}
	})
	d = waitDeliveryPhase(t, ns, "direct", hooklinev1.PhaseSucceeded, 10*time.Second)
	if d.Status.LastHandledRetry != "try-1" || len(recv.got()) != 2 {
		t.Fatalf("after retry: %+v, %d requests", d.Status, len(recv.got()))
	}
}

func TestGoneDisablesEndpointAndEnableAnnotationRestoresIt(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t, http.StatusGone)
	activeEndpoint(t, newEndpoint(ns, "gone", recv.URL+"/", "*"))
	if err := k8s.Create(ctx, newEvent(ns, "e1", "order.created", `{}`)); err != nil {
		t.Fatal(err)
	}
	d := waitDeliveryPhase(t, ns, deliveryName("e1", "gone"), hooklinev1.PhaseFailed, 10*time.Second)
	if c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded); c == nil || c.Reason != hooklinev1.ReasonEndpointGone {
		t.Fatalf("delivery conditions: %v", d.Status.Conditions)
	}
	ep := waitReady(t, ns, "gone", hooklinev1.ReasonDisabled)
	if ep.Status.DisabledReason != hooklinev1.DisabledEndpointGone {
		t.Fatalf("disabledReason = %q", ep.Status.DisabledReason)
	}
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) {
		o.Annotations = map[string]string{hooklinev1.AnnotationEnable: "now"}
	})
	ep = waitReady(t, ns, "gone", hooklinev1.ReasonActive)
	if ep.Status.LastHandledEnable != "now" || ep.Status.DisabledReason != "" {
		t.Fatalf("after enable: %+v", ep.Status)
	}
	// The story is told on the endpoint, in Events a user sees: disabled once, enabled once.
	waitEventsRecorded(t, ns, "gone", map[string]int{hooklinev1.EventDisabled: 1, hooklinev1.EventEnabled: 1})
}

// waitEventsRecorded waits until the Kubernetes Events about an object count want per
// reason (a series counts its repeats), and fails if one counts more.
func waitEventsRecorded(t *testing.T, ns, name string, want map[string]int) {
	t.Helper()
	eventually(t, 10*time.Second, "Events about "+name, func(ctx context.Context) (bool, string, error) {
		got, err := eventsAbout(ctx, ns, name)
		if err != nil {
			return false, "", err
		}
		for reason, n := range want {
			if got[reason] > n {
				t.Fatalf("%d %s Events about %s, want %d (all: %v)", got[reason], reason, name, n, got)
			}
			if got[reason] < n {
				return false, fmt.Sprint(got), nil
			}
		}
		return true, "", nil
	})
}

// eventsAbout counts the Kubernetes Events about an object by reason.
func eventsAbout(ctx context.Context, ns, name string) (map[string]int, error) {
	var events eventsv1.EventList
	if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	got := map[string]int{}
	for _, e := range events.Items {
		if e.Regarding.Name != name {
			continue
		}
		n := 1
		if e.Series != nil {
			n = int(e.Series.Count)
		}
		got[e.Reason] += n
	}
	return got, nil
}

func TestPausedEndpointDeliveriesWaitThenResume(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)
	ep := activeEndpoint(t, newEndpoint(ns, "p", recv.URL+"/", "*"))
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) { o.Spec.Paused = true })
	waitReady(t, ns, "p", hooklinev1.ReasonPaused)
	direct := &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{Name: "waits", Namespace: ns},
		Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "p"}, EventType: "order.created",
			Payload: &runtime.RawExtension{Raw: []byte(`{}`)}},
	}
	if err := k8s.Create(ctx, direct); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "delivery waits", func(ctx context.Context) (bool, string, error) {
		var d hooklinev1.WebhookDelivery
		if err := k8s.Get(ctx, key(ns, "waits"), &d); err != nil {
			return false, "", err
		}
		c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded)
		return c != nil && c.Reason == hooklinev1.ReasonWaiting && d.Status.Attempts == 0, fmt.Sprintf("%+v", d.Status), nil
	})
	if n := len(recv.got()); n != 0 {
		t.Fatalf("a paused endpoint received %d requests", n)
	}
	ep = getEndpoint(ctx, t, ns, "p")
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) { o.Spec.Paused = false })
	waitDeliveryPhase(t, ns, "waits", hooklinev1.PhaseSucceeded, 10*time.Second)
}

func TestDeletedEndpointFailsItsDeliveries(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	direct := &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{Name: "orphan", Namespace: ns},
		Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "missing"}, EventType: "order.created",
			Payload: &runtime.RawExtension{Raw: []byte(`{}`)}},
	}
	if err := k8s.Create(ctx, direct); err != nil {
		t.Fatal(err)
	}
	d := waitDeliveryPhase(t, ns, "orphan", hooklinev1.PhaseFailed, 10*time.Second)
	if c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded); c == nil || c.Reason != hooklinev1.ReasonEndpointDeleted {
		t.Fatalf("conditions: %v", d.Status.Conditions)
	}
}
