package controllers

import (
	"context"
	"crypto/ed25519"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v84/webhook"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/engine"
	"github.com/hookline/hookline/internal/signing"
	"github.com/hookline/hookline/internal/testenv"
)

func TestDuplicateURLIsHandedOnWhenTheOwnerGoes(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	first := newEndpoint(ns, "first", "https://hooks.example.com/orders", "*")
	if err := k8s.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ns, "first", hooklinev1.ReasonActive)
	// The same URL, spelled differently.
	if err := k8s.Create(ctx, newEndpoint(ns, "second", "HTTPS://Hooks.Example.com:443/orders", "*")); err != nil {
		t.Fatal(err)
	}
	second := waitReady(t, ns, "second", hooklinev1.ReasonDuplicateURL)
	// The URL is a selectable field: kubectl get whe --field-selector spec.url=…
	var byURL hooklinev1.WebhookEndpointList
	sel, _ := fieldsSelector("spec.url=https://hooks.example.com/orders")
	if err := k8s.List(ctx, &byURL, sel, inNamespace(ns)); err != nil || len(byURL.Items) != 1 || byURL.Items[0].Name != "first" {
		t.Fatalf("field selector spec.url: %v, %d items", err, len(byURL.Items))
	}
	ready := meta.FindStatusCondition(second.Status.Conditions, hooklinev1.ConditionReady)
	stalled := meta.FindStatusCondition(second.Status.Conditions, hooklinev1.ConditionStalled)
	if !strings.Contains(ready.Message, "WebhookEndpoint first") || stalled == nil || stalled.Status != metav1.ConditionTrue {
		t.Fatalf("conditions of the duplicate: %+v", second.Status.Conditions)
	}
	// A different namespace is a different tenant: no conflict there.
	other := newNamespace(t)
	if err := k8s.Create(ctx, newEndpoint(other, "second", "https://hooks.example.com/orders", "*")); err != nil {
		t.Fatal(err)
	}
	waitReady(t, other, "second", hooklinev1.ReasonActive)

	// The owner moving to another URL hands this one on.
	first = getEndpoint(ctx, t, ns, "first")
	first = patched(t, first, func(o *hooklinev1.WebhookEndpoint) { o.Spec.URL = "https://hooks.example.com/v2/orders" })
	second = waitReady(t, ns, "second", hooklinev1.ReasonActive)
	if meta.FindStatusCondition(second.Status.Conditions, hooklinev1.ConditionStalled) != nil {
		t.Fatal("Stalled stays after the URL was handed on")
	}
	// And deleting an owner too.
	third := newEndpoint(ns, "third", "https://hooks.example.com/orders", "*")
	createAll(ctx, t, third)
	waitReady(t, ns, "third", hooklinev1.ReasonDuplicateURL)
	if err := k8s.Delete(ctx, second); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ns, "third", hooklinev1.ReasonActive)
}

func TestInsecureHTTPIsRefusedUnlessAllowed(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	r := &EndpointReconciler{Client: k8s, Secrets: engine.SecretReader{Cached: k8s}, AllowInsecureHTTP: false}
	ep := newEndpoint(ns, "plain", "http://example.com/hooks", "*")
	if err := k8s.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	got, err := r.evaluate(ctx, ep, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got.reason != hooklinev1.ReasonInvalidSpec || !strings.Contains(got.message, "--allow-insecure-http") {
		t.Fatalf("http:// without the flag: %+v", got)
	}
}

func TestSecretProblemsAreReportedWithoutTheValue(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	// A user's Secret (not owned by the endpoint) with a malformed value.
	bad := "whsec_tooshort"
	if err := k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "users", Namespace: ns},
		Data: map[string][]byte{hooklinev1.SecretKeySigningSecret: []byte(bad)}}); err != nil {
		t.Fatal(err)
	}
	ep := newEndpoint(ns, "byo", "https://example.com/byo", "*")
	ep.Spec.Signing.SecretName = "users"
	if err := k8s.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	ep = waitReady(t, ns, "byo", hooklinev1.ReasonSecretInvalid)
	msg := meta.FindStatusCondition(ep.Status.Conditions, hooklinev1.ConditionReady).Message
	if !strings.Contains(msg, "Secret users") || !strings.Contains(msg, "at least 24") || strings.Contains(msg, "tooshort") {
		t.Fatalf("message: %q", msg)
	}
	// Fixing the user's Secret makes the endpoint Ready; the manager does not take it over.
	good, _ := signing.NewHMACSecret()
	setSigningValue(ctx, t, ns, "users", good)
	var s corev1.Secret
	// A Secret the manager does not own and does not cache is not watched; a spec
	// change (or the next resync) brings the endpoint back.
	ep = getEndpoint(ctx, t, ns, "byo")
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) { o.Spec.Description = "fixed" })
	ep = waitReady(t, ns, "byo", hooklinev1.ReasonActive)
	if ep.Status.SecretHint != good[:8]+"..." {
		t.Fatalf("hint %q", ep.Status.SecretHint)
	}
	if err := k8s.Get(ctx, key(ns, "users"), &s); err != nil || len(s.OwnerReferences) != 0 {
		t.Fatalf("the user's Secret was taken over: %v %v", err, s.OwnerReferences)
	}

	// A header whose Secret is missing.
	hdr := newEndpoint(ns, "hdr", "https://example.com/hdr", "*")
	hdr.Spec.Headers = []hooklinev1.EndpointHeader{{Name: "Authorization",
		ValueFrom: &hooklinev1.HeaderValueSource{SecretKeyRef: hooklinev1.SecretKeyReference{Name: "acme-auth", Key: "token"}}}}
	if err := k8s.Create(ctx, hdr); err != nil {
		t.Fatal(err)
	}
	hdr = waitReady(t, ns, "hdr", hooklinev1.ReasonSecretInvalid)
	if msg := meta.FindStatusCondition(hdr.Status.Conditions, hooklinev1.ConditionReady).Message; !strings.Contains(msg, "Secret acme-auth not found") {
		t.Fatalf("message: %q", msg)
	}
	// When it appears, the endpoint notices by itself.
	if err := k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "acme-auth", Namespace: ns},
		Data: map[string][]byte{"token": []byte("Bearer abc")}}); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ns, "hdr", hooklinev1.ReasonActive)
}

