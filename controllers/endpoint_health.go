package controllers

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
)

// successRefresh bounds how often a healthy endpoint's lastSuccessTime is rewritten, so
// a busy endpoint does not cost one endpoint write per delivery.
const successRefresh = time.Minute

// recordEndpointHealth keeps the endpoint's failure record: consecutive failures, last
// success and failure, and disables it on 410 Gone or after autoDisableAfter of
// failures with no success. Several deliveries of one endpoint finish concurrently, so
// the write is read-modify-write against the API server with an optimistic lock.
func (r *DeliveryReconciler) recordEndpointHealth(ctx context.Context, cached *hooklinev1.WebhookEndpoint, outcome delivery.Outcome, now time.Time) error {
	if outcome == delivery.Succeeded && !needsSuccessWrite(&cached.Status, now) {
		return nil
	}
	if outcome == delivery.Invalid {
		return nil // nothing the receiver did
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var ep hooklinev1.WebhookEndpoint
		if err := r.Live.Get(ctx, types.NamespacedName{Namespace: cached.Namespace, Name: cached.Name}, &ep); err != nil {
			return client.IgnoreNotFound(err)
		}
		before := ep.DeepCopy()
		st := &ep.Status
		at := metav1.NewTime(now)
		switch outcome {
		case delivery.Succeeded:
			if !needsSuccessWrite(st, now) {
				return nil
			}
			st.ConsecutiveFailures, st.FailingSince, st.LastSuccessTime = 0, nil, &at
		case delivery.Gone:
			st.LastFailureTime = &at
			st.ConsecutiveFailures++
			if st.DisabledReason == "" {
				st.DisabledReason = hooklinev1.DisabledEndpointGone
			}
		default: // Retry, Blocked
			st.LastFailureTime = &at
			st.ConsecutiveFailures++
			if st.FailingSince == nil {
				st.FailingSince = &at
			}
			if limit := ep.Spec.AutoDisableAfter; limit != nil && st.DisabledReason == "" && now.Sub(st.FailingSince.Time) >= limit.Duration {
				st.DisabledReason = hooklinev1.DisabledFailingTooLong
			}
		}
		return r.Status().Patch(ctx, &ep, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
	})
}

func needsSuccessWrite(st *hooklinev1.WebhookEndpointStatus, now time.Time) bool {
	return st.ConsecutiveFailures != 0 || st.FailingSince != nil || st.LastSuccessTime == nil ||
		now.Sub(st.LastSuccessTime.Time) >= successRefresh
}
