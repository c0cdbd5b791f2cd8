package controllers

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/testenv"
)

var healthT0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func healthEndpoint(autoDisableAfter time.Duration) *hooklinev1.WebhookEndpoint {
	ep := &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ep"}}
	if autoDisableAfter > 0 {
		ep.Spec.AutoDisableAfter = &metav1.Duration{Duration: autoDisableAfter}
	}
	return ep
}

// What record asks to write at once, and what it keeps for the next batch.
func TestHealthRecordDecidesWhatIsWrittenAtOnce(t *testing.T) {
	t.Run("410 Gone is written at once", func(t *testing.T) {
		h := newEndpointHealth(nil, nil, NewMetrics())
		if !h.Record(healthEndpoint(0), delivery.Gone, healthT0) {
			t.Fatal("a 410 must be written at once: the endpoint is disabled")
		}
	})
	t.Run("a plain failure waits for the batch", func(t *testing.T) {
		h := newEndpointHealth(nil, nil, NewMetrics())
		if h.Record(healthEndpoint(0), delivery.Retry, healthT0) {
			t.Fatal("a failure without autoDisableAfter is batched")
		}
		if !h.hasPending(healthEndpoint(0)) {
			t.Fatal("the failure is not pending")
		}
	})
	t.Run("autoDisableAfter counts from status.failingSince", func(t *testing.T) {
		h := newEndpointHealth(nil, nil, NewMetrics())
		ep := healthEndpoint(time.Hour)
		since := metav1.NewTime(healthT0.Add(-59 * time.Minute))
		ep.Status.FailingSince, ep.Status.ConsecutiveFailures = &since, 40
		if h.Record(ep, delivery.Retry, healthT0) {
			t.Fatal("failing for 59 minutes of 60 is not yet too long")
		}
		if !h.Record(ep, delivery.Retry, healthT0.Add(time.Minute)) {
			t.Fatal("failing for 60 minutes must disable at once")
		}
	})
	t.Run("an invalid payload is nothing the receiver did", func(t *testing.T) {
		h := newEndpointHealth(nil, nil, NewMetrics())
		if h.Record(healthEndpoint(0), delivery.Invalid, healthT0) || h.hasPending(healthEndpoint(0)) {
			t.Fatal("an invalid payload must not count against the endpoint")
		}
	})
	t.Run("a recent success of a healthy endpoint writes nothing", func(t *testing.T) {
		h := newEndpointHealth(nil, nil, NewMetrics())
		ep := healthEndpoint(0)
		recent := metav1.NewTime(healthT0.Add(-10 * time.Second))
		ep.Status.LastSuccessTime = &recent
		if h.Record(ep, delivery.Succeeded, healthT0) || h.hasPending(ep) {
			t.Fatal("a success within successRefresh of the last one is not written")
		}
		if h.Record(ep, delivery.Succeeded, healthT0.Add(successRefresh)); !h.hasPending(ep) {
			t.Fatal("a success after successRefresh is written with the next batch")
		}
	})
}

// The recorder against a real API server: failures add up across flushes, a 410
// disables once, an enable token enables once.
func TestHealthRecordIsWrittenAndEnabled(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	// A reserved namespace no manager watches: this recorder is the endpoint's only writer.
	ns := "own-17"
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	ep := newEndpoint(ns, "ep", "https://receiver.example/", "order.created")
	createAll(ctx, t, ep)
	metrics := NewMetrics()
	h := newEndpointHealth(k8s, k8s, metrics)
	key := types.NamespacedName{Namespace: ns, Name: "ep"}
	live := func() *hooklinev1.WebhookEndpoint { return getEndpoint(ctx, t, ns, "ep") }

	for i := range 2 {
		h.Record(live(), delivery.Retry, healthT0.Add(time.Duration(i)*time.Second))
		h.Record(live(), delivery.Retry, healthT0.Add(time.Duration(i)*time.Second+time.Millisecond))
		if err := h.Flush(ctx, live()); err != nil {
			t.Fatal(err)
		}
	}
	st := live().Status
	if st.ConsecutiveFailures != 4 || st.FailingSince == nil || !st.FailingSince.Time.Equal(healthT0) {
		t.Fatalf("after two flushes of two failures: %d failures since %v, want 4 since %s", st.ConsecutiveFailures, st.FailingSince, healthT0)
	}
	rv := live().ResourceVersion
	if err := h.Flush(ctx, live()); err != nil {
		t.Fatal(err)
	}
	if live().ResourceVersion != rv {
		t.Fatal("a flush with nothing pending wrote the endpoint")
	}

	if !h.Record(live(), delivery.Gone, healthT0.Add(time.Minute)) {
		t.Fatal("a 410 is written at once")
	}
	if err := h.Flush(ctx, live()); err != nil {
		t.Fatal(err)
	}
	if got := live().Status.DisabledReason; got != hooklinev1.DisabledEndpointGone {
		t.Fatalf("disabledReason %q, want %s", got, hooklinev1.DisabledEndpointGone)
	}
	h.Record(live(), delivery.Gone, healthT0.Add(2*time.Minute))
	if err := h.Flush(ctx, live()); err != nil {
		t.Fatal(err)
	}
	if got := live().Status.DisabledGeneration; got != live().Generation {
		t.Fatalf("disabledGeneration %d", got)
	}
	if n := testutil.ToFloat64(metrics.disabled.WithLabelValues(hooklinev1.DisabledEndpointGone)); n != 1 {
		t.Fatalf("hookline_endpoints_disabled_total{EndpointGone} = %v after two 410s, want 1: disabled once", n)
	}

	patched(t, live(), func(e *hooklinev1.WebhookEndpoint) {
		metav1.SetMetaDataAnnotation(&e.ObjectMeta, hooklinev1.AnnotationEnable, "e1")
	})
	for i, want := range []string{"the " + hooklinev1.AnnotationEnable + " annotation", ""} {
		why, err := h.enable(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if why != want {
			t.Fatalf("enable #%d: %q, want %q (once per token)", i+1, why, want)
		}
	}
	st = live().Status
	if st.DisabledReason != "" || st.ConsecutiveFailures != 0 || st.FailingSince != nil || st.LastHandledEnable != "e1" {
		t.Fatalf("after the enable: %+v", st)
	}
}

// A sender reading a copy of the endpoint from before the success was written does not
// write the same success again; a failure makes the next success news again.
func TestHealthRecordDoesNotRepeatASuccessFromAStaleCopy(t *testing.T) {
	h := newEndpointHealth(nil, nil, NewMetrics())
	ep := healthEndpoint(0) // never a success in its status: a stale copy
	key := types.NamespacedName{Namespace: "ns", Name: "ep"}
	h.Record(ep, delivery.Succeeded, healthT0)
	// As write() does after a success it applied:
	h.mu.Lock()
	delete(h.pending, key)
	h.healthySince[key] = healthT0
	h.mu.Unlock()
	if h.Record(ep, delivery.Succeeded, healthT0.Add(time.Second)); h.hasPending(ep) {
		t.Fatal("the same success, read from a stale copy, is pending again")
	}
	h.Record(ep, delivery.Retry, healthT0.Add(2*time.Second))
	h.mu.Lock()
	delete(h.pending, key)
	h.mu.Unlock()
	if h.Record(ep, delivery.Succeeded, healthT0.Add(3*time.Second)); !h.hasPending(ep) {
		t.Fatal("a success after a failure must be written")
	}
}
