package controllers

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

func kstatusOf(t *testing.T, obj client.Object) status.Status {
	t.Helper()
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: u})
	if err != nil {
		t.Fatal(err)
	}
	return res.Status
}

// Argo CD and Flux judge health with kstatus: Current when healthy, InProgress while a
// change is not yet observed, Failed when only a user can fix it.
func TestKstatusReadsOurStatus(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)
	ep := activeEndpoint(t, newEndpoint(ns, "owner", recv.URL+"/x", "*"))
	if s, h := kstatusOf(t, ep), argoHealth(t, ep); s != status.CurrentStatus || h != "Healthy" {
		t.Fatalf("a Ready endpoint is %s / %s, want Current / Healthy", s, h)
	}
	// The object as the API server returns it right after a spec change, before the
	// manager has observed the new generation.
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) { o.Spec.Description = "changed" })
	if s, h := kstatusOf(t, ep), argoHealth(t, ep); s != status.InProgressStatus || h != "Progressing" {
		t.Fatalf("a changed endpoint is %s / %s, want InProgress / Progressing", s, h)
	}
	ep = waitReady(t, ns, "owner", hooklinev1.ReasonActive)
	if s := kstatusOf(t, ep); s != status.CurrentStatus {
		t.Fatalf("after reconciling: %s, want Current", s)
	}
	if err := k8s.Create(ctx, newEndpoint(ns, "second", recv.URL+"/x", "*")); err != nil {
		t.Fatal(err)
	}
	dup := waitReady(t, ns, "second", hooklinev1.ReasonDuplicateURL)
	if s, h := kstatusOf(t, dup), argoHealth(t, dup); s != status.FailedStatus || h != "Degraded" {
		t.Fatalf("a duplicate URL is %s / %s, want Failed / Degraded", s, h)
	}
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) { o.Spec.Paused = true })
	if h := argoHealth(t, waitReady(t, ns, "owner", hooklinev1.ReasonPaused)); h != "Suspended" {
		t.Fatalf("a paused endpoint is %s in Argo CD, want Suspended", h)
	}
}

const gitopsEndpointYAML = `
apiVersion: hookline.dev/v1alpha1
kind: WebhookEndpoint
metadata:
  name: from-git
  annotations:
    hookline.dev/rotate-secret: "2026-11-23T10:00:00Z"
spec:
  url: %s
  events: [order.created]
  headers:
  - name: X-Tenant
    value: acme
`

// Applying the same YAML twice changes nothing, and the manager never takes ownership of
// any field outside status (no drift for GitOps tools).
func TestServerSideApplyTwiceHasNoDrift(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t)
	apply := func() *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(fmt.Sprintf(gitopsEndpointYAML, recv.URL+"/git")), &u.Object); err != nil {
			t.Fatal(err)
		}
		u.SetNamespace(ns)
		if err := k8s.Patch(ctx, u, client.Apply, client.FieldOwner("argocd"), client.ForceOwnership); err != nil {
			t.Fatal(err)
		}
		return u
	}
	apply()
	ep := waitReady(t, ns, "from-git", hooklinev1.ReasonActive)
	if ep.Status.LastHandledRotateSecret != "2026-11-23T10:00:00Z" {
		t.Fatalf("the token present at creation counts as handled: %q", ep.Status.LastHandledRotateSecret)
	}
	second := apply()
	if second.GetResourceVersion() != ep.ResourceVersion || second.GetGeneration() != ep.Generation {
		t.Fatalf("the second apply changed the object: resourceVersion %s -> %s", ep.ResourceVersion, second.GetResourceVersion())
	}
	for _, mf := range ep.ManagedFields {
		if mf.Manager != "argocd" && mf.Subresource != "status" {
			t.Errorf("manager %q owns fields outside status: %s", mf.Manager, mf.FieldsV1.String())
		}
	}
}

func TestAutoDisableAfterFailingTooLongThenSpecChangeEnables(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t, http.StatusInternalServerError)
	ep := newEndpoint(ns, "failing", recv.URL+"/", "*")
	ep.Spec.AutoDisableAfter = &metav1.Duration{Duration: time.Second}
	five := int32(5)
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: time.Second}}, MaxAttempts: &five}
	if err := k8s.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	waitReady(t, ns, "failing", hooklinev1.ReasonActive)
	if err := k8s.Create(ctx, newEvent(ns, "e", "order.created", `{}`)); err != nil {
		t.Fatal(err)
	}
	ep = waitReady(t, ns, "failing", hooklinev1.ReasonDisabled)
	if ep.Status.DisabledReason != hooklinev1.DisabledFailingTooLong || ep.Status.ConsecutiveFailures < 2 ||
		ep.Status.FailingSince == nil || ep.Status.LastFailureTime == nil {
		t.Fatalf("status: %+v", ep.Status)
	}
	d := waitDeliveryPhase(t, ns, deliveryName("e", "failing"), hooklinev1.PhaseFailed, 10*time.Second)
	if c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded); c.Reason != hooklinev1.ReasonEndpointDisabled {
		t.Fatalf("pending delivery of a disabled endpoint: %+v", c)
	}
	// Any change of the spec is an answer too.
	ep = patched(t, ep, func(o *hooklinev1.WebhookEndpoint) { o.Spec.Description = "receiver fixed" })
	ep = waitReady(t, ns, "failing", hooklinev1.ReasonActive)
	if ep.Status.DisabledReason != "" || ep.Status.ConsecutiveFailures != 0 || ep.Status.FailingSince != nil {
		t.Fatalf("after the spec change: %+v", ep.Status)
	}
}
