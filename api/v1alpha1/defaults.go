package v1alpha1

import (
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The contract's defaults, applied in code as well as by the CRD so that objects
// written before a default existed behave the same.

// SigningSecretName is spec.signing.secretName or <endpoint name>-signing-secret.
func (e *WebhookEndpoint) SigningSecretName() string {
	if e.Spec.Signing.SecretName != "" {
		return e.Spec.Signing.SecretName
	}
	return e.Name + DefaultSecretSuffix
}

// SigningScheme is spec.signing.scheme, StandardWebhooks by default.
func (e *WebhookEndpoint) SigningScheme() SigningScheme {
	if e.Spec.Signing.Scheme == "" {
		return SchemeStandardWebhooks
	}
	return e.Spec.Signing.Scheme
}

// SigningAlgorithm is spec.signing.algorithm, or Ed25519 for HTTPMessageSignatures and
// HMAC-SHA256 otherwise.
func (e *WebhookEndpoint) SigningAlgorithm() SigningAlgorithm {
	if e.Spec.Signing.Algorithm != "" {
		return e.Spec.Signing.Algorithm
	}
	if e.SigningScheme() == SchemeHTTPMessageSignatures {
		return AlgorithmEd25519
	}
	return AlgorithmHMACSHA256
}

// HMACTimestampHeader is the header of HMACTimestamp signatures.
func (e *WebhookEndpoint) HMACTimestampHeader() string {
	if e.Spec.Signing.HeaderName != "" {
		return e.Spec.Signing.HeaderName
	}
	return DefaultHMACTimestampHeader
}

// RotationGracePeriod is how long replaced secrets keep signing (24h by default).
func (e *WebhookEndpoint) RotationGracePeriod() time.Duration {
	if e.Spec.Signing.RotationGracePeriod != nil {
		return e.Spec.Signing.RotationGracePeriod.Duration
	}
	return 24 * time.Hour
}

// Timeout bounds each request (15s by default).
func (e *WebhookEndpoint) Timeout() time.Duration {
	if e.Spec.TimeoutSeconds != nil {
		return time.Duration(*e.Spec.TimeoutSeconds) * time.Second
	}
	return 15 * time.Second
}

// RetrySchedule is spec.retry.schedule as durations; empty means the default.
func (e *WebhookEndpoint) RetrySchedule() []time.Duration {
	out := make([]time.Duration, len(e.Spec.Retry.Schedule))
	for i, d := range e.Spec.Retry.Schedule {
		out[i] = d.Duration
	}
	return out
}

// MaxAttempts is spec.retry.maxAttempts, 0 when unset (the default is derived from the
// schedule).
func (e *WebhookEndpoint) MaxAttempts() int {
	if e.Spec.Retry.MaxAttempts != nil {
		return int(*e.Spec.Retry.MaxAttempts)
	}
	return 0
}

// Subscribes reports whether the endpoint receives events of this type.
func (e *WebhookEndpoint) Subscribes(eventType string) bool {
	for _, t := range e.Spec.Events {
		if t == "*" || t == eventType {
			return true
		}
	}
	return false
}

// Disabled reports whether the endpoint was disabled automatically.
func (e *WebhookEndpoint) Disabled() bool { return e.Status.DisabledReason != "" }

// ReadyReason is the reason of the Ready condition when it is current for this
// generation, and "" otherwise.
func (e *WebhookEndpoint) ReadyReason() string {
	c := meta.FindStatusCondition(e.Status.Conditions, ConditionReady)
	if c == nil || c.ObservedGeneration != e.Generation {
		return ""
	}
	return c.Reason
}

// AcceptsDeliveries reports whether deliveries may be sent now: Ready and Active.
func (e *WebhookEndpoint) AcceptsDeliveries() bool {
	c := meta.FindStatusCondition(e.Status.Conditions, ConditionReady)
	return c != nil && c.Status == metav1.ConditionTrue && c.Reason == ReasonActive &&
		c.ObservedGeneration == e.Generation && !e.Spec.Paused && !e.Disabled()
}
