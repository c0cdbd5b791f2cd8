package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/backoff"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/deliverystate"
	"github.com/hookline/hookline/internal/fairqueue"
	"github.com/hookline/hookline/internal/signing"
	"github.com/hookline/hookline/internal/throttle"
)

// DeliveryReconciler signs, sends and retries WebhookDeliveries. Everything needed to
// resume after a restart is in the delivery's status; waits are RequeueAfter.
type DeliveryReconciler struct {
	client.Client
	Secrets       SecretReader
	Sender        delivery.Sender
	MaxConcurrent int
	// EndpointMaxInFlight is the in-flight cap of an endpoint that sets no maxInFlight.
	EndpointMaxInFlight int
	Recorder            eventRecorder
	Clock               clock.Clock
	Metrics             *Metrics

	// throttle enforces the endpoints' rateLimit; wakeups carries the deliveries it
	// wakes when an in-flight slot frees up.
	throttle *throttle.Throttle
	wakeups  chan event.GenericEvent
	// health is the health recorder: it batches the endpoints' failure records.
	health *endpointHealth
	// turns orders the work queue so that endpoints are served in turn.
	turns *fairqueue.Turns

	// attempted remembers, per delivery, how many attempts this process has recorded,
	// so that a reconcile reading a cache that has not caught up with our own write yet
	// does not send the message a second time.
	attempted sync.Map // types.UID -> int32
}

// +kubebuilder:rbac:groups=hookline.dev,resources=webhookdeliveries,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookdeliveries/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookendpoints/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookevents,verbs=get;list;watch

// Reconcile makes at most one attempt and schedules the next. The status is computed
// by the state machine (internal/deliverystate) and written once, when Reconcile
// returns.
func (r *DeliveryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	r.turns.Started(req.NamespacedName)
	var d hooklinev1.WebhookDelivery
	if err := r.Get(ctx, req.NamespacedName, &d); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	defer func() {
		if result.RequeueAfter > 0 {
			p := r.turns.Later()
			result.Priority = &p
		}
	}()
	if n, ok := r.attempted.Load(d.UID); ok {
		if n.(int32) > d.Status.Attempts {
			return ctrl.Result{RequeueAfter: 200 * time.Millisecond}, nil // our own write is not in the cache yet
		}
		r.attempted.Delete(d.UID) // the cache has caught up
	}
	before := d.DeepCopy()
	var attempted *attemptDone // set when a request was sent: acted on once it is recorded
	defer func() {
		// An invalid payload is refused before anything is sent.
		sent := attempted != nil && attempted.outcome != delivery.Invalid
		if err := r.patchStatus(ctx, before, &d, sent); err != nil {
			retErr = errors.Join(retErr, err)
			return
		}
		if attempted != nil {
			r.recorded(ctx, &d, attempted)
		}
	}()
	st := &d.Status
	st.ObservedGeneration = d.Generation
	now := r.Clock.Now()

	if retried, started := deliverystate.Retry(*st, d.Generation, d.Annotations[hooklinev1.AnnotationRetry], now); retried.LastHandledRetry != st.LastHandledRetry {
		*st = retried
		if started {
			r.attempted.Delete(d.UID)
			logf.FromContext(ctx).V(1).Info("retry requested", "delivery", req.NamespacedName, "token", st.LastHandledRetry)
		}
	}
	if st.Phase.Finished() {
		return ctrl.Result{}, nil
	}
	if st.Phase == "" {
		st.Phase = hooklinev1.PhasePending
	}
	if st.NextAttemptTime != nil && st.NextAttemptTime.After(now) {
		return ctrl.Result{RequeueAfter: st.NextAttemptTime.Sub(now)}, nil
	}

	ep, err := r.endpoint(ctx, &d)
	if err != nil {
		return ctrl.Result{}, err
	}
	if ep == nil {
		*st = deliverystate.Fail(*st, d.Generation, hooklinev1.ReasonEndpointDeleted, fmt.Sprintf("WebhookEndpoint %s does not exist", d.Spec.EndpointRef.Name), now)
		return ctrl.Result{}, nil
	}
	if ep.Disabled() {
		*st = deliverystate.Fail(*st, d.Generation, hooklinev1.ReasonEndpointDisabled, fmt.Sprintf("WebhookEndpoint %s is disabled (%s)", ep.Name, ep.Status.DisabledReason), now)
		return ctrl.Result{}, nil
	}
	if !ep.AcceptsDeliveries() {
		// The endpoint watch brings the delivery back when that changes.
		why := "is paused"
		if !ep.Spec.Paused {
			why = "is not ready"
			if reason := ep.ReadyReason(); reason != "" {
				why += " (" + reason + ")"
			}
		}
		*st = deliverystate.Wait(*st, d.Generation, fmt.Sprintf("waiting: WebhookEndpoint %s %s", ep.Name, why), now)
		return ctrl.Result{}, nil
	}

	limits := r.limits(ep)
	admission := r.throttle.Acquire(ep.Namespace+"/"+ep.Name, req.String(), limits, now)
	if !admission.Admitted() {
		logf.FromContext(ctx).V(1).Info("backpressure: endpoint limit reached", "delivery", req.NamespacedName, "endpoint", ep.Name, "retryAfter", admission.RetryAfter)
		if admission.RetryAfter > 0 {
			return ctrl.Result{RequeueAfter: admission.RetryAfter}, nil
		}
		// Woken when a request of the endpoint finishes; the requeue is a safety net.
		return ctrl.Result{RequeueAfter: inFlightSafetyRequeue}, nil
	}
	res, err := r.attempt(ctx, &d, ep, now, admission.Release)
	admission.Release()
	var wait *errWait
	switch {
	case errors.As(err, &wait):
		*st = deliverystate.Wait(*st, d.Generation, "waiting: "+wait.msg, now)
		return ctrl.Result{RequeueAfter: time.Minute}, nil
	case err != nil:
		return ctrl.Result{}, err
	}
	attempted = &attemptDone{endpoint: ep, outcome: res.Outcome, at: now}
	if res.Outcome != delivery.Invalid {
		r.adapt(ctx, ep, res.TimedOut, limits)
	}
	if st.Phase.Finished() {
		return ctrl.Result{}, nil
	}
	// A zero delay (retry.schedule allows 0s) must still come back: RequeueAfter 0 means never.
	return ctrl.Result{RequeueAfter: max(st.NextAttemptTime.Sub(r.Clock.Now()), minRequeue)}, nil
}

