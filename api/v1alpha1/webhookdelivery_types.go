package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// DeliveryPhase is where a delivery is in its life.
// +kubebuilder:validation:Enum=Pending;Retrying;Succeeded;Failed;Exhausted
type DeliveryPhase string

const (
	PhasePending   DeliveryPhase = "Pending"
	PhaseRetrying  DeliveryPhase = "Retrying"
	PhaseSucceeded DeliveryPhase = "Succeeded"
	PhaseFailed    DeliveryPhase = "Failed"
	PhaseExhausted DeliveryPhase = "Exhausted"
)

// Finished reports whether no further attempt will be made without a manual retry.
func (p DeliveryPhase) Finished() bool {
	return p == PhaseSucceeded || p == PhaseFailed || p == PhaseExhausted
}

// LocalRef names an object in the same namespace.
type LocalRef struct {
	// Name of the object.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// WebhookDeliverySpec is one message to one endpoint; it is immutable once created.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable: create a new WebhookDelivery instead"
// +kubebuilder:validation:XValidation:rule="has(self.payload) != has(self.eventRef)",message="set exactly one of payload and eventRef"
type WebhookDeliverySpec struct {
	// EndpointRef is the endpoint to deliver to.
	// +required
	EndpointRef LocalRef `json:"endpointRef"`

	// EventType is the type of the message, like order.created.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z][a-z0-9_]*(\\\\.[a-z0-9_]+)*$')",message="eventType must be lower-case and dotted like order.created (pattern ^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)*$)"
	EventType string `json:"eventType"`

	// Payload is the JSON object delivered as "data" (deliveries created directly).
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Type=object
	// +kubebuilder:validation:Schemaless
	// +mapType=atomic
	Payload *runtime.RawExtension `json:"payload,omitempty"`

	// EventRef is the WebhookEvent whose payload is delivered (deliveries made by fan-out),
	// so a fan-out to N endpoints stores the payload once.
	// +optional
	EventRef *LocalRef `json:"eventRef,omitempty"`
}

// AttemptRecord is one attempt of a delivery.
type AttemptRecord struct {
	// Time is when the attempt was made, to the microsecond.
	Time metav1.MicroTime `json:"time"`
	// DurationMs is how long the receiver took to answer (or the attempt to fail).
	// +optional
	DurationMs int64 `json:"durationMs,omitempty"`
	// StatusCode is the receiver's HTTP status; absent when no answer came.
	// +optional
	StatusCode int32 `json:"statusCode,omitempty"`
	// Error says why the attempt failed when no HTTP status explains it.
	// +optional
	Error string `json:"error,omitempty"`
	// Response is the start of the response body as printable UTF-8 (invalid bytes and
	// control characters other than newline and tab become U+FFFD), at most 1 KiB as
	// stored.
	// +optional
	Response string `json:"response,omitempty"`
}

// WebhookDeliveryStatus is the fate of the delivery.
type WebhookDeliveryStatus struct {
	// ObservedGeneration is the generation the manager last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase: Pending, Retrying, Succeeded, Failed (not retried: 410 Gone, endpoint
	// deleted or disabled, a bad payload, a blocked address) or Exhausted (maxAttempts
	// reached).
	// +optional
	Phase DeliveryPhase `json:"phase,omitempty"`
	// MessageID is the webhook-id: the same on every attempt and endpoint.
	// +optional
	MessageID string `json:"messageId,omitempty"`
	// Attempts counts the attempts made (since the last manual retry).
	// +optional
	Attempts int32 `json:"attempts,omitempty"`
	// ResponseStatusCode is the HTTP status of the last attempt; absent when no answer came.
	// +optional
	ResponseStatusCode int32 `json:"responseStatusCode,omitempty"`
	// LastAttemptTime is when the last attempt was made. Attempt times have
	// microseconds: retries can be seconds apart and latency matters.
	// +optional
	LastAttemptTime *metav1.MicroTime `json:"lastAttemptTime,omitempty"`
	// NextAttemptTime is when the next attempt is due, while Retrying.
	// +optional
	NextAttemptTime *metav1.MicroTime `json:"nextAttemptTime,omitempty"`
	// CompletionTime is when the delivery finished (Succeeded, Failed or Exhausted);
	// retention counts from it.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// Signature is the signature header sent last.
	// +optional
	Signature string `json:"signature,omitempty"`
	// History holds the last 10 attempts, newest last.
	// +optional
	// +kubebuilder:validation:MaxItems=10
	History []AttemptRecord `json:"history,omitempty"`
	// LastHandledRetry is the hookline.dev/retry token last acted on.
	// +optional
	LastHandledRetry string `json:"lastHandledRetry,omitempty"`
	// Conditions: Succeeded (True: Delivered; Unknown: Retrying, Waiting; False:
	// MaxAttemptsReached, EndpointGone, EndpointDeleted, EndpointDisabled, BlockedAddress,
	// BadPayload), with a message that says what happened and what to do.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// WebhookDelivery is one message to one endpoint, signed, sent and retried by the manager.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whd,categories=hookline
// +kubebuilder:selectablefield:JSONPath=`.status.phase`
// +kubebuilder:selectablefield:JSONPath=`.spec.endpointRef.name`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.spec.endpointRef.name`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.eventType`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Attempts",type=integer,JSONPath=`.status.attempts`
// +kubebuilder:printcolumn:name="Code",type=integer,JSONPath=`.status.responseStatusCode`
// +kubebuilder:printcolumn:name="Next attempt",type=date,JSONPath=`.status.nextAttemptTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WebhookDelivery struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WebhookDeliverySpec `json:"spec"`
	// +optional
	Status WebhookDeliveryStatus `json:"status,omitempty"`
}

// WebhookDeliveryList is a list of WebhookDeliveries.
// +kubebuilder:object:root=true
type WebhookDeliveryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookDelivery `json:"items"`
}

func init() {
	SchemeBuilder.Register(&WebhookDelivery{}, &WebhookDeliveryList{})
}
