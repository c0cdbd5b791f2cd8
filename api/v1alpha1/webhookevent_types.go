package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// WebhookEventSpec is one event, published once and fanned out to every subscribed
// endpoint of the namespace. The event's name is its idempotency key.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable: publish a new WebhookEvent instead"
type WebhookEventSpec struct {
	// Type of the event, like order.created.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z][a-z0-9_]*(\\\\.[a-z0-9_]+)*$')",message="type must be lower-case and dotted like order.created (pattern ^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)*$)"
	Type string `json:"type"`

	// Payload is the JSON object delivered as "data", at most 256 KiB.
	// +required
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Type=object
	// +kubebuilder:validation:Schemaless
	// +mapType=atomic
	Payload runtime.RawExtension `json:"payload"`

	// EndpointSelector limits the fan-out to endpoints with these labels.
	// +optional
	EndpointSelector *metav1.LabelSelector `json:"endpointSelector,omitempty"`
}

// DeliveryCounts counts an event's deliveries by phase. Every counter is written,
// zeros included, once the event has been fanned out (an event that reaches no
// endpoint reads total: 0). The fields are optional because status is written by
// merge patch, which leaves unchanged counters out of the request.
type DeliveryCounts struct {
	// Total is the number of deliveries the fan-out made.
	// +optional
	Total int32 `json:"total"`
	// Pending deliveries have not been attempted yet (or wait for their endpoint).
	// +optional
	Pending int32 `json:"pending"`
	// Retrying deliveries failed an attempt and wait for the next.
	// +optional
	Retrying int32 `json:"retrying"`
	// Succeeded deliveries were accepted by their receiver (2xx).
	// +optional
	Succeeded int32 `json:"succeeded"`
	// Failed deliveries will not be retried without hookline.dev/retry.
	// +optional
	Failed int32 `json:"failed"`
	// Exhausted deliveries used every attempt of their endpoint's retry policy.
	// +optional
	Exhausted int32 `json:"exhausted"`
}

// WebhookEventStatus is the fate of the event's deliveries.
type WebhookEventStatus struct {
	// ObservedGeneration is the generation the manager last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// MessageID is the webhook-id shared by all of the event's deliveries.
	// +optional
	MessageID string `json:"messageId,omitempty"`
	// Deliveries counts the event's deliveries by phase; absent until the fan-out ran.
	// +optional
	Deliveries *DeliveryCounts `json:"deliveries,omitempty"`
	// CompletionTime is when every delivery had finished.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// Conditions: Complete. True: AllSucceeded, SomeFailed, NoEndpoints, or
	// InvalidPayload (refused once, nothing delivered); False: InProgress, or
	// WaitingForBudget (the fan-out waits for room in the manager's etcd budget).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// WebhookEvent is an event to send to every subscribed endpoint of its namespace.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whev,categories=hookline
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="Deliveries",type=integer,JSONPath=`.status.deliveries.total`
// +kubebuilder:printcolumn:name="Succeeded",type=integer,JSONPath=`.status.deliveries.succeeded`,priority=1
// +kubebuilder:printcolumn:name="Complete",type=string,JSONPath=`.status.conditions[?(@.type=="Complete")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WebhookEvent struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WebhookEventSpec `json:"spec"`
	// +optional
	Status WebhookEventStatus `json:"status,omitempty"`
}

// WebhookEventList is a list of WebhookEvents.
// +kubebuilder:object:root=true
type WebhookEventList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookEvent `json:"items"`
}

func init() {
	SchemeBuilder.Register(&WebhookEvent{}, &WebhookEventList{})
}
