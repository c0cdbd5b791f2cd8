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
	"github.com/hookline/hookline/internal/throttle"
)

// historyLimit is how many attempts a delivery's status keeps.
const historyLimit = 10

// DeliveryReconciler signs, sends and retries WebhookDeliveries. Everything needed to
// resume after a restart is in the delivery's status; waits are RequeueAfter.
type DeliveryReconciler struct {
	client.Client
	// Live reads from the API server, bypassing the cache (endpoint health updates).
	Live          client.Reader
	Secrets       SecretReader
	Sender        *delivery.Client
	Retention     Retention
	MaxConcurrent int
	Recorder      eventRecorder

	// throttle enforces the endpoints' rateLimit; wakeups carries the deliveries it
	// wakes when an in-flight slot frees up.
	throttle *throttle.Throttle
	wakeups  chan event.GenericEvent
	// health batches the endpoints' failure records.
	health *endpointHealth

	// attempted remembers, per delivery, how many attempts this process has recorded,
	// so that a reconcile reading a cache that has not caught up with our own write yet
	// does not send the message a second time.
	attempted sync.Map // types.UID -> int32
}

// +kubebuilder:rbac:groups=hookline.dev,resources=webhookdeliveries,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookdeliveries/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookendpoints/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookevents,verbs=get;list;watch

// Reconcile makes at most one attempt and schedules the next.
func (r *DeliveryReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var d hooklinev1.WebhookDelivery
	if err := r.Get(ctx, req.NamespacedName, &d); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if n, ok := r.attempted.Load(d.UID); ok {
		if n.(int32) > d.Status.Attempts {
			return ctrl.Result{RequeueAfter: 200 * time.Millisecond}, nil // our own write is not in the cache yet
		}
		r.attempted.Delete(d.UID) // the cache has caught up
	}
	before := d.DeepCopy()
	st := &d.Status
	st.ObservedGeneration = d.Generation
	now := time.Now()

	r.handleRetryToken(&d)
	if st.Phase.Finished() {
		return r.finished(ctx, before, &d)
	}
	if st.Phase == "" {
		st.Phase = hooklinev1.PhasePending
	}
	if st.NextAttemptTime != nil && st.NextAttemptTime.After(now) {
		return ctrl.Result{RequeueAfter: st.NextAttemptTime.Sub(now)}, r.patchStatus(ctx, before, &d)
	}

	ep, err := r.endpoint(ctx, &d)
	if err != nil {
		return ctrl.Result{}, err
	}
	if ep == nil {
		r.fail(&d, hooklinev1.ReasonEndpointDeleted, fmt.Sprintf("WebhookEndpoint %s does not exist", d.Spec.EndpointRef.Name))
		return r.finished(ctx, before, &d)
	}
	if ep.Disabled() {
		r.fail(&d, hooklinev1.ReasonEndpointDisabled, fmt.Sprintf("WebhookEndpoint %s is disabled (%s)", ep.Name, ep.Status.DisabledReason))
		return r.finished(ctx, before, &d)
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
		r.wait(&d, fmt.Sprintf("waiting: WebhookEndpoint %s %s", ep.Name, why))
		return ctrl.Result{}, r.patchStatus(ctx, before, &d)
	}

	admission := r.throttle.Acquire(ep.Namespace+"/"+ep.Name, req.String(), rateLimits(ep), now)
	if !admission.Admitted() {
		if admission.RetryAfter > 0 {
			return ctrl.Result{RequeueAfter: admission.RetryAfter}, r.patchStatus(ctx, before, &d)
		}
		// Woken when a request of the endpoint finishes; the requeue is a safety net.
		return ctrl.Result{RequeueAfter: inFlightSafetyRequeue}, r.patchStatus(ctx, before, &d)
	}
	result, err := r.attempt(ctx, &d, ep, now, admission.Release)
	admission.Release()
	var wait *errWait
	switch {
	case errors.As(err, &wait):
		r.wait(&d, "waiting: "+wait.msg)
		return ctrl.Result{RequeueAfter: time.Minute}, r.patchStatus(ctx, before, &d)
	case err != nil:
		return ctrl.Result{}, err
	}
	if err := r.patchStatus(ctx, before, &d); err != nil {
		return ctrl.Result{}, err
	}
	r.attempted.Store(d.UID, d.Status.Attempts)
	if r.health.record(ep, result.Outcome, now) {
		// Disabling is written at once; the rest is batched by endpointHealth.
		if err := r.health.flush(ctx, ep); err != nil {
			logf.FromContext(ctx).Error(err, "update endpoint health", "endpoint", ep.Name)
		}
	}
	if st.Phase.Finished() {
		return r.finishedResult(&d), nil
	}
	// A zero delay (retry.schedule allows 0s) must still come back: RequeueAfter 0 means never.
	return ctrl.Result{RequeueAfter: max(time.Until(st.NextAttemptTime.Time), minRequeue)}, nil
}

