package historyapi

import "github.com/hookline/hookline/internal/callerauth"

// KubeAuth asks the API server: a TokenReview for the token, a SubjectAccessReview for
// the action (list webhookdeliveries to read, patch to retry).
type KubeAuth struct {
	callerauth.KubeAuth
}
