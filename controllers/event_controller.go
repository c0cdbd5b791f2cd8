package controllers

import (
	"context"

	"crypto/sha256"
	"encoding/hex"
	"fmt"
	corev1 "k8s.io/api/core/v1"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/conditions"
	"github.com/hookline/hookline/internal/payload"
)

// EventReconciler fans a WebhookEvent out to one WebhookDelivery per subscribed, ready
// endpoint of its namespace, then keeps the event's delivery counts.
type EventReconciler struct {
	client.Client
	Recorder  eventRecorder
	Clock     clock.PassiveClock
	Retention Retention
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

// Retention is how long finished objects are kept.
type Retention struct {
	Succeeded time.Duration
	Failed    time.Duration
}

// +kubebuilder:rbac:groups=hookline.dev,resources=webhookevents,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookevents/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookdeliveries,verbs=get;list;watch;create;delete

// Reconcile fans out once, then counts.
func (r *EventReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var ev hooklinev1.WebhookEvent
	if err := r.Get(ctx, req.NamespacedName, &ev); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	// A complete event is still counted on every change of its deliveries: a manual
	// retry can turn an Exhausted delivery into a Succeeded one long after completion.
	if expired, _ := r.retentionLeft(&ev); expired {
		logf.FromContext(ctx).V(1).Info("pruned: retention passed", "event", req.NamespacedName)
		if err := r.Delete(ctx, &ev, client.Preconditions{UID: &ev.UID}, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
		prunedTotal.WithLabelValues("WebhookEvent").Inc()
		return ctrl.Result{}, nil
	}

	before := ev.DeepCopy()
	st := &ev.Status
	st.ObservedGeneration = ev.Generation
	now := r.Clock.Now()
	progress, fannedOut := r.progress(ev.UID)
	if st.MessageID == "" && !fannedOut {
		if err := payload.Check(ev.Spec.Payload.Raw); err != nil {
			// Admission refuses such a payload; this one got in before it or around it.
			// Reported once: the event is complete and is not looked at again.
			problem := err.Error() + "; nothing was delivered"
			logf.FromContext(ctx).Info("refusing to fan out an invalid event", "event", req.NamespacedName, "problem", problem)
			if r.Recorder != nil {
				r.Recorder.Eventf(&ev, nil, corev1.EventTypeWarning, hooklinev1.ReasonInvalidEvent, "FanOut", "%s", problem)
			}
			conditions.Set(&st.Conditions, ev.Generation, hooklinev1.ConditionComplete, metav1.ConditionTrue, hooklinev1.ReasonInvalidEvent, problem, now)
			st.Deliveries = &hooklinev1.DeliveryCounts{}
			st.CompletionTime = &metav1.Time{Time: now}
			return ctrl.Result{}, r.patchStatus(ctx, before, &ev)
		}
		created, err := r.fanOut(ctx, &ev)
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
	if err := r.patchStatus(ctx, before, &ev); err != nil {
		return ctrl.Result{}, err
	}
	if _, wait := r.retentionLeft(&ev); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	return ctrl.Result{}, nil
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

func (r *EventReconciler) patchStatus(ctx context.Context, before, ev *hooklinev1.WebhookEvent) error {
	if equality.Semantic.DeepEqual(before.Status, ev.Status) {
		return nil
	}
	return client.IgnoreNotFound(r.Status().Patch(ctx, ev, client.MergeFrom(before)))
}

// fanOut creates one delivery per receiving endpoint. Names are derived from the event
// and the endpoint, so running it twice creates nothing new.
func (r *EventReconciler) fanOut(ctx context.Context, ev *hooklinev1.WebhookEvent) (int, error) {
	selector := labels.Everything()
	if ev.Spec.EndpointSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(ev.Spec.EndpointSelector)
		if err != nil {
			return 0, err // admission validated the shape; this is not expected
		}
		selector = s
	}
	var endpoints hooklinev1.WebhookEndpointList
	if err := r.List(ctx, &endpoints, client.InNamespace(ev.Namespace), client.MatchingLabelsSelector{Selector: selector}); err != nil {
		return 0, err
	}
	created := 0
	for i := range endpoints.Items {
		ep := &endpoints.Items[i]
		if ep.DeletionTimestamp != nil || !ep.AcceptsDeliveries() || !ep.Subscribes(ev.Spec.Type) {
			continue
		}
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

// retentionLeft reports whether a complete event's retention has passed, or how long
// is left. An event whose deliveries all failed is kept for the failed retention.
func (r *EventReconciler) retentionLeft(ev *hooklinev1.WebhookEvent) (bool, time.Duration) {
	if ev.Status.CompletionTime == nil {
		return false, 0
	}
	keep := r.Retention.Succeeded
	if c := ev.Status.Deliveries; c != nil && c.Failed+c.Exhausted > 0 {
		keep = r.Retention.Failed
	}
	if keep <= 0 {
		return false, 0
	}
	left := ev.Status.CompletionTime.Add(keep).Sub(r.Clock.Now())
	return left <= 0, left
}

// deliveryName is deterministic per (event, endpoint) and a valid object name.
func deliveryName(eventName, endpointName string) string {
	sum := sha256.Sum256([]byte(endpointName))
	suffix := hex.EncodeToString(sum[:5])
	if len(eventName) > 253-len(suffix)-1 {
		eventName = strings.TrimRight(eventName[:253-len(suffix)-1], ".-")
	}
	return eventName + "-" + suffix
}

// messageID is the webhook-id of an object: stable across attempts and restarts.
func messageID(uid types.UID) string {
	return "msg_" + strings.ReplaceAll(string(uid), "-", "")
}

// SetupWithManager watches events and the deliveries they own.
func (r *EventReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&hooklinev1.WebhookEvent{}).
		Owns(&hooklinev1.WebhookDelivery{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrent, 1)}).
		Named("webhookevent").
		Complete(r)
}