// minRequeue is the shortest wait before an attempt is made again.
const minRequeue = 10 * time.Millisecond

// attempt sends the message once and records the result in d's status.
func (r *DeliveryReconciler) attempt(ctx context.Context, d *hooklinev1.WebhookDelivery, ep *hooklinev1.WebhookEndpoint, now time.Time, done func()) (delivery.Result, error) {
	st := &d.Status
	msg, err := loadMessage(ctx, r.Client, d)
	if apierrors.IsNotFound(err) {
		r.fail(d, hooklinev1.ReasonBadPayload, fmt.Sprintf("WebhookEvent %s no longer exists", d.Spec.EventRef.Name))
		return delivery.Result{Outcome: delivery.Invalid}, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		if _, isAPI := err.(apierrors.APIStatus); isAPI {
			return delivery.Result{}, err
		}
		logf.FromContext(ctx).Info("refusing to deliver an invalid payload", "delivery", client.ObjectKeyFromObject(d), "problem", err.Error())
		r.fail(d, hooklinev1.ReasonBadPayload, err.Error())
		return delivery.Result{Outcome: delivery.Invalid}, nil
	}
	keys, err := loadSigningKeys(ctx, r.Client, ep, now)
	var problem *secretProblem
	if apierrors.IsNotFound(err) || errors.As(err, &problem) {
		return delivery.Result{}, &errWait{fmt.Sprintf("the signing keys of WebhookEndpoint %s are not ready", ep.Name)}
	}
	if err != nil {
		return delivery.Result{}, err
	}
	req, signature, err := buildRequest(ctx, r.Secrets, ep, msg, keys, now)
	if err != nil {
		return delivery.Result{}, err
	}

	res := r.Sender.Send(ctx, req)
	done() // the endpoint's in-flight slot is free once the receiver has answered
	observeAttempt(res)

	st.MessageID = msg.id
	st.Attempts++
	st.Signature = signature
	st.LastAttemptTime = &metav1.MicroTime{Time: now}
	st.ResponseStatusCode = int32(res.StatusCode)
	rec := hooklinev1.AttemptRecord{
		Time: metav1.MicroTime{Time: now}, DurationMs: res.Duration.Milliseconds(),
		StatusCode: int32(res.StatusCode), Error: res.Error, Response: res.Response,
	}
	if res.Outcome == delivery.Blocked {
		rec.Error = hooklinev1.ReasonBlockedAddress + ": " + res.Error
	}
	st.History = append(st.History, rec)
	if len(st.History) > historyLimit {
		st.History = st.History[len(st.History)-historyLimit:]
	}
	st.NextAttemptTime = nil

	switch res.Outcome {
	case delivery.Succeeded:
		st.Phase = hooklinev1.PhaseSucceeded
		st.CompletionTime = &metav1.Time{Time: time.Now()}
		setCondition(&st.Conditions, d.Generation, hooklinev1.ConditionSucceeded, metav1.ConditionTrue, hooklinev1.ReasonDelivered,
			fmt.Sprintf("delivered on attempt %d (HTTP %d)", st.Attempts, res.StatusCode))
		observeLatency(msg.createdAt)
	case delivery.Gone:
		r.fail(d, hooklinev1.ReasonEndpointGone, "the receiver answered 410 Gone; the endpoint is disabled")
	case delivery.Blocked:
		r.fail(d, hooklinev1.ReasonBlockedAddress, res.Error)
	case delivery.Invalid:
		r.fail(d, hooklinev1.ReasonBadPayload, res.Error)
	default:
		policy := backoff.NewPolicy(ep.RetrySchedule(), ep.MaxAttempts())
		if policy.Exhausted(int(st.Attempts)) {
			st.Phase = hooklinev1.PhaseExhausted
			st.CompletionTime = &metav1.Time{Time: time.Now()}
			setCondition(&st.Conditions, d.Generation, hooklinev1.ConditionSucceeded, metav1.ConditionFalse, hooklinev1.ReasonMaxAttempts,
				fmt.Sprintf("%d attempts made, the last: %s; set the annotation %s to try again", st.Attempts, attemptSummary(res), hooklinev1.AnnotationRetry))
		} else {
			next := now.Add(policy.NextDelay(int(st.Attempts), res.RetryAfter, nil))
			st.Phase = hooklinev1.PhaseRetrying
			st.NextAttemptTime = &metav1.MicroTime{Time: next}
			setCondition(&st.Conditions, d.Generation, hooklinev1.ConditionSucceeded, metav1.ConditionUnknown, hooklinev1.ReasonRetrying,
				fmt.Sprintf("attempt %d failed (%s); next attempt at %s", st.Attempts, attemptSummary(res), next.UTC().Format(time.RFC3339)))
		}
	}
	return res, nil
}

