package v1alpha1

import "k8s.io/apimachinery/pkg/api/meta"

// FannedOut reports whether the event has been handled for good: its deliveries were
// made (status.messageId records that), or it was refused. The event controller, the
// pruner and the budget gate all use this one definition.
func (e *WebhookEvent) FannedOut() bool {
	return e.Status.MessageID != "" || e.Refused()
}

// Refused reports whether the event was refused for an invalid payload. A refusal is
// final: nothing of the event changes after it, so it is never written again.
func (e *WebhookEvent) Refused() bool {
	c := meta.FindStatusCondition(e.Status.Conditions, ConditionComplete)
	return c != nil && c.Status == "True" && c.Reason == ReasonInvalidPayload
}
