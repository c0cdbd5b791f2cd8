package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// What can be judged without the cluster is refused by the API server itself, with the
// message a user sees from kubectl apply.
func TestAdmissionRejectsBadEndpoints(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	hmacTS, ed := hooklinev1.SchemeHMACTimestamp, hooklinev1.AlgorithmEd25519
	str := func(s string) *string { return &s }
	cases := []struct {
		name   string
		mutate func(*hooklinev1.WebhookEndpoint)
		want   string
	}{
		{"wildcard fragment", func(e *hooklinev1.WebhookEndpoint) { e.Spec.Events = []string{"order.*"} },
			"wildcard fragments such as order.* are not supported"},
		{"numeric code", func(e *hooklinev1.WebhookEndpoint) { e.Spec.Events = []string{"1234"} },
			"numeric codes"},
		{"star mixed with names", func(e *hooklinev1.WebhookEndpoint) { e.Spec.Events = []string{"*", "order.created"} },
			`"*" subscribes to every type and must be the only entry`},
		{"empty events", func(e *hooklinev1.WebhookEndpoint) { e.Spec.Events = []string{} },
			"spec.events: Invalid value"},
		{"non-http url", func(e *hooklinev1.WebhookEndpoint) { e.Spec.URL = "ftp://example.com/hooks" },
			"url must be an absolute http:// or https:// URL"},
		{"relative url", func(e *hooklinev1.WebhookEndpoint) { e.Spec.URL = "/hooks" },
			"url must be an absolute http:// or https:// URL"},
		{"fragment", func(e *hooklinev1.WebhookEndpoint) { e.Spec.URL = "https://example.com/#x" },
			"url must not contain a fragment"},
		{"long description", func(e *hooklinev1.WebhookEndpoint) { e.Spec.Description = strings.Repeat("d", 513) },
			"spec.description: Too long: may not be more than 512"},
		{"HMACTimestamp with Ed25519", func(e *hooklinev1.WebhookEndpoint) {
			e.Spec.Signing = hooklinev1.SigningSpec{Scheme: hmacTS, Algorithm: ed}
		}, "HMACTimestamp signs with HMAC-SHA256 only"},
		{"HTTPMessageSignatures with HMAC", func(e *hooklinev1.WebhookEndpoint) {
			e.Spec.Signing = hooklinev1.SigningSpec{Scheme: hooklinev1.SchemeHTTPMessageSignatures, Algorithm: hooklinev1.AlgorithmHMACSHA256}
		}, "HTTPMessageSignatures signs with Ed25519 only"},
		{"reserved header", func(e *hooklinev1.WebhookEndpoint) {
			e.Spec.Headers = []hooklinev1.EndpointHeader{{Name: "Webhook-Signature", Value: str("x")}}
		}, "this name is set by hookline itself"},
		{"header repeats the HMACTimestamp header", func(e *hooklinev1.WebhookEndpoint) {
			e.Spec.Signing = hooklinev1.SigningSpec{Scheme: hmacTS, HeaderName: "Acme-Signature"}
			e.Spec.Headers = []hooklinev1.EndpointHeader{{Name: "acme-signature", Value: str("x")}}
		}, "may not repeat the signature header"},
		{"header with value and valueFrom", func(e *hooklinev1.WebhookEndpoint) {
			e.Spec.Headers = []hooklinev1.EndpointHeader{{Name: "X-A", Value: str("x"),
				ValueFrom: &hooklinev1.HeaderValueSource{SecretKeyRef: hooklinev1.SecretKeyReference{Name: "s", Key: "k"}}}}
		}, "set exactly one of value and valueFrom"},
		{"timeout too long", func(e *hooklinev1.WebhookEndpoint) { sixtyOne := int32(61); e.Spec.TimeoutSeconds = &sixtyOne },
			"spec.timeoutSeconds: Invalid value: 61"},
		{"grace period too long", func(e *hooklinev1.WebhookEndpoint) {
			e.Spec.Signing.RotationGracePeriod = &metav1.Duration{Duration: 200 * time.Hour}
		}, "rotationGracePeriod must be between 0s and 168h"},
		{"headerName without HMACTimestamp", func(e *hooklinev1.WebhookEndpoint) { e.Spec.Signing.HeaderName = "X-Sig" },
			"headerName applies to the HMACTimestamp scheme only"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ep := newEndpoint(ns, "bad-"+string(rune('a'+i)), "https://example.com/hooks", "order.created")
			c.mutate(ep)
			err := k8s.Create(ctx, ep)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v\nwant it to contain %q", err, c.want)
			}
		})
	}
	// And the good ones pass.
	good := newEndpoint(ns, "good", "https://Example.com:443/hooks", "order.created", "order.succeeded", "a_b.c_1")
	good.Spec.Signing = hooklinev1.SigningSpec{Scheme: hooklinev1.SchemeHTTPMessageSignatures}
	if err := k8s.Create(ctx, good); err != nil {
		t.Fatalf("a valid endpoint is refused: %v", err)
	}
	star := newEndpoint(ns, "star", "https://example.com/all", "*")
	if err := k8s.Create(ctx, star); err != nil {
		t.Fatalf(`["*"] is refused: %v`, err)
	}
	// Defaults from the CRD are visible to GitOps tools.
	if err := k8s.Get(ctx, key(ns, "star"), star); err != nil {
		t.Fatal(err)
	}
	if star.Spec.Signing.Scheme != hooklinev1.SchemeStandardWebhooks || *star.Spec.TimeoutSeconds != 15 ||
		len(star.Spec.Retry.Schedule) != 7 || star.Spec.Signing.RotationGracePeriod.Duration.String() != "24h0m0s" {
		t.Fatalf("defaults: %+v", star.Spec)
	}
}

