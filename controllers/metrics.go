package controllers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
)

var (
	attemptsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hookline_delivery_attempts_total",
		Help: "Delivery attempts by result: success, retry, gone, blocked, invalid.",
	}, []string{"result"})
	completedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hookline_deliveries_completed_total",
		Help: "Deliveries that finished, by phase: Succeeded, Failed, Exhausted.",
	}, []string{"phase"})
	attemptDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "hookline_delivery_attempt_duration_seconds",
		Help:    "Duration of one HTTP attempt.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
	})
	deliveryLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "hookline_delivery_latency_seconds",
		Help:    "From the event's creation to its successful delivery (creation time has one-second resolution).",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 20),
	})
)

func init() {
	metrics.Registry.MustRegister(attemptsTotal, completedTotal, attemptDuration, deliveryLatency, prunedTotal, retained,
		archivedTotal, archiveErrorsTotal, archiveUp)
}

var outcomeLabels = map[delivery.Outcome]string{
	delivery.Succeeded: "success", delivery.Retry: "retry", delivery.Gone: "gone",
	delivery.Blocked: "blocked", delivery.Invalid: "invalid",
}

func observeAttempt(res delivery.Result) {
	attemptsTotal.WithLabelValues(outcomeLabels[res.Outcome]).Inc()
	attemptDuration.Observe(res.Duration.Seconds())
}

func observeCompleted(phase hooklinev1.DeliveryPhase) {
	completedTotal.WithLabelValues(string(phase)).Inc()
}

// observeLatency records the time from an event's creation to its delivery.
func observeLatency(latency time.Duration) {
	deliveryLatency.Observe(latency.Seconds())
}
