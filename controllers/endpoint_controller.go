package controllers

import (
	"context"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/conditions"
	"github.com/hookline/hookline/internal/engine"
	"github.com/hookline/hookline/internal/urlkey"
)

// EndpointReconciler keeps a WebhookEndpoint's signing Secret and status true: URL
// ownership within the namespace, the secret, and whether it accepts deliveries.
type EndpointReconciler struct {
	client.Client
	Secrets           engine.SecretReader
	Recorder          eventRecorder
	Clock             clock.PassiveClock
	AllowInsecureHTTP bool
	// SecretMetadata is the metadata-only watch of Secrets: a change of a Secret an
	// endpoint names (a user's signing Secret, a header's) is acted on at once.
	SecretMetadata cache.Cache
	// UserSecretPoll is how often an endpoint whose Secrets are not in order looks again.
	UserSecretPoll time.Duration
}

// +kubebuilder:rbac:groups=hookline.dev,resources=webhookendpoints,verbs=get;list;watch
// +kubebuilder:rbac:groups=hookline.dev,resources=webhookendpoints/status,verbs=get;update;patch
// Secrets are read cluster-wide; writing them is granted per namespace (the ClusterRole
// secret-writer in config/rbac, bound by a RoleBinding in each tenant namespace), so the
// manager holds no cluster-wide Secret write.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile reads the endpoint, computes its status and writes it once.
func (r *EndpointReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var ep hooklinev1.WebhookEndpoint
	if err := r.Get(ctx, req.NamespacedName, &ep); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := ep.DeepCopy()
	st := &ep.Status
	st.ObservedGeneration = ep.Generation

	now := r.Clock.Now()
	// Events wait for the status write: see queuedEvents.
	queued := &queuedEvents{}
	decide := *r
	decide.Recorder = queued
	ready, err := decide.evaluate(ctx, &ep, now)
	if err != nil {
		return ctrl.Result{}, err
	}
	conditions.Set(&st.Conditions, ep.Generation, hooklinev1.ConditionReady, ready.status, ready.reason, ready.message, now)
	if ready.stalled {
		conditions.Set(&st.Conditions, ep.Generation, hooklinev1.ConditionStalled, metav1.ConditionTrue, ready.reason, ready.message, now)
	} else {
		meta.RemoveStatusCondition(&st.Conditions, hooklinev1.ConditionStalled)
	}
	// Applied with the resourceVersion read: a stale copy must not rewrite conditions
	// (and their transition times) that a newer reconcile wrote.
	wrote, err := applyEndpointStatus(ctx, r.Client, before, &ep, fieldManagerEndpoint)
	if isStaleWrite(err) {
		return ctrl.Result{RequeueAfter: conflictRequeue}, nil // reconciled again from the newer copy
	}
	if err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if wrote {
		// Only a change that was written is reported, so a stale copy reports nothing twice.
		decide.recordTransitions(ctx, before, &ep)
	}
	queued.emit(r.Recorder)
	return ctrl.Result{RequeueAfter: ready.requeueAfter}, nil
}

// conflictRequeue is how soon an endpoint whose status write met a newer version is
// looked at again: the cache has usually caught up by then.
const conflictRequeue = 100 * time.Millisecond

// readiness is the computed Ready condition.
type readiness struct {
	status  metav1.ConditionStatus
	reason  string
	message string
	stalled bool // only a user can fix it
	// requeueAfter is when the endpoint must be looked at again without any change
	// (a grace period ends, a user's Secret is due a re-read).
	requeueAfter time.Duration
}

func notReady(reason, message string) readiness {
	return readiness{status: metav1.ConditionFalse, reason: reason, message: message, stalled: true}
}

