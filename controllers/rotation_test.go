package controllers

import (
	"context"
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
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/signing"
	"github.com/hookline/hookline/internal/testenv"
)

func secretValue(ctx context.Context, t *testing.T, ns, name string) string {
	t.Helper()
	var s corev1.Secret
	if err := k8s.Get(ctx, key(ns, name), &s); err != nil {
		t.Fatal(err)
	}
	return string(s.Data[hooklinev1.SecretKeySigningSecret])
}

// setSigningValue writes a new value into a signing Secret, as a user's tooling would.
func setSigningValue(ctx context.Context, t *testing.T, ns, name, value string) {
	t.Helper()
	var s corev1.Secret
	if err := k8s.Get(ctx, key(ns, name), &s); err != nil {
		t.Fatal(err)
	}
	s.Data[hooklinev1.SecretKeySigningSecret] = []byte(value)
	if err := k8s.Update(ctx, &s); err != nil {
		t.Fatal(err)
	}
}

// rotated sets the rotate-secret token and waits until the manager has handled it.
func rotated(t *testing.T, ep *hooklinev1.WebhookEndpoint, token string) *hooklinev1.WebhookEndpoint {
	t.Helper()
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) {
		o.Annotations = map[string]string{hooklinev1.AnnotationRotateSecret: token}
	})
	eventually(t, 10*time.Second, "rotation "+token+" handled", func(ctx context.Context) (bool, string, error) {
		ep = getEndpoint(ctx, t, ep.Namespace, ep.Name)
		return ep.Status.LastHandledRotateSecret == token, fmt.Sprintf("%+v", ep.Status), nil
	})
	return ep
}

// verifiesWith reports whether the Standard Webhooks reference library accepts the
// request with this secret alone.
func verifiesWith(t *testing.T, r capturedRequest, secret string) bool {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	return wh.Verify(r.body, r.header) == nil
}

