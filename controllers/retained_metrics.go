package controllers

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// What hookline keeps in the API server (and so in etcd), counted from the manager's
// cache when the metrics are scraped: the first measure of the footprint, before any
// budget acts on it.
var (
	retainedObjectsDesc = prometheus.NewDesc("hookline_retained_objects",
		"WebhookEvents and WebhookDeliveries in the API server, by kind and phase (events: Complete or InProgress).",
		[]string{"kind", "phase"}, nil)
	retainedBytesDesc = prometheus.NewDesc("hookline_retained_bytes",
		"Estimated bytes of the retained WebhookEvents and WebhookDeliveries as JSON, without managedFields (the manager's cache strips them; etcd keeps them).",
		nil, nil)
	prunedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hookline_pruned_total",
		Help: "Objects deleted by the manager's retention, by kind.",
	}, []string{"kind"})
)

// retainedCollector counts on scrape; it reads the cache of the manager set last.
type retainedCollector struct {
	reader atomic.Pointer[client.Reader]
}

var retained = &retainedCollector{}

func (c *retainedCollector) use(r client.Reader) { c.reader.Store(&r) }

func (c *retainedCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- retainedObjectsDesc
	ch <- retainedBytesDesc
}

func (c *retainedCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.reader.Load()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The cache's own objects, read without a copy and never changed here.
	var deliveries hooklinev1.WebhookDeliveryList
	var events hooklinev1.WebhookEventList
	if (*r).List(ctx, &deliveries, client.UnsafeDisableDeepCopy) != nil || (*r).List(ctx, &events, client.UnsafeDisableDeepCopy) != nil {
		return
	}
	bytes := 0
	byPhase := map[string]int{}
	for i := range deliveries.Items {
		d := &deliveries.Items[i]
		phase := string(d.Status.Phase)
		if phase == "" {
			phase = string(hooklinev1.PhasePending)
		}
		byPhase[phase]++
		bytes += jsonSize(d)
	}
	for phase, n := range byPhase {
		ch <- prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(n), "WebhookDelivery", phase)
	}
	complete, inProgress := 0, 0
	for i := range events.Items {
		e := &events.Items[i]
		if meta.IsStatusConditionTrue(e.Status.Conditions, hooklinev1.ConditionComplete) {
			complete++
		} else {
			inProgress++
		}
		bytes += jsonSize(e)
	}
	ch <- prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(complete), "WebhookEvent", "Complete")
	ch <- prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(inProgress), "WebhookEvent", "InProgress")
	ch <- prometheus.MustNewConstMetric(retainedBytesDesc, prometheus.GaugeValue, float64(bytes))
}

func jsonSize(o any) int {
	raw, err := json.Marshal(o)
	if err != nil {
		return 0
	}
	return len(raw)
}