// evaluate gathers, checks and acts; the first check that decides sets the condition.
func (r *EndpointReconciler) evaluate(ctx context.Context, ep *hooklinev1.WebhookEndpoint, now time.Time) (readiness, error) {
	var obs endpointObservation
	obs.normalizedURL, obs.urlErr = urlkey.Normalize(ep.Spec.URL)
	if ready, decided := checkURL(obs, r.AllowInsecureHTTP); decided {
		return ready, nil // nothing to read for an unusable URL
	}
	if err := r.gather(ctx, ep, &obs); err != nil {
		return readiness{}, err
	}
	if ready, decided := checkURLOwner(ep, obs); decided {
		return ready, nil
	}
	secrets, err := r.ensureSigningSecret(ctx, ep, now)
	if err != nil {
		return readiness{}, err
	}
	if secrets.problem != "" {
		return r.secretInvalid(secrets.problem), nil
	}
	if obs.headerProblem != "" {
		return r.secretInvalid(obs.headerProblem), nil
	}
	ready := deliveringReadiness(ep)
	if ready.reason != hooklinev1.ReasonDisabled {
		if err := r.handleSendTest(ctx, ep); err != nil {
			return readiness{}, err
		}
	}
	ready.requeueAfter = secrets.requeueAfter
	return ready, nil
}

// gather reads what the checks need: who owns the URL, and whether the headers'
// Secrets are there.
func (r *EndpointReconciler) gather(ctx context.Context, ep *hooklinev1.WebhookEndpoint, obs *endpointObservation) error {
	owner, err := r.urlOwner(ctx, ep)
	if err != nil {
		return err
	}
	obs.urlOwner = owner
	obs.headerProblem, err = r.checkHeaderSecrets(ctx, ep)
	return err
}

// DefaultUserSecretPoll is how often an endpoint whose Secrets are not in order looks
// again. Secrets are watched, so this only matters for what no watch reports: a
// RoleBinding that grants the manager Secret writes in the namespace.
const DefaultUserSecretPoll = 30 * time.Second

func (r *EndpointReconciler) secretInvalid(problem string) readiness {
	ready := notReady(hooklinev1.ReasonSecretInvalid, problem)
	ready.requeueAfter = r.UserSecretPoll
	if ready.requeueAfter <= 0 {
		ready.requeueAfter = DefaultUserSecretPoll
	}
	return ready
}

func disabledMessage(ep *hooklinev1.WebhookEndpoint) string {
	what := "it was disabled automatically"
	switch ep.Status.DisabledReason {
	case hooklinev1.DisabledEndpointGone:
		what = "the receiver answered 410 Gone"
	case hooklinev1.DisabledFailingTooLong:
		what = "its deliveries failed for longer than spec.autoDisableAfter"
	}
	return fmt.Sprintf("disabled (%s): %s; set the annotation %s to a new value to enable it again",
		ep.Status.DisabledReason, what, hooklinev1.AnnotationEnable)
}

// urlOwner returns the name of the endpoint that owns this endpoint's URL in its
// namespace: the oldest, then the smallest name.
func (r *EndpointReconciler) urlOwner(ctx context.Context, ep *hooklinev1.WebhookEndpoint) (string, error) {
	var list hooklinev1.WebhookEndpointList
	if err := r.List(ctx, &list, client.InNamespace(ep.Namespace), client.MatchingFields{indexEndpointURL: endpointURLKey(ep)}); err != nil {
		return "", err
	}
	candidates := []hooklinev1.WebhookEndpoint{*ep}
	for _, other := range list.Items {
		if other.Name != ep.Name && other.DeletionTimestamp == nil {
			candidates = append(candidates, other)
		}
	}
	sort.Slice(candidates, func(i, j int) bool {
		return urlkey.OwnsBefore(urlkey.Holder{Name: candidates[i].Name, Created: candidates[i].CreationTimestamp.Time},
			urlkey.Holder{Name: candidates[j].Name, Created: candidates[j].CreationTimestamp.Time})
	})
	return candidates[0].Name, nil
}

// checkHeaderSecrets reports the first header whose Secret or key is missing.
func (r *EndpointReconciler) checkHeaderSecrets(ctx context.Context, ep *hooklinev1.WebhookEndpoint) (string, error) {
	for _, h := range ep.Spec.Headers {
		if h.ValueFrom == nil {
			continue
		}
		ref := h.ValueFrom.SecretKeyRef
		secret, err := r.Secrets.Get(ctx, ep.Namespace, ref.Name)
		if apierrors.IsNotFound(err) {
			return fmt.Sprintf("header %s: Secret %s not found; deliveries wait until it exists", h.Name, ref.Name), nil
		}
		if err != nil {
			return "", err
		}
		if _, ok := secret.Data[ref.Key]; !ok {
			return fmt.Sprintf("header %s: Secret %s has no key %q; deliveries wait until it has", h.Name, ref.Name, ref.Key), nil
		}
	}
	return "", nil
}

