package controllers

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/hookline/hookline/internal/retention"
)

// AdmissionBudget is the etcd budget as the admission webhook asks it: a new
// WebhookEvent (or direct WebhookDelivery) costs what it will take in etcd, and is
// refused while the budget is full for its namespace.
type AdmissionBudget struct {
	Gate    *retention.Gate
	Metrics *Metrics
}

// AdmitCreate implements admission.Budget.
func (b AdmissionBudget) AdmitCreate(kind, namespace, name string, payloadBytes int) (bool, string) {
	cost := int64(eventBaseBytes + payloadBytes)
	event := name
	if kind == "WebhookDelivery" {
		cost, event = int64(liveDeliveryBytes+payloadBytes), ""
	}
	d := b.Gate.AdmitCreate(namespace, event, cost)
	if !d.Admitted {
		b.Metrics.budgetRefusals.WithLabelValues(namespace).Inc()
	}
	return d.Admitted, d.Explain()
}

// budgetCounter keeps the gate's count up to date on a replica that is not the
// leader, so that the admission webhook it serves judges by a recent count too; once
// the replica leads, the pruner's walks count.
type budgetCounter struct {
	pruner  *Pruner
	elected <-chan struct{}
}

// NeedLeaderElection: it runs on every replica, until this one leads.
func (c *budgetCounter) NeedLeaderElection() bool { return false }

func (c *budgetCounter) Start(ctx context.Context) error {
	if !c.pruner.Cache.WaitForCacheSync(ctx) {
		return nil
	}
	interval := c.pruner.Retention.Interval
	if interval <= 0 {
		interval = DefaultPruneInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		takenAt := time.Now()
		deliveries, events, err := c.pruner.snapshot(ctx)
		if err == nil {
			_, _, fp := c.pruner.units(deliveries, events)
			c.pruner.Gate.Observe(fp.count(), takenAt)
		} else if ctx.Err() == nil {
			logf.FromContext(ctx).Error(err, "counting the etcd budget")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.elected:
			return nil
		case <-t.C:
		}
	}
}

// budgetRefusalsVec counts creates refused at admission for the budget, by namespace.
func budgetRefusalsVec() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hookline_budget_refusals_total",
		Help: "WebhookEvents and WebhookDeliveries refused at admission (429) while hookline's etcd budget was full for their namespace.",
	}, []string{"namespace"})
}
