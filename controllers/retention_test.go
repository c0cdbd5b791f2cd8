package controllers

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/retention"
	"github.com/hookline/hookline/internal/testenv"
)

// publishInOrder publishes the events one after the other, each once the one before
// it is complete, so that their completion order is their order here.
func publishInOrder(ctx context.Context, t *testing.T, ns string, events ...*hooklinev1.WebhookEvent) {
	t.Helper()
	for _, ev := range events {
		createAll(ctx, t, ev)
		waitEvent(t, ns, ev.Name, 15*time.Second, "complete", func(e *hooklinev1.WebhookEvent) bool { return e.Status.CompletionTime != nil })
	}
}

// eventNames lists the events of ns by name, sorted.
func eventNames(ctx context.Context, ns string) ([]string, error) {
	var list hooklinev1.WebhookEventList
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var names []string
	for _, e := range list.Items {
		names = append(names, e.Name)
	}
	slices.Sort(names)
	return names, nil
}

// waitEventsLeft waits until exactly want (sorted) are the events of ns, and the
// deliveries of the others are gone with them.
func waitEventsLeft(t *testing.T, ns string, want []string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("events left %v", want), func(ctx context.Context) (bool, string, error) {
		names, err := eventNames(ctx, ns)
		if err != nil {
			return false, "", err
		}
		var deliveries hooklinev1.WebhookDeliveryList
		if err := k8s.List(ctx, &deliveries, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		for _, d := range deliveries.Items {
			if !slices.Contains(want, d.Spec.EventRef.Name) {
				return false, "delivery of a pruned event left: " + d.Name, nil
			}
		}
		return slices.Equal(names, want), fmt.Sprint(names), nil
	})
}

func failingEndpoint(ns, name, url, eventType string) *hooklinev1.WebhookEndpoint {
	ep := newEndpoint(ns, name, url, eventType)
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 0}}, MaxAttempts: ptr(int32(1))}
	return ep
}

// Per endpoint, the newest finished deliveries are kept up to the endpoint's limits
// (here its spec's; the shared manager sets no default count), and the older ones
// go with their events.
func TestCountRetentionPerEndpointKeepsTheNewest(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	good := failingEndpoint(ns, "good", newReceiver(t).URL+"/", "order.created")
	good.Spec.SuccessfulDeliveriesHistoryLimit = ptr(int32(2))
	bad := failingEndpoint(ns, "bad", newReceiver(t, http.StatusBadRequest).URL+"/", "order.failed")
	bad.Spec.FailedDeliveriesHistoryLimit = ptr(int32(3))
	bad.Spec.SuccessfulDeliveriesHistoryLimit = ptr(int32(1))
	createAll(ctx, t, good, bad)
	waitReady(t, ns, "good", hooklinev1.ReasonActive)
	waitReady(t, ns, "bad", hooklinev1.ReasonActive)
	for i := range 5 {
		publishInOrder(ctx, t, ns, newEvent(ns, fmt.Sprintf("ok-%d", i), "order.created", `{}`),
			newEvent(ns, fmt.Sprintf("bad-%d", i), "order.failed", `{}`))
	}
	waitEventsLeft(t, ns, []string{"bad-2", "bad-3", "bad-4", "ok-3", "ok-4"}, 15*time.Second)
}

// Per namespace, the newest finished events are kept; over the limit those whose
// deliveries all succeeded go first, so a failed one outlives newer successes.
func TestCountRetentionPerNamespacePrunesSucceededFirst(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	conf := testConfig()
	conf.Retention.EventsPerNamespace = 3
	conf.Retention.Interval = 200 * time.Millisecond
	ns := "own-8"
	ownNamespace(t, ns, conf)
	createAll(ctx, t, newEndpoint(ns, "good", newReceiver(t).URL+"/", "order.created"),
		failingEndpoint(ns, "bad", newReceiver(t, http.StatusBadRequest).URL+"/", "order.failed"))
	waitReady(t, ns, "good", hooklinev1.ReasonActive)
	waitReady(t, ns, "bad", hooklinev1.ReasonActive)
	publishInOrder(ctx, t, ns, newEvent(ns, "e0-failed", "order.failed", `{}`),
		newEvent(ns, "e1-ok", "order.created", `{}`), newEvent(ns, "e2-ok", "order.created", `{}`),
		newEvent(ns, "e3-ok", "order.created", `{}`), newEvent(ns, "e4-ok", "order.created", `{}`))
	waitEventsLeft(t, ns, []string{"e0-failed", "e3-ok", "e4-ok"}, 15*time.Second)
}

// retainedBytesIn is the footprint of ns as the pruner estimates it, read from the
// API server, without the events not fanned out yet: those are the producer's
// writes, which the manager cannot hold back, only leave waiting.
// storedBytes are what the namespace's events and deliveries take in etcd: their
// values as etcd holds them, read through its gateway, not the pruner's estimate.
func storedBytes(ctx context.Context, ns string) (int64, error) {
	deliveries, events, err := etcd.NamespaceValueBytes(ctx, ns)
	return int64(deliveries + events), err
}

