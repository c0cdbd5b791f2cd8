package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/deliverystate"
	"github.com/hookline/hookline/internal/testenv"
)

// The contract's metrics, on a manager of its own so that they count this test alone,
// with the history of a delivery that needed more than ten attempts trimmed to the
// last ten.
func TestMetricsAndHistoryLimit(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	conf := testConfig()
	conf.Metrics = NewMetrics()
	conf.Retention.Interval = 200 * time.Millisecond
	ns := "own-16"
	ownNamespace(t, ns, conf)
	recv := newReceiver(t, http.StatusInternalServerError)
	ep := newEndpoint(ns, "ep", recv.URL+"/", "*")
	twelve := int32(12)
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 0}}, MaxAttempts: &twelve}
	createAll(ctx, t, ep)
	waitReady(t, ns, "ep", hooklinev1.ReasonActive)
	createAll(ctx, t, directDelivery(ns, "d", "ep"))
	d := waitDeliveryPhase(t, ns, "d", hooklinev1.PhaseExhausted, 20*time.Second)
	if d.Status.Attempts != 12 || len(d.Status.History) != deliverystate.HistoryLimit || len(recv.got()) != 12 {
		t.Fatalf("attempts %d, history %d, requests %d", d.Status.Attempts, len(d.Status.History), len(recv.got()))
	}
	if !d.Status.History[deliverystate.HistoryLimit-1].Time.After(d.Status.History[0].Time.Time) {
		t.Fatal("history is not newest last")
	}

	// Exact values: the counters move once the status write is answered, a moment
	// after the test can read it; the footprint on the pruner's next walk.
	reg := prometheus.NewRegistry()
	if err := conf.Metrics.Register(reg); err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"hookline_delivery_attempts_total,retry":              12,
		"hookline_deliveries_completed_total,Exhausted":       1,
		"hookline_delivery_attempt_duration_seconds":          12, // observations
		"hookline_retained_objects,WebhookDelivery,Exhausted": 1,
		"hookline_retained_objects,WebhookEvent,Complete":     0,
		"hookline_pruned_total,WebhookDelivery,Age":           0,
		"hookline_delivery_latency_seconds":                   0, // a direct delivery has no event to measure from
		"hookline_retained_objects,WebhookDelivery,Pending":   0,
		"hookline_deliveries_completed_total,Succeeded":       0,
		"hookline_delivery_attempts_total,success":            0,
		"hookline_retained_objects,WebhookEvent,InProgress":   0,
		"hookline_deliveries_completed_total,Failed":          0,
		"hookline_retained_objects,WebhookDelivery,Succeeded": 0,
		"hookline_delivery_attempts_total,invalid":            0,
	}
	var values map[string]float64
	eventually(t, 5*time.Second, "the manager's metrics count this test's delivery", func(context.Context) (bool, string, error) {
		var err error
		if values, err = gathered(reg); err != nil {
			return false, "", err
		}
		for name, v := range want {
			if values[name] != v {
				return false, fmt.Sprintf("%s = %v, want %v", name, values[name], v), nil
			}
		}
		return true, "", nil
	})
	// Nothing else was counted: no attempt of another result.
	for name, v := range values {
		if strings.HasPrefix(name, "hookline_delivery_attempts_total,") && name != "hookline_delivery_attempts_total,retry" && v != 0 {
			t.Errorf("%s = %v, want none", name, v)
		}
	}
	if values["hookline_retained_bytes"] < 500 {
		t.Errorf("hookline_retained_bytes %v for an exhausted delivery with ten attempts", values["hookline_retained_bytes"])
	}

	// controller-runtime's own metrics stay on its registry, which main serves.
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		found = found || f.GetName() == "controller_runtime_reconcile_total"
	}
	if !found {
		t.Error("controller_runtime_reconcile_total is not registered")
	}
}

// gathered flattens a registry: "name,label values..." -> value (a histogram's count).
func gathered(reg *prometheus.Registry) (map[string]float64, error) {
	families, err := reg.Gather()
	if err != nil {
		return nil, err
	}
	values := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				name += "," + l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				values[name] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				values[name] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				values[name] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return values, nil
}

// The estimate counts what a user's metadata adds: an event applied with kubectl
// carries itself again in last-applied-configuration.
func TestFootprintEstimateCountsMetadata(t *testing.T) {
	testenv.Needs(t)
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
