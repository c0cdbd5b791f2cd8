package controllers

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// The endpoint controller works in three steps (cert-manager's readiness controller,
// source-controller's reconcile functions): gather reads what is needed, the pure
// policies below decide, and a short list of actions writes. A policy returns the
// readiness it decides and whether it decides (false: the next one does).

// endpointObservation is what the endpoint controller reads before it decides.
type endpointObservation struct {
	normalizedURL string
	urlErr        error
	urlOwner      string // the endpoint owning the URL in the namespace
	headerProblem string // the first header whose Secret or key is missing
}

// checkURL refuses a URL that cannot be normalised, and http:// unless allowed.
func checkURL(obs endpointObservation, allowInsecureHTTP bool) (readiness, bool) {
	if obs.urlErr != nil {
		return notReady(hooklinev1.ReasonInvalidSpec, fmt.Sprintf("spec.url: %v", obs.urlErr)), true
	}
	if strings.HasPrefix(obs.normalizedURL, "http://") && !allowInsecureHTTP {
		return notReady(hooklinev1.ReasonInvalidSpec, "spec.url is http://: use https://, or run the manager with --allow-insecure-http (local development only)"), true
	}
	return readiness{}, false
}

// checkURLOwner gives a URL held by an older endpoint to that one.
func checkURLOwner(ep *hooklinev1.WebhookEndpoint, obs endpointObservation) (readiness, bool) {
	if obs.urlOwner == ep.Name {
		return readiness{}, false
	}
	return notReady(hooklinev1.ReasonDuplicateURL,
		fmt.Sprintf("WebhookEndpoint %s already holds the URL %s in this namespace; this endpoint receives nothing until that one is deleted or changes its URL", obs.urlOwner, obs.normalizedURL)), true
}

// deliveringReadiness decides between Disabled, Paused and Active, once the URL and
// the secrets are in order.
func deliveringReadiness(ep *hooklinev1.WebhookEndpoint) readiness {
	switch {
	case ep.Disabled():
		return notReady(hooklinev1.ReasonDisabled, disabledMessage(ep))
	case ep.Spec.Paused:
		return readiness{status: metav1.ConditionTrue, reason: hooklinev1.ReasonPaused, message: "paused by spec.paused: nothing new is enqueued and pending retries wait"}
	}
	return readiness{status: metav1.ConditionTrue, reason: hooklinev1.ReasonActive, message: "accepting deliveries"}
}

// secretAction is what the signing Secret needs.
type secretAction int

const (
	secretKeep           secretAction = iota
	secretCreate                      // none exists: a new one, owned by the endpoint
	secretRotate                      // a new rotate token, or our Secret no longer fits the spec
	secretRefuseRotation              // a rotate token on a user's Secret: say what to do instead
	secretRotatedAlready              // the token was acted on; only the status write was lost
	secretUserInvalid                 // a user's Secret that cannot sign
)

// secretPlan is the decision about the signing Secret.
type secretPlan struct {
	action  secretAction
	token   string // the rotate-secret annotation's value
	problem string // secretUserInvalid: for the user, never the value
}

// planSigningSecret decides what the signing Secret needs from the endpoint and the
// Secret as read (nil: it does not exist).
func planSigningSecret(ep *hooklinev1.WebhookEndpoint, secret *corev1.Secret) secretPlan {
	token := ep.Annotations[hooklinev1.AnnotationRotateSecret]
	plan := secretPlan{token: token}
	if secret == nil {
		plan.action = secretCreate
		return plan
	}
	wantsRotation := token != "" && token != ep.Status.LastHandledRotateSecret
	userManaged := !metav1.IsControlledBy(secret, ep)
	if _, _, err := currentKey(secret, ep); err != nil {
		if userManaged {
			plan.action, plan.problem = secretUserInvalid, err.Error()
			return plan
		}
		wantsRotation = true // our own Secret no longer fits the spec (the algorithm changed): replace it
	}
	switch {
	case !wantsRotation:
		plan.action = secretKeep
	case userManaged:
		plan.action = secretRefuseRotation
	case token == "" || secret.Annotations[rotatedForAnnotation] != token:
		// The token is written with the new value: a reconcile working from a stale
		// cache cannot rotate twice for one token.
		plan.action = secretRotate
	default:
		plan.action = secretRotatedAlready
	}
	return plan
}