// handleSendTest acts on a new hookline.dev/send-test token: one delivery of type
// hookline.test, whatever the subscriptions.
func (r *EndpointReconciler) handleSendTest(ctx context.Context, ep *hooklinev1.WebhookEndpoint) error {
	token := ep.Annotations[hooklinev1.AnnotationSendTest]
	if token == "" || token == ep.Status.LastHandledSendTest {
		return nil
	}
	d := newTestDelivery(ep, token)
	if err := controllerutil.SetOwnerReference(ep, d, r.Scheme()); err != nil {
		return err
	}
	if err := r.Create(ctx, d); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	ep.Status.LastHandledSendTest = token
	return nil
}

// recordTransitions logs a change of readiness and emits Kubernetes Events for the
// changes a user wants to hear about.
func (r *EndpointReconciler) recordTransitions(ctx context.Context, before, after *hooklinev1.WebhookEndpoint) {
	was := meta.FindStatusCondition(before.Status.Conditions, hooklinev1.ConditionReady)
	now := meta.FindStatusCondition(after.Status.Conditions, hooklinev1.ConditionReady)
	if now == nil || (was != nil && was.Reason == now.Reason) {
		return
	}
	from := ""
	if was != nil {
		from = was.Reason
	}
	logf.FromContext(ctx).V(1).Info("readiness changed", "endpoint", client.ObjectKeyFromObject(after), "from", from, "to", now.Reason, "message", now.Message)
	switch now.Reason {
	case hooklinev1.ReasonDuplicateURL:
		r.Recorder.Eventf(after, nil, corev1.EventTypeWarning, hooklinev1.ReasonDuplicateURL, "CheckURL", "%s", now.Message)
	case hooklinev1.ReasonDisabled:
		r.Recorder.Eventf(after, nil, corev1.EventTypeWarning, hooklinev1.EventDisabled, "Disable", "%s", now.Message)
	}
}

// SetupWithManager watches endpoints, the Secrets they own, and the other endpoints of
// the same URL so that deleting an owner hands the URL on.
func (r *EndpointReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&hooklinev1.WebhookEndpoint{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, disabledChanged()))).
		Owns(&corev1.Secret{}).
		WatchesRawSource(source.Kind(r.SecretMetadata, secretMetadata(),
			handler.TypedEnqueueRequestsFromMapFunc(r.endpointsNamingSecret))).
		Watches(&hooklinev1.WebhookEndpoint{}, handler.EnqueueRequestsFromMapFunc(r.sameURLEndpoints)).
		Named("webhookendpoint").
		Complete(r)
}

// sameURLEndpoints maps an endpoint to the others holding its URL.
func (r *EndpointReconciler) sameURLEndpoints(ctx context.Context, o client.Object) []reconcile.Request {
	ep := o.(*hooklinev1.WebhookEndpoint)
	key := endpointURLKey(ep)
	if key == "" {
		return nil
	}
	var list hooklinev1.WebhookEndpointList
	if err := r.List(ctx, &list, client.InNamespace(ep.Namespace), client.MatchingFields{indexEndpointURL: key}); err != nil {
		logf.FromContext(ctx).Error(err, "list endpoints by URL")
		return nil
	}
	var out []reconcile.Request
	for _, other := range list.Items {
		if other.Name != ep.Name {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: other.Namespace, Name: other.Name}})
		}
	}
	return out
}

// endpointsNamingSecret maps a change of a Secret hookline does not own to the
// endpoints that name it, after dropping what the manager held of it.
func (r *EndpointReconciler) endpointsNamingSecret(ctx context.Context, s *metav1.PartialObjectMetadata) []reconcile.Request {
	if isManagedSecret(s) {
		return nil // cached in full and watched by Owns
	}
	if r.Secrets.User != nil {
		r.Secrets.User.Forget(types.NamespacedName{Namespace: s.Namespace, Name: s.Name})
	}
	var list hooklinev1.WebhookEndpointList
	if err := r.List(ctx, &list, client.InNamespace(s.Namespace), client.MatchingFields{indexEndpointSecrets: s.Name}); err != nil {
		logf.FromContext(ctx).Error(err, "list endpoints naming a Secret")
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, ep := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}})
	}
	return out
}
