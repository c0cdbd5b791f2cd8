package historyapi

import (
	"context"

	"github.com/hookline/hookline/internal/callerauth"
)

// KubeAuth asks the API server: a TokenReview for the token, a SubjectAccessReview
// for "list webhookdeliveries.hookline.dev" in the namespace.
type KubeAuth struct {
	callerauth.KubeAuth
}

// MayList asks whether u may list deliveries in namespace.
func (a KubeAuth) MayList(ctx context.Context, u User, namespace string) (bool, string, error) {
	return a.Allowed(ctx, u, callerauth.Action{Namespace: namespace, Verb: "list", Resource: "webhookdeliveries"})
}