func TestAdmissionRejectsBadEventsAndDeliveries(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	if err := k8s.Create(ctx, newEvent(ns, "e", "Order.Created", `{}`)); err == nil || !strings.Contains(err.Error(), "type must be lower-case and dotted") {
		t.Errorf("bad event type: %v", err)
	}
	ev := newEvent(ns, "ok", "order.created", `{"a":1}`)
	if err := k8s.Create(ctx, ev); err != nil {
		t.Fatal(err)
	}
	evBefore := ev.DeepCopy()
	ev.Spec.Type = "order.updated"
	if err := k8s.Patch(ctx, ev, client.MergeFrom(evBefore)); err == nil || !strings.Contains(err.Error(), "spec is immutable") {
		t.Errorf("changing an event's spec: %v", err)
	}

	both := &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{Name: "both", Namespace: ns},
		Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "x"}, EventType: "a.b",
			Payload: &runtime.RawExtension{Raw: []byte(`{}`)}, EventRef: &hooklinev1.LocalRef{Name: "ok"}},
	}
	if err := k8s.Create(ctx, both); err == nil || !strings.Contains(err.Error(), "set exactly one of payload and eventRef") {
		t.Errorf("payload and eventRef: %v", err)
	}
	neither := both.DeepCopy()
	neither.Spec.Payload, neither.Spec.EventRef = nil, nil
	if err := k8s.Create(ctx, neither); err == nil || !strings.Contains(err.Error(), "set exactly one of payload and eventRef") {
		t.Errorf("neither payload nor eventRef: %v", err)
	}
	d := both.DeepCopy()
	d.Spec.EventRef = nil
	if err := k8s.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	orig := d.DeepCopy()
	d.Spec.EventType = "a.c"
	if err := k8s.Patch(ctx, d, client.MergeFrom(orig)); err == nil || !strings.Contains(err.Error(), "spec is immutable") {
		t.Errorf("changing a delivery's spec: %v", err)
	}
}

// Selectable fields let users filter deliveries server-side.
func TestDeliverySelectableFields(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	for _, name := range []string{"to-a", "to-b"} {
		d := &hooklinev1.WebhookDelivery{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: strings.TrimPrefix(name, "to-")}, EventType: "a.b",
				Payload: &runtime.RawExtension{Raw: []byte(`{}`)}},
		}
		if err := k8s.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	var list hooklinev1.WebhookDeliveryList
	sel, err := fieldsSelector("spec.endpointRef.name=a")
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.List(ctx, &list, sel, inNamespace(ns)); err != nil {
		t.Fatalf("field selector on spec.endpointRef.name: %v", err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "to-a" {
		t.Fatalf("selected %d deliveries", len(list.Items))
	}
	// Both point at endpoints that do not exist, so both end Failed.
	waitDeliveryPhase(t, ns, "to-a", hooklinev1.PhaseFailed, 10*time.Second)
	waitDeliveryPhase(t, ns, "to-b", hooklinev1.PhaseFailed, 10*time.Second)
	sel, _ = fieldsSelector("status.phase=Failed")
	if err := k8s.List(ctx, &list, sel, inNamespace(ns)); err != nil {
		t.Fatalf("field selector on status.phase: %v", err)
	}
	if len(list.Items) != 2 {
		t.Fatalf("status.phase=Failed selected %d", len(list.Items))
	}
}