// publishAndReceive publishes an event and returns the request the receiver got for it.
func publishAndReceive(ctx context.Context, t *testing.T, ns, endpoint, eventName string, recv *receiver) capturedRequest {
	t.Helper()
	before := len(recv.got())
	if err := k8s.Create(ctx, newEvent(ns, eventName, "order.created", `{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	waitDeliveryPhase(t, ns, deliveryName(eventName, endpoint), hooklinev1.PhaseSucceeded, 10*time.Second)
	reqs := recv.got()
	if len(reqs) != before+1 {
		t.Fatalf("receiver got %d new requests, want 1", len(reqs)-before)
	}
	return reqs[len(reqs)-1]
}

func TestRotationKeepsThePreviousSecretSigningForTheGracePeriod(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)
	ep := newEndpoint(ns, "rot", recv.URL+"/", "*")
	ep.Spec.Signing.RotationGracePeriod = &metav1.Duration{Duration: 4 * time.Second}
	if err := k8s.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	ep = waitReady(t, ns, "rot", hooklinev1.ReasonActive)
	oldSecret := secretValue(ctx, t, ns, "rot-signing-secret")

	ep = rotated(t, ep, "2026-11-23T10:00:00Z")
	if ep.Status.PreviousSecretsExpireAt == nil {
		t.Fatalf("no previousSecretsExpireAt after a rotation: %+v", ep.Status)
	}
	newSecret := secretValue(ctx, t, ns, "rot-signing-secret")
	if newSecret == oldSecret || ep.Status.SecretHint != newSecret[:8]+"..." || ep.Status.LastRotationTime == nil {
		t.Fatalf("after rotation: secret changed %v, status %+v", newSecret != oldSecret, ep.Status)
	}
	if left := time.Until(ep.Status.PreviousSecretsExpireAt.Time); left <= 0 || left > 5*time.Second {
		t.Fatalf("previousSecretsExpireAt is %v from now, want within the 4s grace period", left)
	}

	// During the grace period: two signatures; each secret alone verifies.
	r := publishAndReceive(ctx, t, ns, "rot", "during-grace", recv)
	if n := len(strings.Fields(r.header.Get("webhook-signature"))); n != 2 {
		t.Fatalf("webhook-signature has %d entries during the grace period, want 2", n)
	}
	if !verifiesWith(t, r, newSecret) || !verifiesWith(t, r, oldSecret) {
		t.Fatal("during the grace period both the new and the old secret must verify")
	}
	// The annotation stays (it can live in Git) and is not acted on again.
	if got := getEndpoint(ctx, t, ns, "rot"); secretValue(ctx, t, ns, "rot-signing-secret") != newSecret || got.Annotations[hooklinev1.AnnotationRotateSecret] == "" {
		t.Fatal("the same token rotated again, or the annotation was removed")
	}

	// After it, with no further change: the old secret no longer signs.
	eventually(t, 15*time.Second, "grace period over", func(ctx context.Context) (bool, string, error) {
		ep = getEndpoint(ctx, t, ns, "rot")
		return ep.Status.PreviousSecretsExpireAt == nil, fmt.Sprintf("%v", ep.Status.PreviousSecretsExpireAt), nil
	})
	r = publishAndReceive(ctx, t, ns, "rot", "after-grace", recv)
	if n := len(strings.Fields(r.header.Get("webhook-signature"))); n != 1 || !verifiesWith(t, r, newSecret) || verifiesWith(t, r, oldSecret) {
		t.Fatalf("after the grace period: %d entries; want one, by the new secret only", n)
	}
}

func TestSeveralRotationsWithinAGracePeriodKeepEverySecret(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)
	ep := activeEndpoint(t, newEndpoint(ns, "many", recv.URL+"/", "*"))
	secrets := []string{secretValue(ctx, t, ns, "many-signing-secret")}
	for i := 1; i <= 3; i++ {
		token := fmt.Sprintf("r%d", i)
		ep = rotated(t, ep, token)
		secrets = append(secrets, secretValue(ctx, t, ns, "many-signing-secret"))
	}
	r := publishAndReceive(ctx, t, ns, "many", "e", recv)
	entries := strings.Fields(r.header.Get("webhook-signature"))
	if len(entries) != 4 {
		t.Fatalf("%d signatures, want 4 (current and three previous)", len(entries))
	}
	for i, s := range secrets {
		if !verifiesWith(t, r, s) {
			t.Errorf("secret %d does not verify", i)
		}
	}
	// The current one signs first.
	k, _ := signing.ParseSecret(secrets[3])
	first, _ := signing.SignStandardWebhooks(r.header.Get("webhook-id"), atoi(t, r.header.Get("webhook-timestamp")), r.body, []signing.Key{k})
	if entries[0] != first {
		t.Fatal("the current secret's signature is not first")
	}
}

// userSecretEndpoint creates a user's signing Secret (as Sealed Secrets or External
// Secrets would) and an active endpoint "byo" signing with it; it returns the endpoint
// and the Secret's value.
func userSecretEndpoint(ctx context.Context, t *testing.T, ns, secretName string, recv *receiver) (*hooklinev1.WebhookEndpoint, string) {
	t.Helper()
	value, _ := signing.NewHMACSecret()
	if err := k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: ns},
		Data: map[string][]byte{hooklinev1.SecretKeySigningSecret: []byte(value)}}); err != nil {
		t.Fatal(err)
	}
	ep := newEndpoint(ns, "byo", recv.URL+"/", "*")
	ep.Spec.Signing.SecretName = secretName
	return activeEndpoint(t, ep), value
}

func TestUserManagedSecretChangeKeepsThePreviousValueSigning(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)
	ep, first := userSecretEndpoint(ctx, t, ns, "sealed", recv)

	// The user's tooling rolls the value over.
	second, _ := signing.NewHMACSecret()
	setSigningValue(ctx, t, ns, "sealed", second)
	// A rotation request on such an endpoint is answered with what to do instead.
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) {
		o.Annotations = map[string]string{hooklinev1.AnnotationRotateSecret: "please"}
	})
	eventually(t, 10*time.Second, "new value noticed and the rotation request answered", func(ctx context.Context) (bool, string, error) {
		ep = getEndpoint(ctx, t, ns, "byo")
		return ep.Status.SecretHint == second[:8]+"..." && ep.Status.PreviousSecretsExpireAt != nil && ep.Status.LastHandledRotateSecret == "please",
			fmt.Sprintf("%+v", ep.Status), nil
	})
	c := meta.FindStatusCondition(ep.Status.Conditions, hooklinev1.ConditionSecretRotation)
	if c == nil || c.Reason != "UserManagedSecret" || !strings.Contains(c.Message, "rotate it at its source") || ep.Status.LastHandledRotateSecret != "please" {
		t.Fatalf("rotation on a user-managed secret: %+v", ep.Status)
	}
	if got := secretValue(ctx, t, ns, "sealed"); got != second {
		t.Fatal("the manager wrote to the user's Secret")
	}
	r := publishAndReceive(ctx, t, ns, "byo", "e", recv)
	if !verifiesWith(t, r, second) || !verifiesWith(t, r, first) {
		t.Fatal("both the new and the previous value of the user's Secret must verify during the grace period")
	}
}

func TestSecretsNeverReachEventsOrStatus(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t, http.StatusGone)
	ep := newEndpoint(ns, "leak", recv.URL+"/", "*")
	ep.Spec.Signing = hooklinev1.SigningSpec{Scheme: hooklinev1.SchemeStandardWebhooks, Algorithm: hooklinev1.AlgorithmEd25519}
	if err := k8s.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	ep = waitReady(t, ns, "leak", hooklinev1.ReasonActive)
	before := secretValue(ctx, t, ns, "leak-signing-secret")
	ep = rotated(t, ep, "x")
	after := secretValue(ctx, t, ns, "leak-signing-secret")
	if !strings.HasPrefix(after, "whsk_") || !strings.HasPrefix(ep.Status.PublicKey, "whpk_") {
		t.Fatalf("Ed25519 endpoint: secret %q… status %+v", after[:5], ep.Status)
	}
	if err := k8s.Create(ctx, newEvent(ns, "e", "order.created", `{}`)); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ns, "leak", hooklinev1.ReasonDisabled) // 410 Gone: Events on the endpoint

	var events eventsv1.EventList
	if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var everything strings.Builder
	for _, e := range events.Items {
		everything.WriteString(e.Note + e.Reason + "\n")
	}
	var all hooklinev1.WebhookDeliveryList
	_ = k8s.List(ctx, &all, client.InNamespace(ns))
	everything.WriteString(fmt.Sprintf("%+v %+v", getEndpoint(ctx, t, ns, "leak").Status, all))
	everything.WriteString(managerLog.String())
	for _, s := range []string{before, after} {
		if strings.Contains(everything.String(), s[5:]) {
			t.Fatal("a signing secret appears in Events, status or the manager's log")
		}
	}
	reasons := everything.String()
	for _, want := range []string{"SecretRotated", "Disabled"} {
		if !strings.Contains(reasons, want) {
			t.Errorf("no %s Event on the endpoint", want)
		}
	}
}

func atoi(t *testing.T, s string) int64 {
	t.Helper()
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A new value in a user's Secret (External Secrets, Sealed Secrets) is noticed from the
// Secret watch, not from a periodic re-read: the first request after it is signed with
// both values within seconds, with no other change to the endpoint.
func TestUserSecretChangeSignsWithBothValuesWithinSeconds(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)
	_, first := userSecretEndpoint(ctx, t, ns, "external", recv)
	if r := publishAndReceive(ctx, t, ns, "byo", "before", recv); !verifiesWith(t, r, first) {
		t.Fatal("the first value must sign")
	}

	second, _ := signing.NewHMACSecret()
	changed := time.Now()
	setSigningValue(ctx, t, ns, "external", second)
	took := publishUntil(ctx, t, ns, "byo", recv, changed, "a request signed with both values", func(r capturedRequest) bool {
		return verifiesWith(t, r, second) && verifiesWith(t, r, first)
	})
	t.Logf("from the Secret's change to the first request signed with both values: %s", took)
}

// A header's Secret is read once, held, and read again when it changes.
func TestHeaderSecretChangeIsUsedAtOnce(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)
	if err := k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "auth", Namespace: ns},
		Data: map[string][]byte{"token": []byte("Bearer one")}}); err != nil {
		t.Fatal(err)
	}
	ep := newEndpoint(ns, "with-auth", recv.URL+"/", "*")
	ep.Spec.Headers = []hooklinev1.EndpointHeader{{Name: "Authorization",
		ValueFrom: &hooklinev1.HeaderValueSource{SecretKeyRef: hooklinev1.SecretKeyReference{Name: "auth", Key: "token"}}}}
	activeEndpoint(t, ep)
	if got := publishAndReceive(ctx, t, ns, "with-auth", "one", recv).header.Get("Authorization"); got != "Bearer one" {
		t.Fatalf("Authorization %q", got)
	}
	var s corev1.Secret
	if err := k8s.Get(ctx, key(ns, "auth"), &s); err != nil {
		t.Fatal(err)
	}
	s.Data["token"] = []byte("Bearer two")
	if err := k8s.Update(ctx, &s); err != nil {
		t.Fatal(err)
	}
	took := publishUntil(ctx, t, ns, "with-auth", recv, time.Now(), "the new header value", func(r capturedRequest) bool {
		return r.header.Get("Authorization") == "Bearer two"
	})
	t.Logf("new header value used %s after the change", took)
}

// publishUntil publishes events to the endpoint one after the other until a request
// satisfies ok, within 5 s of since, and returns how long after since that was.
func publishUntil(ctx context.Context, t *testing.T, ns, endpoint string, recv *receiver, since time.Time, what string, ok func(capturedRequest) bool) time.Duration {
	t.Helper()
	for i := 0; ; i++ {
		if ok(publishAndReceive(ctx, t, ns, endpoint, fmt.Sprintf("until-%d", i), recv)) {
			return time.Since(since)
		}
		if time.Since(since) > 5*time.Second {
			t.Fatalf("no request with %s %s after the change", what, time.Since(since))
		}
	}
}
