package controllers

import (
	"context"

	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/source"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/conditions"
	"github.com/hookline/hookline/internal/fairqueue"
	"github.com/hookline/hookline/internal/payload"
	"github.com/hookline/hookline/internal/retention"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
)

// EventReconciler fans a WebhookEvent out to one WebhookDelivery per subscribed, ready
// endpoint of its namespace, then keeps the event's delivery counts.
type EventReconciler struct {
	client.Client
	// APIReader reads past the cache when the cache shows no receiver: "no endpoint"
	// is final for an event, and an endpoint may have turned Ready a moment ago.
	APIReader client.Reader
	Recorder  eventRecorder
	Clock     clock.PassiveClock
	// Gate admits a fan-out while the etcd byte budget has room for it.
	Gate *retention.Gate
	// Queue, when set, receives the fan-out instead of the API server (postgres mode).
	Queue *pgstore.Queue
	// wakeups carries the held events the pruner releases when room is made.
	wakeups chan event.GenericEvent
	// turns serves the namespaces in turn.
	turns *fairqueue.Turns
	// MaxConcurrent is the number of events reconciled at once.
	MaxConcurrent int

	// fanOuts remembers the fan-outs this process made until they complete: their
	// total (the cache may not show every delivery yet) and when progress was last
	// written, so that progress costs at most one write per progressInterval while the
	// final counts are written at once.
	fanOuts sync.Map // types.UID -> *fanOutProgress
}

// progressInterval bounds how often the counts of an unfinished event are written.
const progressInterval = time.Second

// +kubebuilder:rbac:groups=hookline.dev,resources=webhookevents,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookevents/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookdeliveries,verbs=get;list;watch;create;delete

