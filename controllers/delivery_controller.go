package controllers

import (
	"context"
	"errors"
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
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/deliverystate"
	"github.com/hookline/hookline/internal/engine"
	"github.com/hookline/hookline/internal/fairqueue"
	"github.com/hookline/hookline/internal/signing"
)

// DeliveryReconciler signs, sends and retries WebhookDeliveries. Everything needed to
// resume after a restart is in the delivery's status; waits are RequeueAfter.
type DeliveryReconciler struct {
	client.Client
	// Engine makes the attempts; its throttle wakes deliveries through wakeups when
	// an in-flight slot frees up.
	Engine        *engine.Engine
	MaxConcurrent int
	Recorder      eventRecorder
	Clock         clock.Clock
	Metrics       *Metrics

	wakeups chan event.GenericEvent
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
		// A request that could not be made (an invalid URL) reached no receiver.
		sent := attempted != nil && attempted.result.Sent.Outcome != delivery.Invalid
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
	res, err := r.Engine.Attempt(ctx, engine.Job{Status: *st, Generation: d.Generation, Endpoint: ep, EndpointName: d.Spec.EndpointRef.Name,
		Caller:  req.String(),
		Message: func(ctx context.Context) (engine.Message, error) { return loadMessage(ctx, r.Client, &d) },
		Keys:    func(ctx context.Context) ([]signing.Key, error) { return engine.SigningKeys(ctx, r.Client, ep, now) },
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	if res.Deferred {
		logf.FromContext(ctx).V(1).Info("backpressure: endpoint limit reached", "delivery", req.NamespacedName, "endpoint", ep.Name, "retryAfter", res.Retry)
		if res.Retry > 0 {
			return ctrl.Result{RequeueAfter: res.Retry}, nil
		}
		// Woken when a request of the endpoint finishes; the requeue is a safety net.
		return ctrl.Result{RequeueAfter: inFlightSafetyRequeue}, nil
	}
	*st = res.Status
	if res.Sent != nil {
		attempted = &attemptDone{endpoint: ep, result: res}
	}
	switch {
	case st.Phase.Finished(), res.Gated: // the endpoint watch brings a gated delivery back
		return ctrl.Result{}, nil
	case res.Sent == nil:
		return ctrl.Result{RequeueAfter: res.Retry}, nil
	}
	// A zero delay (retry.schedule allows 0s) must still come back: RequeueAfter 0 means never.
	return ctrl.Result{RequeueAfter: max(res.Retry, minRequeue)}, nil
}

// minRequeue is the shortest wait before an attempt is made again.
const minRequeue = 10 * time.Millisecond

// attemptDone is a request that was sent, to act on once its outcome is recorded.
type attemptDone struct {
	endpoint *hooklinev1.WebhookEndpoint
	result   engine.Result
}

// recorded runs after an attempt's status was written: the cache guard, and the
// endpoint's health record.
func (r *DeliveryReconciler) recorded(ctx context.Context, d *hooklinev1.WebhookDelivery, a *attemptDone) {
	r.attempted.Store(d.UID, d.Status.Attempts)
	if err := r.Engine.Recorded(ctx, a.endpoint, a.result); err != nil {
		logf.FromContext(ctx).Error(err, "update endpoint health", "endpoint", a.endpoint.Name)
	}
	if d.Status.Phase == hooklinev1.PhaseExhausted {
		logf.FromContext(ctx).V(1).Info("exhausted", "delivery", client.ObjectKeyFromObject(d), "attempts", d.Status.Attempts)
	}
}

// patchStatus writes the delivery's status once per reconcile. A status in which
// nothing reached a receiver (a refusal, a wait, a retry token, endpoint deleted or
// disabled) is written with the resourceVersion it was computed from, so that a copy
// the cache has not brought up to date cannot finish a delivery twice or move its
// completionTime; on a conflict nothing is written and the watch brings the newer
// version back. A sent attempt is recorded whatever changed meanwhile: an attempt is
// never lost.
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
		r.Metrics.ObserveCompleted(d.Status.Phase)
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