// minRequeue is the shortest wait before an attempt is made again.
const minRequeue = 10 * time.Millisecond

// attemptDone is a request that was sent, to act on once its outcome is recorded.
type attemptDone struct {
	endpoint *hooklinev1.WebhookEndpoint
	outcome  delivery.Outcome
	at       time.Time
}

// recorded runs after an attempt's status was written: the cache guard, and the
// endpoint's health record (a disable is written at once, the rest in batches).
func (r *DeliveryReconciler) recorded(ctx context.Context, d *hooklinev1.WebhookDelivery, a *attemptDone) {
	r.attempted.Store(d.UID, d.Status.Attempts)
	if r.health.record(a.endpoint, a.outcome, a.at) {
		if err := r.health.flush(ctx, a.endpoint); err != nil {
			logf.FromContext(ctx).Error(err, "update endpoint health", "endpoint", a.endpoint.Name)
		}
	}
}

// attempt sends the message once and records the result in d's status.
func (r *DeliveryReconciler) attempt(ctx context.Context, d *hooklinev1.WebhookDelivery, ep *hooklinev1.WebhookEndpoint, now time.Time, done func()) (delivery.Result, error) {
	msg, err := loadMessage(ctx, r.Client, d)
	if apierrors.IsNotFound(err) {
		d.Status = deliverystate.Fail(d.Status, d.Generation, hooklinev1.ReasonBadPayload, fmt.Sprintf("WebhookEvent %s no longer exists", d.Spec.EventRef.Name), now)
		return delivery.Result{Outcome: delivery.Invalid}, nil
	}
	if err != nil {
		if _, isAPI := err.(apierrors.APIStatus); isAPI {
			return delivery.Result{}, err
		}
		logf.FromContext(ctx).Info("refusing to deliver an invalid payload", "delivery", client.ObjectKeyFromObject(d), "problem", err.Error())
		d.Status = deliverystate.Fail(d.Status, d.Generation, hooklinev1.ReasonBadPayload, err.Error(), now)
		return delivery.Result{Outcome: delivery.Invalid}, nil
	}
	res, signature, err := signAndSend(ctx, r.Client, r.Secrets, r.Sender, ep, msg, now, done)
	if err != nil {
		return delivery.Result{}, err
	}
	r.Metrics.observeAttempt(res)

	d.Status = deliverystate.Next(d.Status, d.Generation, deliverystate.Attempt{At: now, Result: res, MessageID: msg.id, Signature: signature},
		deliverystate.Policy{Retry: backoff.NewPolicy(ep.RetrySchedule(), ep.MaxAttempts())}, r.Clock.Now())
	switch d.Status.Phase {
	case hooklinev1.PhaseSucceeded:
		r.Metrics.observeLatency(r.Clock.Since(msg.createdAt))
	case hooklinev1.PhaseExhausted:
		logf.FromContext(ctx).V(1).Info("exhausted", "delivery", client.ObjectKeyFromObject(d), "attempts", d.Status.Attempts)
	}
	return res, nil
}

