package controllers

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/signing"
)

func policyEndpoint(annotations map[string]string, lastHandled string) *hooklinev1.WebhookEndpoint {
	ep := newEndpoint("ns", "ep", "https://example.com/", "*")
	ep.UID = types.UID("ep-uid")
	ep.Annotations = annotations
	ep.Status.LastHandledRotateSecret = lastHandled
	return ep
}

func signingSecret(t *testing.T, owner *hooklinev1.WebhookEndpoint, value string, rotatedFor string) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ep-signing-secret", Namespace: "ns"},
		Data: map[string][]byte{hooklinev1.SecretKeySigningSecret: []byte(value)}}
	if owner != nil {
		yes := true
		s.OwnerReferences = []metav1.OwnerReference{{APIVersion: hooklinev1.GroupVersion.String(), Kind: "WebhookEndpoint",
			Name: owner.Name, UID: owner.UID, Controller: &yes}}
	}
	if rotatedFor != "" {
		s.Annotations = map[string]string{rotatedForAnnotation: rotatedFor}
	}
	return s
}

func TestPlanSigningSecret(t *testing.T) {
	t.Parallel()
	hmac, _ := signing.NewHMACSecret()
	rotate := func(token string) map[string]string {
		return map[string]string{hooklinev1.AnnotationRotateSecret: token}
	}
	cases := []struct {
		name   string
		ep     *hooklinev1.WebhookEndpoint
		secret func(ep *hooklinev1.WebhookEndpoint) *corev1.Secret
		want   secretAction
	}{
		{"no Secret: create", policyEndpoint(nil, ""), func(*hooklinev1.WebhookEndpoint) *corev1.Secret { return nil }, secretCreate},
		{"ours, nothing asked: keep", policyEndpoint(nil, ""), func(ep *hooklinev1.WebhookEndpoint) *corev1.Secret { return signingSecret(t, ep, hmac, "") }, secretKeep},
		{"ours, new token: rotate", policyEndpoint(rotate("t2"), "t1"), func(ep *hooklinev1.WebhookEndpoint) *corev1.Secret { return signingSecret(t, ep, hmac, "t1") }, secretRotate},
		{"ours, token handled: keep", policyEndpoint(rotate("t1"), "t1"), func(ep *hooklinev1.WebhookEndpoint) *corev1.Secret { return signingSecret(t, ep, hmac, "t1") }, secretKeep},
		{"ours, rotated for the token but status lost", policyEndpoint(rotate("t2"), "t1"), func(ep *hooklinev1.WebhookEndpoint) *corev1.Secret { return signingSecret(t, ep, hmac, "t2") }, secretRotatedAlready},
		{"ours, wrong algorithm: replace", func() *hooklinev1.WebhookEndpoint {
			ep := policyEndpoint(nil, "")
			ep.Spec.Signing.Algorithm = hooklinev1.AlgorithmEd25519
			return ep
		}(), func(ep *hooklinev1.WebhookEndpoint) *corev1.Secret { return signingSecret(t, ep, hmac, "") }, secretRotate},
		{"user's, new token: refuse", policyEndpoint(rotate("t1"), ""), func(*hooklinev1.WebhookEndpoint) *corev1.Secret { return signingSecret(t, nil, hmac, "") }, secretRefuseRotation},
		{"user's, invalid value", policyEndpoint(nil, ""), func(*hooklinev1.WebhookEndpoint) *corev1.Secret { return signingSecret(t, nil, "not-a-secret", "") }, secretUserInvalid},
		{"user's, fine: keep", policyEndpoint(nil, ""), func(*hooklinev1.WebhookEndpoint) *corev1.Secret { return signingSecret(t, nil, hmac, "") }, secretKeep},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan := planSigningSecret(c.ep, c.secret(c.ep))
			if plan.action != c.want {
				t.Fatalf("action %d, want %d (%+v)", plan.action, c.want, plan)
			}
			if plan.action == secretUserInvalid && (plan.problem == "" || containsValue(plan.problem, "not-a-secret")) {
				t.Fatalf("problem %q: must say what is wrong without the value", plan.problem)
			}
		})
	}
}

func containsValue(msg, value string) bool { return value != "" && strings.Contains(msg, value) }

func TestReadinessPolicies(t *testing.T) {
	t.Parallel()
	ep := policyEndpoint(nil, "")
	cases := []struct {
		name    string
		decide  func() (readiness, bool)
		decided bool
		reason  string
	}{
		{"bad URL", func() (readiness, bool) { return checkURL(endpointObservation{urlErr: errors.New("no host")}, false) }, true, hooklinev1.ReasonInvalidSpec},
		{"http refused", func() (readiness, bool) { return checkURL(endpointObservation{normalizedURL: "http://a/"}, false) }, true, hooklinev1.ReasonInvalidSpec},
		{"http allowed", func() (readiness, bool) { return checkURL(endpointObservation{normalizedURL: "http://a/"}, true) }, false, ""},
		{"https", func() (readiness, bool) { return checkURL(endpointObservation{normalizedURL: "https://a/"}, false) }, false, ""},
		{"URL held by another", func() (readiness, bool) { return checkURLOwner(ep, endpointObservation{urlOwner: "older"}) }, true, hooklinev1.ReasonDuplicateURL},
		{"URL ours", func() (readiness, bool) { return checkURLOwner(ep, endpointObservation{urlOwner: "ep"}) }, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ready, decided := c.decide()
			if decided != c.decided || ready.reason != c.reason || (decided && (ready.status != metav1.ConditionFalse || !ready.stalled)) {
				t.Fatalf("decided %v, readiness %+v", decided, ready)
			}
		})
	}
	for _, c := range []struct {
		mutate func(*hooklinev1.WebhookEndpoint)
		reason string
	}{
		{func(*hooklinev1.WebhookEndpoint) {}, hooklinev1.ReasonActive},
		{func(e *hooklinev1.WebhookEndpoint) { e.Spec.Paused = true }, hooklinev1.ReasonPaused},
		{func(e *hooklinev1.WebhookEndpoint) { e.Status.DisabledReason = hooklinev1.DisabledEndpointGone }, hooklinev1.ReasonDisabled},
	} {
		e := ep.DeepCopy()
		c.mutate(e)
		if got := deliveringReadiness(e); got.reason != c.reason {
			t.Errorf("deliveringReadiness: %s, want %s", got.reason, c.reason)
		}
	}
}
