package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
)

// FannedOut reports whether the event has been handled for good: its deliveries were
// made (status.messageId records that), or it was refused. The event controller, the
// pruner and the budget gate all use this one definition.
func (e *WebhookEvent) FannedOut() bool {
	return e.Status.MessageID != "" || e.Refused()
}

// Queued reports whether the event's fan-out went to the PostgreSQL delivery store,
// which keeps its deliveries from then on: the event itself is final.
func (e *WebhookEvent) Queued() bool {
	return e.completeWith(ReasonQueued)
}

// Refused reports whether the event was refused for an invalid payload. A refusal is
// final: nothing of the event changes after it, so it is never written again.
func (e *WebhookEvent) Refused() bool {
	return e.completeWith(ReasonInvalidPayload)
}

func (e *WebhookEvent) completeWith(reason string) bool {
	c := meta.FindStatusCondition(e.Status.Conditions, ConditionComplete)
	return c != nil && c.Status == "True" && c.Reason == reason
}

// DeliveryName is the name of the delivery of an event to an endpoint: deterministic,
// so that a fan-out run twice makes nothing new, and a valid object name. Both stores
// name deliveries so.
func DeliveryName(eventName, endpointName string) string {
	sum := sha256.Sum256([]byte(endpointName))
	suffix := hex.EncodeToString(sum[:5])
	if len(eventName) > 253-len(suffix)-1 {
		eventName = strings.TrimRight(eventName[:253-len(suffix)-1], ".-")
	}
	return eventName + "-" + suffix
}
