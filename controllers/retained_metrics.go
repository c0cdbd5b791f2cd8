package controllers

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/deliverystate"
	"github.com/hookline/hookline/internal/retention"
)

// What hookline keeps in the API server (and so in etcd), counted by the pruner from
// the manager's cache on each of its walks.
var (
	retainedObjectsDesc = prometheus.NewDesc("hookline_retained_objects",
		"WebhookEvents and WebhookDeliveries in the API server, by kind and phase (events: Complete or InProgress).",
		[]string{"kind", "phase"}, nil)
	retainedBytesDesc = prometheus.NewDesc("hookline_retained_bytes",
		"Estimated bytes the retained WebhookEvents and WebhookDeliveries take as etcd values: a measured size per object plus what varies (payload, responses, messages); an unfinished delivery counts at least as much as its history can grow to.",
		nil, nil)
	retainedByNamespaceDesc = prometheus.NewDesc("hookline_retained_bytes_by_namespace",
		"hookline_retained_bytes by namespace: the budget is shared equally among the namespaces listed, and those over their share are held back first.",
		[]string{"namespace"}, nil)
	budgetBytesDesc = prometheus.NewDesc("hookline_etcd_budget_bytes",
		"The ceiling on hookline_retained_bytes (--max-etcd-bytes; 0: none).", nil, nil)
	heldEventsDesc = prometheus.NewDesc("hookline_fanout_held_events",
		"WebhookEvents whose fan-out waits for room in the etcd budget (backpressure).", nil, nil)
)

// Measured with make bench (etcd values, managedFields included, a 45-byte payload):
// a fanned-out delivery after one attempt takes 2040 bytes, its event 1523. What
// varies is added to these.
const (
	deliveryBaseBytes = 2040
	eventBaseBytes    = 1523 - 45
	historyEntryBytes = 120 // an attempt record without its response and error
	// liveDeliveryBytes is what an unfinished delivery is counted as, at least: the
	// size its history can grow to with short answers and errors. The budget then
	// holds back new fan-outs before the retries of those admitted outgrow it.
	liveDeliveryBytes = deliveryBaseBytes + (deliverystate.HistoryLimit-1)*(historyEntryBytes+128)
)

// footprint is what one walk of the cache counted.
type footprint struct {
	deliveries map[hooklinev1.DeliveryPhase]int
	complete   int
	inProgress int
	bytes      int64
	// notFannedOut are the bytes of the events whose fan-out has not run (new or held).
	notFannedOut int64
	// byNamespace are the bytes by namespace; events, the events seen (fanned out or not).
	byNamespace map[string]int64
	events      map[string]bool
}

// count is what the budget's gate learns of the walk.
func (f *footprint) count() retention.Count {
	return retention.Count{Bytes: f.bytes, Unfanned: f.notFannedOut, ByNamespace: f.byNamespace, Events: f.events}
}

// retainedCollector reports the footprint the pruner counted last.
type retainedCollector struct {
	last atomic.Pointer[footprint]
	gate atomic.Pointer[retention.Gate]
}

func (c *retainedCollector) publish(f *footprint, g *retention.Gate) {
	c.last.Store(f)
	if g != nil {
		c.gate.Store(g)
	}
}

func (c *retainedCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- retainedObjectsDesc
	ch <- retainedBytesDesc
	ch <- retainedByNamespaceDesc
	ch <- budgetBytesDesc
	ch <- heldEventsDesc
}

func (c *retainedCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.last.Load()
	if f == nil {
		return
	}
	for phase, n := range f.deliveries {
		ch <- prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(n), "WebhookDelivery", string(phase))
	}
	ch <- prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(f.complete), "WebhookEvent", "Complete")
	ch <- prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(f.inProgress), "WebhookEvent", "InProgress")
	ch <- prometheus.MustNewConstMetric(retainedBytesDesc, prometheus.GaugeValue, float64(f.bytes))
	for ns, n := range f.byNamespace {
		ch <- prometheus.MustNewConstMetric(retainedByNamespaceDesc, prometheus.GaugeValue, float64(n), ns)
	}
	if g := c.gate.Load(); g != nil {
		ch <- prometheus.MustNewConstMetric(budgetBytesDesc, prometheus.GaugeValue, float64(g.Max()))
		ch <- prometheus.MustNewConstMetric(heldEventsDesc, prometheus.GaugeValue, float64(g.Holding()))
	}
}

// eventBytes estimates an event's etcd value without encoding it.
func eventBytes(e *hooklinev1.WebhookEvent) int64 {
	return eventBaseBytes + int64(len(e.Spec.Payload.Raw)+metadataBytes(e.Labels)+metadataBytes(e.Annotations))
}

// metadataBytes is what labels or annotations add: kubectl apply's
// last-applied-configuration alone repeats a whole event, its payload included.
func metadataBytes(m map[string]string) int {
	n := 0
	for k, v := range m {
		n += len(k) + len(v) + 6 // quotes, colon, comma
	}
	return n
}

// deliveryBytes estimates a delivery's etcd value without encoding it.
func deliveryBytes(d *hooklinev1.WebhookDelivery) int {
	n := deliveryBaseBytes + metadataBytes(d.Labels) + metadataBytes(d.Annotations)
	if d.Spec.Payload != nil {
		n += len(d.Spec.Payload.Raw)
	}
	for i, h := range d.Status.History {
		if i > 0 {
			n += historyEntryBytes
		}
		n += len(h.Response) + len(h.Error)
	}
	for _, c := range d.Status.Conditions {
		n += len(c.Message)
	}
	return n
}
