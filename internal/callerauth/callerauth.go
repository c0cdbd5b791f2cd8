// Package callerauth asks the API server who a caller's token belongs to (TokenReview)
// and whether that user may do something (SubjectAccessReview), so that the manager's
// own APIs authorise exactly as the cluster does: a producer needs a Role, not
// database credentials. Answers are cached briefly.
package callerauth

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TokenHeader carries the caller's token when Authorization cannot: the API server's
// service proxy consumes the Authorization header of the request it proxies.
const TokenHeader = "X-Hookline-Authorization"

// Token is the bearer token of a request: TokenHeader's, or Authorization's.
func Token(r *http.Request) string {
	for _, h := range []string{TokenHeader, "Authorization"} {
		if t, ok := strings.CutPrefix(r.Header.Get(h), "Bearer "); ok && strings.TrimSpace(t) != "" {
			return strings.TrimSpace(t)
		}
	}
	return ""
}

// User is who a token belongs to.
type User struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// Action is what a user asks to do: a verb on a hookline.dev resource in a namespace.
type Action struct {
	Namespace, Verb, Resource string
}

// KubeAuth asks the API server. The manager needs create on tokenreviews and
// subjectaccessreviews (its metrics-auth ClusterRole grants both).
type KubeAuth struct {
	Client kubernetes.Interface
}

// Authenticate reviews a token.
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

// Allowed asks whether u may do the action, with the authorizer's reason.
func (a KubeAuth) Allowed(ctx context.Context, u User, act Action) (bool, string, error) {
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = v
	}
	review, err := a.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Name, UID: u.UID, Groups: u.Groups, Extra: extra,
			ResourceAttributes: &authzv1.ResourceAttributes{Namespace: act.Namespace, Verb: act.Verb, Group: "hookline.dev", Resource: act.Resource},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, "", err
	}
	return review.Status.Allowed, review.Status.Reason, nil
}

// Reviewer is what a KubeAuth does, for tests and the cache.
type Reviewer interface {
	Authenticate(ctx context.Context, token string) (User, bool, error)
	Allowed(ctx context.Context, u User, act Action) (bool, string, error)
}

// Cached remembers answers for TTL: a producer publishing a thousand batches a minute
// costs the API server a review every TTL, not one per batch. A refusal is cached as
// briefly as a grant, so a new RoleBinding takes effect within TTL.
type Cached struct {
	Reviewer Reviewer
	TTL      time.Duration
	Now      func() time.Time

	mu      sync.Mutex
	answers map[cacheKey]cachedAnswer
}

type cacheKey struct {
	token string
	act   Action
}

type cachedAnswer struct {
	user    User
	ok      bool
	allowed bool
	reason  string
	at      time.Time
}

// maxCached bounds the cache: past it, the cache starts over.
const maxCached = 10000

// Authorize authenticates the token and authorises the action; ok is false for an
// unknown token.
func (c *Cached) Authorize(ctx context.Context, token string, act Action) (u User, ok, allowed bool, reason string, err error) {
	now := c.now()
	key := cacheKey{token: token, act: act}
	c.mu.Lock()
	if a, hit := c.answers[key]; hit && now.Sub(a.at) < c.TTL {
		c.mu.Unlock()
		return a.user, a.ok, a.allowed, a.reason, nil
	}
	c.mu.Unlock()
	u, ok, err = c.Reviewer.Authenticate(ctx, token)
	if err != nil {
		return User{}, false, false, "", err
	}
	if ok {
		if allowed, reason, err = c.Reviewer.Allowed(ctx, u, act); err != nil {
			return User{}, false, false, "", err
		}
	}
	c.mu.Lock()
	if c.answers == nil || len(c.answers) >= maxCached {
		c.answers = map[cacheKey]cachedAnswer{}
	}
	c.answers[key] = cachedAnswer{user: u, ok: ok, allowed: allowed, reason: reason, at: now}
	c.mu.Unlock()
	return u, ok, allowed, reason, nil
}

func (c *Cached) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}