// Reconcile fans out once, then counts.
func (r *EventReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, err error) {
	if r.turns != nil { // nil: run by hand (tests), not by the controller
		r.turns.Started(req.NamespacedName)
		defer func() {
			if result.RequeueAfter > 0 {
				p := r.turns.Later()
				result.Priority = &p
			}
		}()
	}
	var ev hooklinev1.WebhookEvent
	if err := r.Get(ctx, req.NamespacedName, &ev); err != nil {
		if apierrors.IsNotFound(err) {
			r.Gate.Forget(req.String()) // a held event deleted while it waited
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if ev.Refused() || ev.Queued() {
		return ctrl.Result{}, nil // final: nothing it is computed from can change
	}
	// A complete event is still counted on every change of its deliveries: a manual
	// retry can turn an Exhausted delivery into a Succeeded one long after completion.
	before := ev.DeepCopy()
	st := &ev.Status
	st.ObservedGeneration = ev.Generation
	now := r.Clock.Now()
	progress, fannedOut := r.progress(ev.UID)
	if !ev.FannedOut() && !fannedOut {
		if err := payload.Check(ev.Spec.Payload.Raw); err != nil {
			return ctrl.Result{}, r.refuse(ctx, before, &ev, err, now)
		}
		receivers, err := r.receivers(ctx, &ev)
		if err != nil {
			return ctrl.Result{}, err
		}
		if r.Queue != nil {
			return ctrl.Result{}, r.enqueue(ctx, before, &ev, receivers, now)
		}
		if !r.admit(ctx, &ev, len(receivers), now) {
			// The pruner wakes it when room is made; the requeue is a safety net.
			return ctrl.Result{RequeueAfter: heldRecheck}, r.patchStatus(ctx, before, &ev)
		}
		created, err := r.fanOut(ctx, &ev, receivers)
		if err != nil {
			return ctrl.Result{}, err
		}
		st.Deliveries = &hooklinev1.DeliveryCounts{Total: int32(created), Pending: int32(created)}
		// Remembered here until the status says it: a fan-out that finishes within
		// progressInterval costs one event write in all, at its completion.
		progress = &fanOutProgress{total: int32(created), lastWrite: r.Clock.Now()}
		r.fanOuts.Store(ev.UID, progress)
	} else if err := r.count(ctx, &ev, progress); err != nil {
		return ctrl.Result{}, err
	}
	// The message id records the fan-out: once written it never runs again, so an
	// endpoint created later does not receive old events.
	st.MessageID = messageID(ev.UID)
	setComplete(&ev, now)
	if st.CompletionTime != nil {
		r.fanOuts.Delete(ev.UID)
	} else if progress != nil {
		if wait := progress.lastWrite.Add(progressInterval).Sub(r.Clock.Now()); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		progress.lastWrite = r.Clock.Now()
	}
	return ctrl.Result{}, r.patchStatus(ctx, before, &ev)
}

// enqueue publishes the event and its fan-out into the PostgreSQL queue, in one
// transaction, idempotent by the event's name: a second reconcile, a restart, or a
// GitOps tool that re-applies the event after retention queues nothing again. The
// event is then complete as far as the API server is concerned; the queue keeps the
// deliveries and their fate (kubectl hookline deliveries).
func (r *EventReconciler) enqueue(ctx context.Context, before, ev *hooklinev1.WebhookEvent, receivers []*hooklinev1.WebhookEndpoint, now time.Time) error {
	endpoints := make([]string, len(receivers))
	for i, ep := range receivers {
		endpoints[i] = ep.Name
	}
	st := &ev.Status
	st.MessageID = messageID(ev.UID)
	if _, err := r.Queue.Publish(ctx, []pgstore.Event{{Namespace: ev.Namespace, Name: ev.Name, UID: string(ev.UID), Type: ev.Spec.Type,
		Payload: ev.Spec.Payload.Raw, MessageID: st.MessageID, Endpoints: endpoints, CreatedAt: ev.CreationTimestamp.Time}}); err != nil {
		return fmt.Errorf("publish into the delivery queue: %w", err)
	}
	n := int32(len(endpoints))
	st.Deliveries = &hooklinev1.DeliveryCounts{Total: n, Pending: n}
	if n == 0 {
		setComplete(ev, now)
	} else {
		conditions.Set(&st.Conditions, ev.Generation, hooklinev1.ConditionComplete, metav1.ConditionTrue, hooklinev1.ReasonQueued,
			fmt.Sprintf("%d deliveries queued in PostgreSQL; kubectl hookline deliveries shows their fate", n), now)
		st.CompletionTime = &metav1.Time{Time: now}
	}
	return r.patchStatus(ctx, before, ev)
}

// heldRecheck is how often a held event asks again if no wakeup came.
const heldRecheck = 30 * time.Second

// admit asks the gate for room for n deliveries. A held event says so in its
// Complete condition and, once, in a Kubernetes Event.
func (r *EventReconciler) admit(ctx context.Context, ev *hooklinev1.WebhookEvent, n int, now time.Time) bool {
	if n == 0 {
		return true
	}
	d := r.Gate.Admit(ev.Namespace+"/"+ev.Name, eventBytes(ev), int64(n)*liveDeliveryBytes)
	if d.Admitted {
		return true
	}
	msg := fmt.Sprintf("fan-out to %d endpoints waits: %s; it resumes as deliveries finish and are pruned", n, d.Explain())
	if c := meta.FindStatusCondition(ev.Status.Conditions, hooklinev1.ConditionComplete); c == nil || c.Reason != hooklinev1.ReasonWaitingForBudget {
		logf.FromContext(ctx).Info("fan-out held back by the etcd budget", "event", client.ObjectKeyFromObject(ev), "used", d.Used, "budget", d.Max,
			"namespaceUsed", d.NamespaceUsed, "share", d.Share)
		if r.Recorder != nil {
			r.Recorder.Eventf(ev, nil, corev1.EventTypeWarning, hooklinev1.ReasonWaitingForBudget, "FanOut", "%s", msg)
		}
	}
	conditions.Set(&ev.Status.Conditions, ev.Generation, hooklinev1.ConditionComplete, metav1.ConditionFalse, hooklinev1.ReasonWaitingForBudget, msg, now)
	return false
}

// fanOutProgress is what this process knows of a fan-out it made whose completion is
// not written yet.
type fanOutProgress struct {
	total     int32
	lastWrite time.Time
}

func (r *EventReconciler) progress(uid types.UID) (*fanOutProgress, bool) {
	p, ok := r.fanOuts.Load(uid)
	if !ok {
		return nil, false
	}
	return p.(*fanOutProgress), true
}

// patchStatus writes the event's status with the resourceVersion it was computed
// from: a copy the cache has not brought up to date yet cannot overwrite what a newer
// one wrote (a completionTime, final counts). On a conflict nothing is written; the
// watch brings the newer version back.
func (r *EventReconciler) patchStatus(ctx context.Context, before, ev *hooklinev1.WebhookEvent) error {
	_, err := r.writeStatus(ctx, before, ev)
	return err
}

// writeStatus is patchStatus that also says whether a write took.
func (r *EventReconciler) writeStatus(ctx context.Context, before, ev *hooklinev1.WebhookEvent) (bool, error) {
	if equality.Semantic.DeepEqual(before.Status, ev.Status) {
		return false, nil
	}
	err := r.Status().Patch(ctx, ev, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return false, nil
	}
	return err == nil, err
}

// refuse completes an event whose payload breaks the limits (admission refuses such a
// payload; this one got in before it or around it). It is written once: the refusal
// is final, and the Warning Event follows only the write that made it.
func (r *EventReconciler) refuse(ctx context.Context, before, ev *hooklinev1.WebhookEvent, problem error, now time.Time) error {
	msg := problem.Error() + "; nothing was delivered"
	st := &ev.Status
	conditions.Set(&st.Conditions, ev.Generation, hooklinev1.ConditionComplete, metav1.ConditionTrue, hooklinev1.ReasonInvalidPayload, msg, now)
	st.Deliveries = &hooklinev1.DeliveryCounts{}
	st.CompletionTime = &metav1.Time{Time: now}
	wrote, err := r.writeStatus(ctx, before, ev)
	if !wrote {
		return err
	}
	logf.FromContext(ctx).Info("refused to fan out an invalid event", "event", client.ObjectKeyFromObject(ev), "problem", msg)
	if r.Recorder != nil {
		r.Recorder.Eventf(ev, nil, corev1.EventTypeWarning, hooklinev1.ReasonInvalidPayload, "FanOut", "%s", msg)
	}
	return nil
}

// receivers are the endpoints of the event's namespace that receive it.
func (r *EventReconciler) receivers(ctx context.Context, ev *hooklinev1.WebhookEvent) ([]*hooklinev1.WebhookEndpoint, error) {
	selector := labels.Everything()
	if ev.Spec.EndpointSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(ev.Spec.EndpointSelector)
		if err != nil {
			return nil, err // admission validated the shape; this is not expected
		}
		selector = s
	}
	out, err := receiving(ctx, r.Client, ev, selector)
	if len(out) == 0 && err == nil && r.APIReader != nil {
		return receiving(ctx, r.APIReader, ev, selector)
	}
	return out, err
}

func receiving(ctx context.Context, reader client.Reader, ev *hooklinev1.WebhookEvent, selector labels.Selector) ([]*hooklinev1.WebhookEndpoint, error) {
	var endpoints hooklinev1.WebhookEndpointList
	if err := reader.List(ctx, &endpoints, client.InNamespace(ev.Namespace), client.MatchingLabelsSelector{Selector: selector}); err != nil {
		return nil, err
	}
	var out []*hooklinev1.WebhookEndpoint
	for i := range endpoints.Items {
		if receives(&endpoints.Items[i], ev.Spec.Type, labels.Everything()) {
			out = append(out, &endpoints.Items[i])
		}
	}
	return out, nil
}

// receives: an endpoint gets an event of this type when it is not being deleted,
// accepts deliveries, subscribes to the type and matches the event's selector.
func receives(ep *hooklinev1.WebhookEndpoint, eventType string, selector labels.Selector) bool {
	return ep.DeletionTimestamp == nil && ep.AcceptsDeliveries() && ep.Subscribes(eventType) && selector.Matches(labels.Set(ep.Labels))
}

// fanOut creates one delivery per receiving endpoint. Names are derived from the event
// and the endpoint, so running it twice creates nothing new.
func (r *EventReconciler) fanOut(ctx context.Context, ev *hooklinev1.WebhookEvent, receivers []*hooklinev1.WebhookEndpoint) (int, error) {
	created := 0
	for _, ep := range receivers {
		d := &hooklinev1.WebhookDelivery{
			ObjectMeta: metav1.ObjectMeta{
				Name:      deliveryName(ev.Name, ep.Name),
				Namespace: ev.Namespace,
			},
			Spec: hooklinev1.WebhookDeliverySpec{
				EndpointRef: hooklinev1.LocalRef{Name: ep.Name},
				EventType:   ev.Spec.Type,
				EventRef:    &hooklinev1.LocalRef{Name: ev.Name},
			},
		}
		if err := controllerutil.SetControllerReference(ev, d, r.Scheme()); err != nil {
			return created, err
		}
		if err := r.Create(ctx, d); err != nil && !apierrors.IsAlreadyExists(err) {
			return created, err
		}
		created++
	}
	return created, nil
}

// count tallies the event's deliveries by phase from the cache.
func (r *EventReconciler) count(ctx context.Context, ev *hooklinev1.WebhookEvent, progress *fanOutProgress) error {
	var list hooklinev1.WebhookDeliveryList
	if err := r.List(ctx, &list, client.InNamespace(ev.Namespace), client.MatchingFields{indexDeliveryEvent: ev.Name}); err != nil {
		return err
	}
	var c hooklinev1.DeliveryCounts
	for _, d := range list.Items {
		switch d.Status.Phase {
		case hooklinev1.PhaseRetrying:
			c.Retrying++
		case hooklinev1.PhaseSucceeded:
			c.Succeeded++
		case hooklinev1.PhaseFailed:
			c.Failed++
		case hooklinev1.PhaseExhausted:
			c.Exhausted++
		}
	}
	// The cache may not hold every delivery the fan-out created yet; the total recorded
	// then is the truth, and the ones not seen are pending.
	c.Total = int32(len(list.Items))
	if ev.Status.Deliveries != nil {
		c.Total = max(c.Total, ev.Status.Deliveries.Total)
	}
	if progress != nil {
		c.Total = max(c.Total, progress.total)
	}
	c.Pending = c.Total - c.Retrying - c.Succeeded - c.Failed - c.Exhausted
	ev.Status.Deliveries = &c
	return nil
}

// setComplete sets the Complete condition and completionTime from the counts.
func setComplete(ev *hooklinev1.WebhookEvent, now time.Time) {
	st := &ev.Status
	if st.Deliveries == nil {
		st.Deliveries = &hooklinev1.DeliveryCounts{}
	}
	c := *st.Deliveries
	finished := c.Succeeded + c.Failed + c.Exhausted
	switch {
	case c.Total == 0:
		conditions.Set(&st.Conditions, ev.Generation, hooklinev1.ConditionComplete, metav1.ConditionTrue, hooklinev1.ReasonNoEndpoints,
			"no ready endpoint of this namespace subscribes to "+ev.Spec.Type, now)
	case finished < c.Total:
		conditions.Set(&st.Conditions, ev.Generation, hooklinev1.ConditionComplete, metav1.ConditionFalse, hooklinev1.ReasonInProgress,
			fmt.Sprintf("%d of %d deliveries finished", finished, c.Total), now)
		st.CompletionTime = nil
		return
	case c.Succeeded == c.Total:
		conditions.Set(&st.Conditions, ev.Generation, hooklinev1.ConditionComplete, metav1.ConditionTrue, hooklinev1.ReasonAllSucceeded,
			fmt.Sprintf("all %d deliveries succeeded", c.Total), now)
	default:
		conditions.Set(&st.Conditions, ev.Generation, hooklinev1.ConditionComplete, metav1.ConditionTrue, hooklinev1.ReasonSomeFailed,
			fmt.Sprintf("%d of %d deliveries failed or were exhausted", c.Failed+c.Exhausted, c.Total), now)
	}
	if st.CompletionTime == nil {
		st.CompletionTime = &metav1.Time{Time: now}
	}
}

// deliveryName is deterministic per (event, endpoint) and a valid object name.
func deliveryName(eventName, endpointName string) string {
	return hooklinev1.DeliveryName(eventName, endpointName)
}

// messageID is the webhook-id of an object: stable across attempts and restarts.
func messageID(uid types.UID) string {
	return "msg_" + strings.ReplaceAll(string(uid), "-", "")
}

// wake reconciles a held event again ("namespace/name").
func (r *EventReconciler) wake(key string) {
	ns, name, _ := strings.Cut(key, "/")
	select {
	case r.wakeups <- event.GenericEvent{Object: &hooklinev1.WebhookEvent{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}}:
	default: // full: heldRecheck brings it back
	}
}

// SetupWithManager watches events, the deliveries they own, and the held events the
// pruner releases. Namespaces take turns in the work queue: one namespace's burst
// (of large events, say) takes one turn each round, so another namespace's next event
// is not queued behind all of it.
func (r *EventReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.turns == nil {
		r.turns = fairqueue.NewTurns()
	}
	inTurn := fairqueue.Handler{Turns: r.turns, Route: eventOf}
	return ctrl.NewControllerManagedBy(mgr).
		Named("webhookevent").
		Watches(&hooklinev1.WebhookEvent{}, inTurn).
		Watches(&hooklinev1.WebhookDelivery{}, inTurn).
		WatchesRawSource(source.Channel(r.wakeups, inTurn)).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrent, 1)}).
		Complete(r)
}

// eventOf routes an event not fanned out yet to itself, in its namespace's turn, and
// anything else (an event's later changes, a delivery's, to the event that owns it)
// as bookkeeping: counting what deliveries did waits behind the
// fan-out of new events, which a burst's thousands of counts would otherwise delay
// by seconds.
func eventOf(obj client.Object) (types.NamespacedName, string, bool) {
	switch o := obj.(type) {
	case *hooklinev1.WebhookEvent:
		turn := o.Namespace
		if o.FannedOut() {
			turn = "" // its own status write, or a later change: bookkeeping too
		}
		return types.NamespacedName{Namespace: o.Namespace, Name: o.Name}, turn, true
	case *hooklinev1.WebhookDelivery:
		if owner := metav1.GetControllerOf(o); owner != nil && owner.Kind == "WebhookEvent" {
			return types.NamespacedName{Namespace: o.Namespace, Name: owner.Name}, "", true
		}
	}
	return types.NamespacedName{}, "", false
}