func attemptSummary(res delivery.Result) string {
	if res.StatusCode != 0 {
		return fmt.Sprintf("HTTP %d", res.StatusCode)
	}
	return res.Error
}

// fail finishes the delivery as Failed: it will not be retried without the annotation.
func (r *DeliveryReconciler) fail(d *hooklinev1.WebhookDelivery, reason, message string) {
	st := &d.Status
	st.Phase = hooklinev1.PhaseFailed
	st.NextAttemptTime = nil
	st.CompletionTime = &metav1.Time{Time: time.Now()}
	setCondition(&st.Conditions, d.Generation, hooklinev1.ConditionSucceeded, metav1.ConditionFalse, reason, message)
}

func (r *DeliveryReconciler) wait(d *hooklinev1.WebhookDelivery, message string) {
	setCondition(&d.Status.Conditions, d.Generation, hooklinev1.ConditionSucceeded, metav1.ConditionUnknown, hooklinev1.ReasonWaiting, message)
}

// handleRetryToken starts a Failed or Exhausted delivery again on a new
// hookline.dev/retry token; its attempts count anew towards maxAttempts.
func (r *DeliveryReconciler) handleRetryToken(d *hooklinev1.WebhookDelivery) {
	token := d.Annotations[hooklinev1.AnnotationRetry]
	st := &d.Status
	if token == "" || token == st.LastHandledRetry {
		return
	}
	st.LastHandledRetry = token
	if st.Phase != hooklinev1.PhaseFailed && st.Phase != hooklinev1.PhaseExhausted {
		return
	}
	st.Phase = hooklinev1.PhasePending
	st.Attempts = 0
	st.NextAttemptTime, st.CompletionTime = nil, nil
	setCondition(&st.Conditions, d.Generation, hooklinev1.ConditionSucceeded, metav1.ConditionUnknown, hooklinev1.ReasonRetrying,
		"retry requested by the "+hooklinev1.AnnotationRetry+" annotation")
	r.attempted.Delete(d.UID)
}

// finished writes the status of a finished delivery and handles its retention.
func (r *DeliveryReconciler) finished(ctx context.Context, before, d *hooklinev1.WebhookDelivery) (ctrl.Result, error) {
	if err := r.patchStatus(ctx, before, d); err != nil {
		return ctrl.Result{}, err
	}
	// Fanned-out deliveries go with their event (owner reference); direct ones alone.
	if d.Spec.EventRef == nil && d.Status.CompletionTime != nil {
		if left := r.retentionLeft(d); left <= 0 {
			// The UID precondition: never delete a new object of the same name.
			return ctrl.Result{}, client.IgnoreNotFound(r.Delete(ctx, d, client.Preconditions{UID: &d.UID}))
		}
	}
	return r.finishedResult(d), nil
}

func (r *DeliveryReconciler) finishedResult(d *hooklinev1.WebhookDelivery) ctrl.Result {
	if d.Spec.EventRef != nil || d.Status.CompletionTime == nil {
		return ctrl.Result{}
	}
	if left := r.retentionLeft(d); left > 0 {
		return ctrl.Result{RequeueAfter: left}
	}
	return ctrl.Result{RequeueAfter: time.Second}
}

func (r *DeliveryReconciler) retentionLeft(d *hooklinev1.WebhookDelivery) time.Duration {
	keep := r.Retention.Failed
	if d.Status.Phase == hooklinev1.PhaseSucceeded {
		keep = r.Retention.Succeeded
	}
	if keep <= 0 {
		return time.Hour * 24 * 365 // retention disabled
	}
	return time.Until(d.Status.CompletionTime.Add(keep))
}

func (r *DeliveryReconciler) patchStatus(ctx context.Context, before, d *hooklinev1.WebhookDelivery) error {
	if equality.Semantic.DeepEqual(before.Status, d.Status) {
		return nil
	}
	if err := r.Status().Patch(ctx, d, client.MergeFrom(before)); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !before.Status.Phase.Finished() && d.Status.Phase.Finished() {
		observeCompleted(d.Status.Phase)
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
	r.wakeups = make(chan event.GenericEvent, 1024)
	r.throttle = throttle.New(r.wake)
	r.health = newEndpointHealth(mgr.GetClient(), r.Live)
	if err := mgr.Add(r.health); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&hooklinev1.WebhookDelivery{}).
		WatchesRawSource(source.Channel(r.wakeups, &handler.EnqueueRequestForObject{})).
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