// patchStatus writes the delivery's status once per reconcile. A status in which
// nothing reached a receiver (a refusal, a wait, a retry token, endpoint deleted or
// disabled) is written with the resourceVersion it was computed from, so that a copy
// the cache has not brought up to date cannot finish a delivery twice or move its
// completionTime; on a conflict nothing is written and the watch brings the newer
// version back. A sent attempt is recorded whatever changed meanwhile: an attempt is
// never lost.
// signAndSend signs the message with the endpoint's current keys and headers and sends
// it once; done is called as soon as the receiver has answered. Both stores' senders
// use it. An errWait says the attempt cannot be made yet.
func signAndSend(ctx context.Context, c client.Reader, secrets SecretReader, sender delivery.Sender, ep *hooklinev1.WebhookEndpoint,
	msg message, now time.Time, done func()) (delivery.Result, string, error) {
	keys, err := signingKeys(ctx, c, ep, now)
	if err != nil {
		return delivery.Result{}, "", err
	}
	return sendSigned(ctx, secrets, sender, ep, msg, keys, now, done)
}

// signingKeys loads the endpoint's keys; keys that are not ready are an errWait.
func signingKeys(ctx context.Context, c client.Reader, ep *hooklinev1.WebhookEndpoint, now time.Time) ([]signing.Key, error) {
	keys, err := loadSigningKeys(ctx, c, ep, now)
	var problem *secretProblem
	if apierrors.IsNotFound(err) || errors.As(err, &problem) {
		return nil, &errWait{fmt.Sprintf("the signing keys of WebhookEndpoint %s are not ready", ep.Name)}
	}
	return keys, err
}

// sendSigned signs with keys and sends once.
func sendSigned(ctx context.Context, secrets SecretReader, sender delivery.Sender, ep *hooklinev1.WebhookEndpoint,
	msg message, keys []signing.Key, now time.Time, done func()) (delivery.Result, string, error) {
	req, signature, err := buildRequest(ctx, secrets, ep, msg, keys, now)
	if err != nil {
		return delivery.Result{}, "", err
	}
	res := sender.Send(ctx, req)
	done() // the endpoint's in-flight slot is free once the receiver has answered
	return res, signature, nil
}

func (r *DeliveryReconciler) patchStatus(ctx context.Context, before, d *hooklinev1.WebhookDelivery, sent bool) error {
	if equality.Semantic.DeepEqual(before.Status, d.Status) {
		return nil
	}
	patch := client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})
	if sent {
		patch = client.MergeFrom(before)
	}
	if err := r.Status().Patch(ctx, d, patch); err != nil {
		if !sent && apierrors.IsConflict(err) {
			return nil
		}
		return client.IgnoreNotFound(err)
	}
	if !before.Status.Phase.Finished() && d.Status.Phase.Finished() {
		r.Metrics.observeCompleted(d.Status.Phase)
		if d.Status.Phase != hooklinev1.PhaseSucceeded && r.Recorder != nil {
			msg := ""
			if c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded); c != nil {
				msg = c.Message
			}
			r.Recorder.Eventf(d, nil, corev1.EventTypeWarning, string(d.Status.Phase), "Deliver", "%s", msg)
		}
	}
	return nil
}

// endpoint returns the delivery's endpoint, or nil when it does not exist.
func (r *DeliveryReconciler) endpoint(ctx context.Context, d *hooklinev1.WebhookDelivery) (*hooklinev1.WebhookEndpoint, error) {
	var ep hooklinev1.WebhookEndpoint
	err := r.Get(ctx, types.NamespacedName{Namespace: d.Namespace, Name: d.Spec.EndpointRef.Name}, &ep)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if ep.DeletionTimestamp != nil {
		return nil, nil
	}
	return &ep, nil
}