func TestSchemesOnTheWire(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recvStripe := newReceiver(t)
	recvRFC := newReceiver(t)
	stripeStyle := newEndpoint(ns, "stripe-style", recvStripe.URL+"/s", "*")
	stripeStyle.Spec.Signing = hooklinev1.SigningSpec{Scheme: hooklinev1.SchemeHMACTimestamp, HeaderName: "Acme-Signature"}
	token := "Bearer t0ken"
	stripeStyle.Spec.Headers = []hooklinev1.EndpointHeader{{Name: "Authorization", Value: &token}}
	rfc := newEndpoint(ns, "rfc9421", recvRFC.URL+"/r?x=1", "*")
	rfc.Spec.Signing = hooklinev1.SigningSpec{Scheme: hooklinev1.SchemeHTTPMessageSignatures}
	for _, ep := range []*hooklinev1.WebhookEndpoint{stripeStyle, rfc} {
		if err := k8s.Create(ctx, ep); err != nil {
			t.Fatal(err)
		}
	}
	waitReady(t, ns, "stripe-style", hooklinev1.ReasonActive)
	rfcEP := waitReady(t, ns, "rfc9421", hooklinev1.ReasonActive)
	if !strings.HasPrefix(rfcEP.Status.PublicKey, "whpk_") || len(rfcEP.Status.PublicKeyID) != 32 {
		t.Fatalf("Ed25519 endpoint status: %+v", rfcEP.Status)
	}
	if err := k8s.Create(ctx, newEvent(ns, "e1", "order.created", `{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	waitDeliveryPhase(t, ns, deliveryName("e1", "stripe-style"), hooklinev1.PhaseSucceeded, 10*time.Second)
	waitDeliveryPhase(t, ns, deliveryName("e1", "rfc9421"), hooklinev1.PhaseSucceeded, 10*time.Second)

	var s corev1.Secret
	if err := k8s.Get(ctx, key(ns, "stripe-style-signing-secret"), &s); err != nil {
		t.Fatal(err)
	}
	got := recvStripe.got()[0]
	if err := webhook.ValidatePayload(got.body, got.header.Get("Acme-Signature"), string(s.Data["signing-secret"])); err != nil {
		t.Fatalf("stripe-go rejects the HMACTimestamp request: %v", err)
	}
	if got.header.Get("Authorization") != token || got.header.Get("webhook-signature") != "" {
		t.Fatalf("headers: %v", got.header)
	}

	pub, err := signing.ParsePublicKey(rfcEP.Status.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	r := recvRFC.got()[0]
	v := signing.Verifier{PublicKeys: []ed25519.PublicKey{pub}}
	if err := v.HTTPMessage(signing.HTTPRequest{Method: http.MethodPost, TargetURI: recvRFC.URL + r.target, Header: r.header, Body: r.body}); err != nil {
		t.Fatalf("RFC 9421 verification: %v (Signature-Input %s)", err, r.header.Get("Signature-Input"))
	}
	if !strings.Contains(r.header.Get("Signature-Input"), `keyid="`+rfcEP.Status.PublicKeyID+`"`) {
		t.Fatalf("keyid: %s", r.header.Get("Signature-Input"))
	}
}

func TestSendTestAnnotation(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ns := newNamespace(t)
	recv := newReceiver(t)
	ep := activeEndpoint(t, newEndpoint(ns, "t", recv.URL+"/", "invoice.paid"))
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) {
		o.Annotations = map[string]string{hooklinev1.AnnotationSendTest: "1"}
	})
	waitDeliveryPhase(t, ns, deliveryName("t-test", "1"), hooklinev1.PhaseSucceeded, 10*time.Second)
	if reqs := recv.got(); len(reqs) != 1 || !strings.Contains(string(reqs[0].body), `"type":"hookline.test"`) {
		t.Fatalf("requests: %d", len(reqs))
	}
	eventually(t, 5*time.Second, "lastHandledSendTest", func(ctx context.Context) (bool, string, error) {
		e := getEndpoint(ctx, t, ns, "t")
		return e.Status.LastHandledSendTest == "1", e.Status.LastHandledSendTest, nil
	})
}
