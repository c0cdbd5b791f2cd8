package historyapi

import (
	"context"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// KubeAuth asks the API server: a TokenReview for the token, a SubjectAccessReview
// for "list webhookdeliveries.hookline.dev" in the namespace. The manager needs
// create on both (the archive component's ClusterRole).
type KubeAuth struct {
	Client kubernetes.Interface
}

func (a KubeAuth) Authenticate(ctx context.Context, token string) (User, bool, error) {
	review, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return User{}, false, err
	}
	if !review.Status.Authenticated {
		return User{}, false, nil
	}
	u := review.Status.User
	extra := map[string][]string{}
	for k, v := range u.Extra {
		extra[k] = v
	}
	return User{Name: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra}, true, nil
}

func (a KubeAuth) MayList(ctx context.Context, u User, namespace string) (bool, string, error) {
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = v
	}
	review, err := a.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Name, UID: u.UID, Groups: u.Groups, Extra: extra,
			ResourceAttributes: &authzv1.ResourceAttributes{Namespace: namespace, Verb: "list", Group: "hookline.dev", Resource: "webhookdeliveries"},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, "", err
	}
	return review.Status.Allowed, review.Status.Reason, nil
}
