package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/deliverystate"
	"github.com/hookline/hookline/internal/kubeclient"
)

// The contract's metrics are on the manager's registry, with the history of a delivery
// that needed more than ten attempts trimmed to the last ten.
func TestMetricsAndHistoryLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t, http.StatusInternalServerError)
	ep := newEndpoint(ns, "ep", recv.URL+"/", "*")
	twelve := int32(12)
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 0}}, MaxAttempts: &twelve}
	createAll(ctx, t, ep)
	waitReady(t, ns, "ep", hooklinev1.ReasonActive)
	retriesBefore := testutil.ToFloat64(attemptsTotal.WithLabelValues("retry"))
	exhaustedBefore := testutil.ToFloat64(completedTotal.WithLabelValues(string(hooklinev1.PhaseExhausted)))
	createAll(ctx, t, directDelivery(ns, "d", "ep"))
	d := waitDeliveryPhase(t, ns, "d", hooklinev1.PhaseExhausted, 20*time.Second)
	if d.Status.Attempts != 12 || len(d.Status.History) != deliverystate.HistoryLimit || len(recv.got()) != 12 {
		t.Fatalf("attempts %d, history %d, requests %d", d.Status.Attempts, len(d.Status.History), len(recv.got()))
	}
	if !d.Status.History[deliverystate.HistoryLimit-1].Time.After(d.Status.History[0].Time.Time) {
		t.Fatal("history is not newest last")
	}

	// Other tests' deliveries count too, so at least this test's. The counters move
	// once the status write is answered, a moment after the test can read it.
	eventually(t, 5*time.Second, "metrics count this test's attempts", func(context.Context) (bool, string, error) {
		retries := testutil.ToFloat64(attemptsTotal.WithLabelValues("retry")) - retriesBefore
		exhausted := testutil.ToFloat64(completedTotal.WithLabelValues(string(hooklinev1.PhaseExhausted))) - exhaustedBefore
		return retries >= 12 && exhausted >= 1, fmt.Sprintf("attempts_total{retry} +%v, completed_total{Exhausted} +%v", retries, exhausted), nil
	})

	// The footprint, as the manager counts it (here from the API server directly: the
	// package's managers each cache a part of the cluster).
	// Guarded as the manager is: another test keeps hostile objects in the cluster.
	guarded, err := client.New(kubeclient.Guarded(restConfig), client.Options{Scheme: testScheme})
	if err != nil {
		t.Fatal(err)
	}
	deliveries, events, err := listed(ctx, guarded)
	if err != nil {
		t.Fatal(err)
	}
	_, _, fp := (&Pruner{}).units(deliveries, events)
	footprint := &retainedCollector{}
	footprint.publish(fp, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(footprint)
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, f := range got {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				name += "," + l.GetValue()
			}
			values[name] = m.GetGauge().GetValue()
		}
	}
	if values["hookline_retained_objects,WebhookDelivery,Exhausted"] < 1 || values["hookline_retained_bytes"] < 500 {
		t.Errorf("retained objects and bytes: %v", values)
	}

	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, f := range families {
		found[f.GetName()] = true
	}
	for _, name := range []string{"hookline_delivery_attempts_total", "hookline_deliveries_completed_total",
		"hookline_delivery_attempt_duration_seconds", "hookline_delivery_latency_seconds", "controller_runtime_reconcile_total"} {
		if !found[name] {
			t.Errorf("metric %s is not registered", name)
		}
	}
}

// The estimate counts what a user's metadata adds: an event applied with kubectl
// carries itself again in last-applied-configuration.
func TestFootprintEstimateCountsMetadata(t *testing.T) {
	ev := newEvent("shop", "order-1", "order.created", `{"order":1}`)
	plain := eventBytes(ev)
	ev.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 4000)}
	if got := eventBytes(ev) - plain; got < 4000 {
		t.Fatalf("a 4,000-byte annotation adds %d bytes to the estimate", got)
	}
	d := directDelivery("shop", "d", "acme")
	plainD := deliveryBytes(d)
	d.Labels = map[string]string{"customer": "acme"}
	if deliveryBytes(d) <= plainD {
		t.Fatal("labels add nothing to a delivery's estimate")
	}
}
