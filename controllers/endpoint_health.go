package controllers

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
)

// healthFlushInterval bounds how often an endpoint's failure record is written: a busy
// endpoint costs at most one endpoint write per interval, not one per attempt.
const healthFlushInterval = time.Second

// shutdownFlushTimeout bounds the last write of pending records when the manager stops.
const shutdownFlushTimeout = 5 * time.Second

// successRefresh bounds how often a healthy endpoint's lastSuccessTime is rewritten.
const successRefresh = time.Minute

// healthDelta is what happened to an endpoint since its record was last written.
type healthDelta struct {
	reset        bool      // a success: the failures before it no longer count
	lastSuccess  time.Time // the latest success
	failures     int32     // failures since the reset (or since the last write)
	failingSince time.Time // the first of those failures
	lastFailure  time.Time
	gone         bool // a 410: disable now
}

// endpointHealth is the health recorder, the one writer of an endpoint's health fields
// (see WebhookEndpointStatus): it collects attempt outcomes per endpoint and writes
// them in batches (consecutiveFailures, lastSuccessTime, lastFailureTime,
// failingSince), disables the endpoint (410 Gone, or failing for autoDisableAfter),
// and enables it again (lastHandledEnable) for the enable reconciler.
type endpointHealth struct {
	client  client.Client // writes status
	live    client.Reader // reads the endpoint as it is now
	metrics *Metrics
	mu      sync.Mutex
	pending map[types.NamespacedName]*healthDelta
	// healthySince remembers, per endpoint, the success this recorder last wrote with
	// no failure after it: a sender reading a copy of the endpoint from before that
	// write does not write the same news again within successRefresh.
	healthySince map[types.NamespacedName]time.Time
}

func newEndpointHealth(c client.Client, live client.Reader, metrics *Metrics) *endpointHealth {
	return &endpointHealth{client: c, live: live, metrics: metrics, pending: map[types.NamespacedName]*healthDelta{},
		healthySince: map[types.NamespacedName]time.Time{}}
}

// Record notes an attempt's outcome. It reports whether the record should be written at
// once (the endpoint must be disabled).
func (h *endpointHealth) Record(ep *hooklinev1.WebhookEndpoint, outcome delivery.Outcome, at time.Time) bool {
	if outcome == delivery.Invalid {
		return false // nothing the receiver did
	}
	key := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	if outcome == delivery.Succeeded && !h.hasPending(ep) && (!needsSuccessWrite(&ep.Status, at) || h.recentlyHealthy(key, at)) {
		return false // healthy and recently recorded: nothing to write
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if outcome != delivery.Succeeded {
		delete(h.healthySince, key) // the next success is news again
	}
	d := h.pending[key]
	if d == nil {
		d = &healthDelta{}
		h.pending[key] = d
	}
	switch outcome {
	case delivery.Succeeded:
		*d = healthDelta{reset: true, lastSuccess: at, gone: d.gone, lastFailure: d.lastFailure}
	default: // Retry, Blocked, Gone
		d.failures++
		d.lastFailure = at
		if d.failingSince.IsZero() {
			d.failingSince = at
		}
		d.gone = d.gone || outcome == delivery.Gone
	}
	limit := ep.Spec.AutoDisableAfter
	failingSince := d.failingSince
	if !d.reset && ep.Status.FailingSince != nil {
		failingSince = ep.Status.FailingSince.Time
	}
	tooLong := limit != nil && d.failures > 0 && at.Sub(failingSince) >= limit.Duration
	return d.gone || tooLong
}

// recentlyHealthy: this recorder wrote a success for the endpoint within
// successRefresh, and no failure since.
func (h *endpointHealth) recentlyHealthy(key types.NamespacedName, at time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	since, ok := h.healthySince[key]
	return ok && at.Sub(since) < successRefresh
}

func (h *endpointHealth) hasPending(ep *hooklinev1.WebhookEndpoint) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.pending[types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}]
	return ok
}

// NeedLeaderElection: only the leader sends, so only the leader has outcomes to write.
func (h *endpointHealth) NeedLeaderElection() bool { return true }

// Start writes the pending records every healthFlushInterval until ctx ends (a
// manager Runnable; it runs on the leader only).
func (h *endpointHealth) Start(ctx context.Context) error {
	t := time.NewTicker(healthFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// What is pending is written before the manager stops, for as long as a
			// Pod's termination grace allows, not longer.
			flushCtx, cancel := context.WithTimeout(context.Background(), shutdownFlushTimeout)
			h.flushAll(flushCtx)
			cancel()
			return nil
		case <-t.C:
			h.flushAll(ctx)
		}
	}
}

func (h *endpointHealth) flushAll(ctx context.Context) {
	h.mu.Lock()
	batch := h.pending
	h.pending = map[types.NamespacedName]*healthDelta{}
	h.mu.Unlock()
	for key, d := range batch {
		if err := h.write(ctx, key, d); err != nil {
			logf.FromContext(ctx).Error(err, "update endpoint health", "endpoint", key)
		}
	}
}

// Flush writes one endpoint's pending record now.
func (h *endpointHealth) Flush(ctx context.Context, ep *hooklinev1.WebhookEndpoint) error {
	key := types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}
	h.mu.Lock()
	d := h.pending[key]
	delete(h.pending, key)
	h.mu.Unlock()
	if d == nil {
		return nil
	}
	return h.write(ctx, key, d)
}