// SetupWithManager watches deliveries, and endpoints whose gate (paused, disabled,
// ready) changed, to bring their waiting deliveries back.
func (r *DeliveryReconciler) SetupWithManager(mgr ctrl.Manager) error {
	fair := fairqueue.Handler{Turns: r.turns, EndpointOf: r.endpointOf}
	return ctrl.NewControllerManagedBy(mgr).
		Watches(&hooklinev1.WebhookDelivery{}, fair).
		WatchesRawSource(source.Channel(r.wakeups, fair)).
		Watches(&hooklinev1.WebhookEndpoint{}, handler.EnqueueRequestsFromMapFunc(r.endpointDeliveries),
			builder.WithPredicates(deliveryGateChanged())).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrent, 1)}).
		Named("webhookdelivery").
		Complete(r)
}

// wake enqueues a delivery ("namespace/name") whose endpoint has a free in-flight slot.
func (r *DeliveryReconciler) wake(caller string) {
	ns, name, _ := strings.Cut(caller, "/")
	d := &hooklinev1.WebhookDelivery{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	select {
	case r.wakeups <- event.GenericEvent{Object: d}:
	default: // full: the safety requeue brings it back
	}
}

// inFlightSafetyRequeue brings back a delivery waiting for an in-flight slot in case
// its wakeup was lost.
const inFlightSafetyRequeue = 30 * time.Second

// limits are the endpoint's rateLimit, with the default share of the global cap when
// it sets no maxInFlight: N deliveries to one endpoint never occupy every worker.
func (r *DeliveryReconciler) limits(ep *hooklinev1.WebhookEndpoint) throttle.Limits {
	lim := rateLimits(ep)
	if lim.MaxInFlight <= 0 {
		lim.MaxInFlight = r.EndpointMaxInFlight
	}
	return lim
}

// adapt feeds an attempt's outcome to the throttle: an endpoint whose attempts time
// out gets fewer at once, and more again as it answers. Each step down and the end of
// a reduction are told on the endpoint, once each.
func (r *DeliveryReconciler) adapt(ctx context.Context, ep *hooklinev1.WebhookEndpoint, timedOut bool, lim throttle.Limits) {
	reduced, change := r.throttle.Outcome(ep.Namespace+"/"+ep.Name, timedOut, lim)
	switch change {
	case throttle.Reduced:
		logf.FromContext(ctx).V(1).Info("concurrency reduced: attempts time out", "endpoint", client.ObjectKeyFromObject(ep), "maxInFlight", reduced)
		if r.Recorder != nil {
			r.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, hooklinev1.EventConcurrencyReduced, "Deliver",
				"attempts time out: at most %d in flight until the endpoint answers again", reduced)
		}
	case throttle.Restored:
		logf.FromContext(ctx).V(1).Info("concurrency restored: the endpoint answers again", "endpoint", client.ObjectKeyFromObject(ep), "maxInFlight", lim.MaxInFlight)
		if r.Recorder != nil {
			r.Recorder.Eventf(ep, nil, corev1.EventTypeNormal, hooklinev1.EventConcurrencyRestored, "Deliver",
				"the endpoint answers again: its in-flight limit is restored")
		}
	}
}

func rateLimits(ep *hooklinev1.WebhookEndpoint) throttle.Limits {
	var lim throttle.Limits
	if rl := ep.Spec.RateLimit; rl != nil {
		if rl.PerSecond != nil {
			lim.PerSecond = int(*rl.PerSecond)
		}
		if rl.MaxInFlight != nil {
			lim.MaxInFlight = int(*rl.MaxInFlight)
		}
	}
	return lim
}

// endpointOf is the endpoint key of a delivery known by name only, from the cache.
func (r *DeliveryReconciler) endpointOf(ctx context.Context, req types.NamespacedName) string {
	var d hooklinev1.WebhookDelivery
	if err := r.Get(ctx, req, &d); err != nil {
		return ""
	}
	return d.Namespace + "/" + d.Spec.EndpointRef.Name
}

// endpointDeliveries maps an endpoint to its unfinished deliveries.
func (r *DeliveryReconciler) endpointDeliveries(ctx context.Context, o client.Object) []reconcile.Request {
	var list hooklinev1.WebhookDeliveryList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexDeliveryEndpoint: o.GetName()}); err != nil {
		logf.FromContext(ctx).Error(err, "list deliveries of endpoint")
		return nil
	}
	var out []reconcile.Request
	for _, d := range list.Items {
		if !d.Status.Phase.Finished() {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: d.Namespace, Name: d.Name}})
		}
	}
	return out
}