// The byte budget: finished work is pruned early (succeeded before failed), then,
// with live work filling it, new fan-outs wait with a condition and a Warning Event,
// and resume when deliveries finish. Nothing unfinished is pruned: every message
// arrives.
func TestByteBudgetPrunesEarlyThenHoldsFanOut(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	const budget = 120_000
	conf := testConfig()
	conf.Retention.MaxBytes = budget
	conf.Retention.Interval = 200 * time.Millisecond
	conf.Metrics = NewMetrics()
	ns := "own-7"
	ownNamespace(t, ns, conf)
	target := newStuckReceiver(t, true)
	target.stuck.Store(false)
	ep := newEndpoint(ns, "target", target.URL+"/", "order.created")
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 500 * time.Millisecond}}, MaxAttempts: ptr(int32(50))}
	createAll(ctx, t, ep, failingEndpoint(ns, "bad", newReceiver(t, http.StatusBadRequest).URL+"/", "order.failed"))
	waitReady(t, ns, "target", hooklinev1.ReasonActive)
	waitReady(t, ns, "bad", hooklinev1.ReasonActive)

	// 1. Finished work beyond 75 % of the budget is pruned, oldest succeeded first.
	publishInOrder(ctx, t, ns, newEvent(ns, "a-failed", "order.failed", `{}`))
	var first []*hooklinev1.WebhookEvent
	for i := range 40 {
		first = append(first, newEvent(ns, fmt.Sprintf("b-ok-%02d", i), "order.created", `{}`))
	}
	publishInOrder(ctx, t, ns, first...)
	eventually(t, 15*time.Second, "pruned to the budget's 75%, the failed event kept", func(ctx context.Context) (bool, string, error) {
		bytes, err := storedBytes(ctx, ns)
		if err != nil {
			return false, "", err
		}
		names, err := eventNames(ctx, ns)
		if err != nil {
			return false, "", err
		}
		return bytes <= retention.PruneStart*budget && slices.Contains(names, "a-failed") && slices.Contains(names, "b-ok-39") && !slices.Contains(names, "b-ok-00"),
			fmt.Sprintf("%d bytes, events %v", bytes, names), nil
	})
	if n := testutil.ToFloat64(conf.Metrics.pruned.WithLabelValues("WebhookEvent", retention.ReasonBudget)); n < 1 {
		t.Fatalf("hookline_pruned_total{reason=Budget} grew by %v", n)
	}

	// 2. The receiver fails: deliveries stay live and fill the budget; new fan-outs wait.
	target.stuck.Store(true)
	const stuck = 40
	for i := range stuck {
		createAll(ctx, t, newEvent(ns, fmt.Sprintf("c-held-%02d", i), "order.created", fmt.Sprintf(`{"n":%d}`, i)))
	}
	var peak int64
	held := ""
	eventually(t, 20*time.Second, "a fan-out held back with WaitingForBudget and a Warning Event", func(ctx context.Context) (bool, string, error) {
		bytes, err := storedBytes(ctx, ns)
		if err != nil {
			return false, "", err
		}
		peak = max(peak, bytes)
		var list hooklinev1.WebhookEventList
		if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		for _, e := range list.Items {
			if c := meta.FindStatusCondition(e.Status.Conditions, hooklinev1.ConditionComplete); c != nil && c.Reason == hooklinev1.ReasonWaitingForBudget {
				held = e.Name
			}
		}
		if held == "" {
			return false, fmt.Sprintf("%d bytes", bytes), nil
		}
		var recorded eventsv1.EventList
		if err := k8s.List(ctx, &recorded, client.InNamespace(ns)); err != nil {
			return false, "", err
		}
		for _, r := range recorded.Items {
			if r.Regarding.Name == held && r.Reason == hooklinev1.ReasonWaitingForBudget && r.Type == corev1.EventTypeWarning {
				return true, "", nil
			}
		}
		return false, "no Event for " + held, nil
	})
	// What etcd holds stays within the budget while fan-out is held: sampled for two
	// seconds, the first sample over it fails.
	throughout(t, 2*time.Second, func(ctx context.Context) error {
		bytes, err := storedBytes(ctx, ns)
		if err != nil {
			return err
		}
		peak = max(peak, bytes)
		if bytes > budget {
			return fmt.Errorf("etcd holds %d bytes of the namespace, over the %d-byte budget", bytes, budget)
		}
		return nil
	})
	t.Logf("held back: %s; peak %d of %d bytes as stored in etcd", held, peak, budget)

	// 3. The receiver recovers: deliveries finish, are pruned, held events fan out and
	// every message arrives.
	target.stuck.Store(false)
	eventually(t, 30*time.Second, "every message delivered", func(ctx context.Context) (bool, string, error) {
		n := target.delivered()
		return n == len(first)+stuck, fmt.Sprintf("%d of %d", n, len(first)+stuck), nil
	})
}
