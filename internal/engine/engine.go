// Package engine is what a delivery is, wherever it is stored: the endpoint's gate, its
// limits (per-endpoint share, rateLimit, adaptive concurrency), signing and sending,
// the outcome's classification into the next status (internal/deliverystate) and the
// endpoint's health record. The two stores' drivers — the WebhookDelivery reconciler
// (the etcd store) and the queue sender (the PostgreSQL store) — hand it a Job and
// store the Result their own way; it knows nothing of where deliveries live.
package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/backoff"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/deliverystate"
	"github.com/hookline/hookline/internal/signing"
	"github.com/hookline/hookline/internal/throttle"
)

// Health is the endpoints' health record: Record says whether the endpoint's status
// must be written now (a disable), Flush writes it.
type Health interface {
	Record(ep *hooklinev1.WebhookEndpoint, outcome delivery.Outcome, at time.Time) bool
	Flush(ctx context.Context, ep *hooklinev1.WebhookEndpoint) error
}

// Metrics are what the engine observes of its attempts.
type Metrics interface {
	ObserveAttempt(delivery.Result)
	ObserveLatency(time.Duration)
}

// EventRecorder tells a change on an object (events.EventRecorder's shape).
type EventRecorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// Waits before a delivery that could not be attempted is looked at again.
const (
	// WaitReady: the endpoint is paused or not ready, or the cluster did not answer.
	WaitReady = 5 * time.Second
	// WaitSecret: a Secret the attempt needs is missing or not usable yet.
	WaitSecret = time.Minute
)

// Engine makes attempts. Its fields are set once; it is safe for concurrent use.
type Engine struct {
	Secrets  SecretReader
	Sender   delivery.Sender
	Throttle *throttle.Throttle
	Health   Health
	Metrics  Metrics
	Events   EventRecorder // nil: concurrency changes are not told
	Clock    clock.Clock
	// EndpointShare is the in-flight cap of an endpoint that sets no maxInFlight.
	EndpointShare int
	// Replicas, when set, is how many replicas deliver the same endpoints: an
	// endpoint's limits are divided among them.
	Replicas func() int
	// Admit asks the throttle for a slot; nil: at once, without waiting.
	Admit func(ctx context.Context, key, caller string, lim throttle.Limits) throttle.Decision
}

// Job is one due attempt of a delivery.
type Job struct {
	Status     hooklinev1.WebhookDeliveryStatus
	Generation int64
	// Endpoint is the delivery's endpoint; nil: it does not exist (EndpointName says
	// which).
	Endpoint     *hooklinev1.WebhookEndpoint
	EndpointName string
	// Caller names the delivery to the throttle.
	Caller string
	// Message loads what is sent; a *BadPayload refuses the delivery.
	Message func(context.Context) (Message, error)
	// Keys loads the endpoint's signing keys; a *Wait waits for them.
	Keys func(context.Context) ([]signing.Key, error)
}

// Result is what became of a Job.
type Result struct {
	// Status is the delivery's next status.
	Status hooklinev1.WebhookDeliveryStatus
	// Sent is the receiver's answer when a request was sent; nil otherwise.
	Sent *delivery.Result
	// At is when the request was sent.
	At time.Time
	// Deferred: the endpoint's limits admitted no attempt; Status is unchanged. Come
	// back after Retry (0: when the throttle wakes the caller).
	Deferred bool
	// Gated: the endpoint takes no deliveries now (paused, or not ready); a change of
	// the endpoint brings the delivery back (or Retry, where nothing watches it).
	Gated bool
	// Retry is when an unfinished delivery is due again, from now.
	Retry time.Duration
}

