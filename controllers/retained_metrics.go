package controllers

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
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
		"Estimated bytes the retained WebhookEvents and WebhookDeliveries take as etcd values: a measured size per object plus what varies (payload, responses, messages).",
		nil, nil)
	prunedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hookline_pruned_total",
		Help: "Objects deleted by the manager's retention, by kind.",
	}, []string{"kind"})
)

// Measured with make bench (etcd values, managedFields included, a 45-byte payload):
// a fanned-out delivery after one attempt takes 2040 bytes, its event 1523. What
// varies is added to these.
const (
	deliveryBaseBytes = 2040
	eventBaseBytes    = 1523 - 45
	historyEntryBytes = 120 // an attempt record without its response and error
)

// retainedSource returns the objects to count; they are read, never changed.
type retainedSource func(ctx context.Context) ([]*hooklinev1.WebhookDelivery, []*hooklinev1.WebhookEvent, error)

// retainedCollector counts on scrape, from the source set last, at most once per
// retainedRefresh: a scrape never walks the cache twice in a row.
type retainedCollector struct {
	source atomic.Pointer[retainedSource]

	mu      sync.Mutex
	at      time.Time
	metrics []prometheus.Metric
}

// retainedRefresh bounds how often the cache is walked for the footprint metrics.
const retainedRefresh = 15 * time.Second

var retained = &retainedCollector{}

func (c *retainedCollector) use(s retainedSource) { c.source.Store(&s) }

// fromCache reads the informers' stores: pointers to the cached objects, with no list
// built and nothing copied. A cache of several namespaces has no single store; it is
// listed instead, without deep copies.
func fromCache(c cache.Cache) retainedSource {
	return func(ctx context.Context) ([]*hooklinev1.WebhookDelivery, []*hooklinev1.WebhookEvent, error) {
		di, err := c.GetInformer(ctx, &hooklinev1.WebhookDelivery{}, cache.BlockUntilSynced(false))
		if err != nil {
			return nil, nil, err
		}
		ei, err := c.GetInformer(ctx, &hooklinev1.WebhookEvent{}, cache.BlockUntilSynced(false))
		if err != nil {
			return nil, nil, err
		}
		ds, ok1 := di.(interface{ GetStore() toolscache.Store })
		es, ok2 := ei.(interface{ GetStore() toolscache.Store })
		if !ok1 || !ok2 {
			return listed(ctx, c)
		}
		var deliveries []*hooklinev1.WebhookDelivery
		for _, o := range ds.GetStore().List() {
			if d, ok := o.(*hooklinev1.WebhookDelivery); ok {
				deliveries = append(deliveries, d)
			}
		}
		var events []*hooklinev1.WebhookEvent
		for _, o := range es.GetStore().List() {
			if e, ok := o.(*hooklinev1.WebhookEvent); ok {
				events = append(events, e)
			}
		}
		return deliveries, events, nil
	}
}

// listed lists the cache without deep copies.
func listed(ctx context.Context, r client.Reader) ([]*hooklinev1.WebhookDelivery, []*hooklinev1.WebhookEvent, error) {
	var ds hooklinev1.WebhookDeliveryList
	var es hooklinev1.WebhookEventList
	if err := r.List(ctx, &ds, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, err
	}
	if err := r.List(ctx, &es, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, err
	}
	deliveries := make([]*hooklinev1.WebhookDelivery, len(ds.Items))
	for i := range ds.Items {
		deliveries[i] = &ds.Items[i]
	}
	events := make([]*hooklinev1.WebhookEvent, len(es.Items))
	for i := range es.Items {
		events[i] = &es.Items[i]
	}
	return deliveries, events, nil
}

func (c *retainedCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- retainedObjectsDesc
	ch <- retainedBytesDesc
}

func (c *retainedCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.metrics == nil || time.Since(c.at) >= retainedRefresh {
		if m, ok := c.count(); ok {
			c.metrics, c.at = m, time.Now()
		}
	}
	for _, m := range c.metrics {
		ch <- m
	}
}

func (c *retainedCollector) count() ([]prometheus.Metric, bool) {
	src := c.source.Load()
	if src == nil {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	deliveries, events, err := (*src)(ctx)
	if err != nil {
		return nil, false
	}
	var out []prometheus.Metric
	bytes := 0
	byPhase := map[string]int{}
	for _, d := range deliveries {
		phase := string(d.Status.Phase)
		if phase == "" {
			phase = string(hooklinev1.PhasePending)
		}
		byPhase[phase]++
		bytes += deliveryBytes(d)
	}
	for phase, n := range byPhase {
		out = append(out, prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(n), "WebhookDelivery", phase))
	}
	complete, inProgress := 0, 0
	for _, e := range events {
		if meta.IsStatusConditionTrue(e.Status.Conditions, hooklinev1.ConditionComplete) {
			complete++
		} else {
			inProgress++
		}
		bytes += eventBaseBytes + len(e.Spec.Payload.Raw)
	}
	out = append(out,
		prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(complete), "WebhookEvent", "Complete"),
		prometheus.MustNewConstMetric(retainedObjectsDesc, prometheus.GaugeValue, float64(inProgress), "WebhookEvent", "InProgress"),
		prometheus.MustNewConstMetric(retainedBytesDesc, prometheus.GaugeValue, float64(bytes)))
	return out, true
}

// deliveryBytes estimates a delivery's etcd value without encoding it.
func deliveryBytes(d *hooklinev1.WebhookDelivery) int {
	n := deliveryBaseBytes
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
