package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// EnableReconciler enables a disabled endpoint again on the user's word (a new
// hookline.dev/enable token, or a change of the spec), through the health recorder
// that owns the fields involved. The endpoint controller then sees disabledReason
// cleared and makes the endpoint Ready.
type EnableReconciler struct {
	client.Client
	health   *endpointHealth
	Recorder eventRecorder
}

func (r *EnableReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var ep hooklinev1.WebhookEndpoint
	if err := r.Get(ctx, req.NamespacedName, &ep); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	token := ep.Annotations[hooklinev1.AnnotationEnable]
	if enableReason(&ep) == "" && (token == "" || token == ep.Status.LastHandledEnable) {
		return ctrl.Result{}, nil // nothing to do, as far as the cache knows
	}
	why, err := r.health.enable(ctx, req.NamespacedName)
	if err != nil {
		return ctrl.Result{}, err
	}
	if why != "" {
		logf.FromContext(ctx).V(1).Info("re-enabled", "endpoint", req.NamespacedName, "by", why)
		r.Recorder.Eventf(&ep, nil, corev1.EventTypeNormal, hooklinev1.EventEnabled, "Enable", "enabled again by %s", why)
	}
	return ctrl.Result{}, nil
}

// SetupWithManager watches endpoints whose spec or annotations changed.
func (r *EnableReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&hooklinev1.WebhookEndpoint{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Named("webhookendpoint-enable").
		Complete(r)
}