// Attempt makes at most one attempt of job. An error is the cluster's (reading a
// Secret or an event): nothing was sent, try again later.
func (e *Engine) Attempt(ctx context.Context, job Job) (Result, error) {
	now := e.Clock.Now()
	st, gen, ep := job.Status, job.Generation, job.Endpoint
	if st.Phase == "" {
		st.Phase = hooklinev1.PhasePending
	}
	switch {
	case ep == nil || ep.DeletionTimestamp != nil:
		return Result{Status: deliverystate.Fail(st, gen, hooklinev1.ReasonEndpointDeleted, fmt.Sprintf("WebhookEndpoint %s does not exist", job.EndpointName), now)}, nil
	case ep.Disabled():
		return Result{Status: deliverystate.Fail(st, gen, hooklinev1.ReasonEndpointDisabled, fmt.Sprintf("WebhookEndpoint %s is disabled (%s)", ep.Name, ep.Status.DisabledReason), now)}, nil
	case !ep.AcceptsDeliveries():
		why := "is paused"
		if !ep.Spec.Paused {
			why = "is not ready"
			if reason := ep.ReadyReason(); reason != "" {
				why += " (" + reason + ")"
			}
		}
		return Result{Status: deliverystate.Wait(st, gen, fmt.Sprintf("waiting: WebhookEndpoint %s %s", ep.Name, why), now), Gated: true, Retry: WaitReady}, nil
	}
	key := ep.Namespace + "/" + ep.Name
	lim := e.Limits(ep)
	admission := e.admit(ctx, key, job.Caller, lim, now)
	if !admission.Admitted() {
		return Result{Status: job.Status, Deferred: true, Retry: admission.RetryAfter}, nil
	}
	defer admission.Release()
	now = e.Clock.Now() // the attempt's time, after any wait
	msg, err := job.Message(ctx)
	var bad *BadPayload
	if errors.As(err, &bad) {
		return Result{Status: deliverystate.Fail(st, gen, hooklinev1.ReasonBadPayload, bad.Msg, now)}, nil
	}
	if err != nil {
		return Result{}, err
	}
	keys, err := job.Keys(ctx)
	var req delivery.Request
	var signature string
	if err == nil {
		req, signature, err = BuildRequest(ctx, e.Secrets, ep, msg, keys, now)
	}
	var wait *Wait
	switch {
	case errors.As(err, &wait):
		return Result{Status: deliverystate.Wait(st, gen, "waiting: "+wait.Msg, now), Retry: WaitSecret}, nil
	case err != nil:
		return Result{}, err
	}
	res := e.Sender.Send(ctx, req)
	admission.Release() // the endpoint's in-flight slot is free once the receiver has answered
	e.Metrics.ObserveAttempt(res)
	next := deliverystate.Next(st, gen, deliverystate.Attempt{At: now, Result: res, MessageID: msg.ID, Signature: signature},
		deliverystate.Policy{Retry: backoff.NewPolicy(ep.RetrySchedule(), ep.MaxAttempts())}, e.Clock.Now())
	if next.Phase == hooklinev1.PhaseSucceeded {
		e.Metrics.ObserveLatency(e.Clock.Since(msg.CreatedAt))
	}
	if res.Outcome != delivery.Invalid {
		e.adapt(ep, res.TimedOut, lim)
	}
	out := Result{Status: next, Sent: &res, At: now}
	if !next.Phase.Finished() && next.NextAttemptTime != nil {
		out.Retry = next.NextAttemptTime.Sub(e.Clock.Now())
	}
	return out, nil
}

// Recorded acts on a sent attempt once its outcome is stored: the endpoint's health
// record (a disable is written at once, the rest in batches).
func (e *Engine) Recorded(ctx context.Context, ep *hooklinev1.WebhookEndpoint, res Result) error {
	if res.Sent == nil || !e.Health.Record(ep, res.Sent.Outcome, res.At) {
		return nil
	}
	return e.Health.Flush(ctx, ep)
}

func (e *Engine) admit(ctx context.Context, key, caller string, lim throttle.Limits, now time.Time) throttle.Decision {
	if e.Admit != nil {
		return e.Admit(ctx, key, caller, lim)
	}
	return e.Throttle.Acquire(key, caller, lim, now)
}

// Limits are the endpoint's rateLimit, with the default share when it sets no
// maxInFlight, divided among the replicas (at least one each), so that a receiver sees
// at most its limits whatever the number of replicas (unless a limit is below it).
func (e *Engine) Limits(ep *hooklinev1.WebhookEndpoint) throttle.Limits {
	var lim throttle.Limits
	if rl := ep.Spec.RateLimit; rl != nil {
		if rl.PerSecond != nil {
			lim.PerSecond = int(*rl.PerSecond)
		}
		if rl.MaxInFlight != nil {
			lim.MaxInFlight = int(*rl.MaxInFlight)
		}
	}
	n := 1
	if e.Replicas != nil {
		n = max(e.Replicas(), 1)
	}
	if lim.MaxInFlight > 0 {
		lim.MaxInFlight = max(lim.MaxInFlight/n, 1)
	} else {
		lim.MaxInFlight = max(e.EndpointShare, 1) // each replica's own share
	}
	if lim.PerSecond > 0 {
		lim.PerSecond = max(lim.PerSecond/n, 1)
	}
	return lim
}

// adapt feeds an attempt's outcome to the throttle: an endpoint whose attempts time
// out gets fewer at once, and more again as it answers. Each step down and the end of
// a reduction are told on the endpoint, once each.
func (e *Engine) adapt(ep *hooklinev1.WebhookEndpoint, timedOut bool, lim throttle.Limits) {
	reduced, change := e.Throttle.Outcome(ep.Namespace+"/"+ep.Name, timedOut, lim)
	if e.Events == nil {
		return
	}
	switch change {
	case throttle.Reduced:
		e.Events.Eventf(ep, nil, corev1.EventTypeWarning, hooklinev1.EventConcurrencyReduced, "Deliver",
			"attempts time out: at most %d in flight until the endpoint answers again", reduced)
	case throttle.Restored:
		e.Events.Eventf(ep, nil, corev1.EventTypeNormal, hooklinev1.EventConcurrencyRestored, "Deliver",
			"the endpoint answers again: its in-flight limit is restored")
	}
}
