package controllers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
)

// Metrics are one manager's metrics. Each manager builds its own (NewMetrics), so
// that managers in one process (tests) count apart; main registers the manager's on
// controller-runtime's registry, which /metrics serves.
type Metrics struct {
	attempts        *prometheus.CounterVec
	completed       *prometheus.CounterVec
	attemptDuration prometheus.Histogram
	latency         prometheus.Histogram
	pruned          *prometheus.CounterVec
	retained        *retainedCollector
	archived        prometheus.Counter
	archiveErrors   prometheus.Counter
	archiveUp       prometheus.Gauge
	disabled        *prometheus.CounterVec
	replicas        prometheus.Gauge
	budgetRefusals  *prometheus.CounterVec
}

// NewMetrics builds a manager's metrics, registered nowhere yet.
func NewMetrics() *Metrics {
	return &Metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookline_delivery_attempts_total",
			Help: "Delivery attempts by result: success, retry, gone, blocked, invalid.",
		}, []string{"result"}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookline_deliveries_completed_total",
			Help: "Deliveries that finished, by phase: Succeeded, Failed, Exhausted.",
		}, []string{"phase"}),
		attemptDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hookline_delivery_attempt_duration_seconds",
			Help:    "Duration of one HTTP attempt.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hookline_delivery_latency_seconds",
			Help:    "From the event's creation to its successful delivery (creation time has one-second resolution).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 20),
		}),
		pruned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookline_pruned_total",
			Help: "Objects deleted by the manager's retention, by kind and reason (Age, Count, Budget).",
		}, []string{"kind", "reason"}),
		retained: &retainedCollector{},
		archived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hookline_archived_deliveries_total",
			Help: "Finished deliveries written to the archive before they were pruned.",
		}),
		archiveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hookline_archive_errors_total",
			Help: "Archive writes that failed; the deliveries they held were not pruned.",
		}),
		archiveUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hookline_archive_up",
			Help: "1 when the last archive write succeeded, 0 when it failed (nothing is pruned until it succeeds again).",
		}),
		replicas: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hookline_delivery_replicas",
			Help: "Replicas delivering from the PostgreSQL store, as this one last counted them (endpoint limits are divided among them); 0 with the etcd store.",
		}),
		disabled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hookline_endpoints_disabled_total",
			Help: "Endpoints disabled automatically, by reason: EndpointGone (410), FailingTooLong (spec.autoDisableAfter).",
		}, []string{"reason"}),
		budgetRefusals: budgetRefusalsVec(),
	}
}

// collectors are every metric of the manager, for registration.
func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.attempts, m.completed, m.attemptDuration, m.latency, m.pruned, m.retained, m.budgetRefusals,
		m.archived, m.archiveErrors, m.archiveUp, m.disabled, m.replicas}
}

// Register registers the metrics on r (controller-runtime's metrics.Registry in main).
func (m *Metrics) Register(r prometheus.Registerer) error {
	for _, c := range m.collectors() {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

var outcomeLabels = map[delivery.Outcome]string{
	delivery.Succeeded: "success", delivery.Retry: "retry", delivery.Gone: "gone",
	delivery.Blocked: "blocked", delivery.Invalid: "invalid",
}

// ObserveAttempt counts an attempt by outcome, with its duration.
func (m *Metrics) ObserveAttempt(res delivery.Result) {
	m.attempts.WithLabelValues(outcomeLabels[res.Outcome]).Inc()
	m.attemptDuration.Observe(res.Duration.Seconds())
}

// ObserveCompleted counts a delivery that finished, by phase.
func (m *Metrics) ObserveCompleted(phase hooklinev1.DeliveryPhase) {
	m.completed.WithLabelValues(string(phase)).Inc()
}

// ObserveLatency records the time from an event's creation to its delivery.
func (m *Metrics) ObserveLatency(latency time.Duration) {
	m.latency.Observe(latency.Seconds())
}

// SetReplicas is how many replicas deliver from the PostgreSQL queue.
func (m *Metrics) SetReplicas(n int) { m.replicas.Set(float64(n)) }