// write applies a delta to the endpoint as it is in the API server, with an optimistic
// lock (the endpoint controller writes other status fields concurrently).
func (h *endpointHealth) write(ctx context.Context, key types.NamespacedName, d *healthDelta) error {
	return retry.OnError(retry.DefaultRetry, isStaleWrite, func() error {
		var ep hooklinev1.WebhookEndpoint
		if err := h.live.Get(ctx, key, &ep); err != nil {
			return client.IgnoreNotFound(err)
		}
		before := ep.DeepCopy()
		st := &ep.Status
		if d.reset {
			st.ConsecutiveFailures, st.FailingSince = 0, nil
			t := metav1.NewTime(d.lastSuccess)
			st.LastSuccessTime = &t
		}
		if !d.lastFailure.IsZero() && (st.LastFailureTime == nil || d.lastFailure.After(st.LastFailureTime.Time)) {
			t := metav1.NewTime(d.lastFailure)
			st.LastFailureTime = &t
		}
		if d.failures > 0 {
			st.ConsecutiveFailures += d.failures
			if st.FailingSince == nil {
				since := metav1.NewTime(d.failingSince)
				st.FailingSince = &since
			}
		}
		if st.DisabledReason == "" {
			if d.gone {
				st.DisabledReason = hooklinev1.DisabledEndpointGone
			} else if limit := ep.Spec.AutoDisableAfter; limit != nil && st.FailingSince != nil && d.failures > 0 &&
				d.lastFailure.Sub(st.FailingSince.Time) >= limit.Duration {
				st.DisabledReason = hooklinev1.DisabledFailingTooLong
			}
			if st.DisabledReason != "" {
				st.DisabledGeneration = ep.Generation
			}
		}
		if err := h.patch(ctx, before, &ep); err != nil {
			return err
		}
		if d.reset && d.failures == 0 {
			h.mu.Lock()
			h.healthySince[key] = d.lastSuccess
			h.mu.Unlock()
		}
		if before.Status.DisabledReason == "" && st.DisabledReason != "" {
			logf.FromContext(ctx).V(1).Info("disabled", "endpoint", key, "reason", st.DisabledReason, "consecutiveFailures", st.ConsecutiveFailures)
			h.metrics.disabled.WithLabelValues(st.DisabledReason).Inc()
		}
		return nil
	})
}

// patch applies the health fields of ep's status (the recorder's own; the endpoint
// controller owns the rest), with an optimistic lock on what was read.
func (h *endpointHealth) patch(ctx context.Context, before, ep *hooklinev1.WebhookEndpoint) error {
	_, err := applyEndpointStatus(ctx, h.client, before, ep, fieldManagerHealth)
	return err
}

// enable acts on the endpoint's enable token and spec: a new hookline.dev/enable
// token is recorded, and a disabled endpoint is enabled again, with a clean failure
// record, on a new token or on any change of its spec after it was disabled. It
// returns why it enabled the endpoint, or "".
func (h *endpointHealth) enable(ctx context.Context, key types.NamespacedName) (string, error) {
	why := ""
	err := retry.OnError(retry.DefaultRetry, isStaleWrite, func() error {
		why = ""
		var ep hooklinev1.WebhookEndpoint
		if err := h.live.Get(ctx, key, &ep); err != nil {
			return client.IgnoreNotFound(err)
		}
		before := ep.DeepCopy()
		why = enableReason(&ep)
		st := &ep.Status
		if token := ep.Annotations[hooklinev1.AnnotationEnable]; token != "" {
			st.LastHandledEnable = token
		}
		if why != "" {
			h.mu.Lock()
			delete(h.pending, key) // failures from before the enable no longer count
			h.mu.Unlock()
			st.DisabledReason, st.DisabledGeneration = "", 0
			st.ConsecutiveFailures, st.FailingSince = 0, nil
		}
		return h.patch(ctx, before, &ep)
	})
	return why, err
}

// enableReason says why a disabled endpoint is to be enabled again, or "".
func enableReason(ep *hooklinev1.WebhookEndpoint) string {
	st := &ep.Status
	if st.DisabledReason == "" {
		return ""
	}
	if token := ep.Annotations[hooklinev1.AnnotationEnable]; token != "" && token != st.LastHandledEnable {
		return "the " + hooklinev1.AnnotationEnable + " annotation"
	}
	disabledAt := st.DisabledGeneration
	if disabledAt == 0 {
		// Disabled by a version that did not record the generation: the Ready
		// condition written while disabled says which generation it saw.
		if ready := meta.FindStatusCondition(st.Conditions, hooklinev1.ConditionReady); ready != nil && ready.Reason == hooklinev1.ReasonDisabled {
			disabledAt = ready.ObservedGeneration
		} else {
			return ""
		}
	}
	if ep.Generation > disabledAt {
		return "a change of its spec"
	}
	return ""
}

func needsSuccessWrite(st *hooklinev1.WebhookEndpointStatus, now time.Time) bool {
	return st.ConsecutiveFailures != 0 || st.FailingSince != nil || st.LastSuccessTime == nil ||
		now.Sub(st.LastSuccessTime.Time) >= successRefresh
}
