package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SigningScheme names how requests are signed.
// +kubebuilder:validation:Enum=StandardWebhooks;HMACTimestamp;HTTPMessageSignatures
type SigningScheme string

const (
	SchemeStandardWebhooks      SigningScheme = "StandardWebhooks"
	SchemeHMACTimestamp         SigningScheme = "HMACTimestamp"
	SchemeHTTPMessageSignatures SigningScheme = "HTTPMessageSignatures"
)

// SigningAlgorithm names the signature algorithm.
// +kubebuilder:validation:Enum=HMAC-SHA256;Ed25519
type SigningAlgorithm string

const (
	AlgorithmHMACSHA256 SigningAlgorithm = "HMAC-SHA256"
	AlgorithmEd25519    SigningAlgorithm = "Ed25519"
)

// DefaultHMACTimestampHeader is the header HMACTimestamp signatures go in by default.
const DefaultHMACTimestampHeader = "Hookline-Signature"

// WebhookEndpointSpec is a receiver's URL, what it subscribes to and how it is signed.
// +kubebuilder:validation:XValidation:rule="!has(self.headers) || self.headers.all(h, h.name.lowerAscii() != ((has(self.signing) && has(self.signing.headerName)) ? self.signing.headerName : 'Hookline-Signature').lowerAscii())",message="headers: a header name may not repeat the signature header of the HMACTimestamp scheme"
type WebhookEndpointSpec struct {
	// URL the deliveries are POSTed to. https:// is required unless the manager runs
	// with --allow-insecure-http.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="url must be an absolute http:// or https:// URL with a host, like https://example.com/hooks"
	// +kubebuilder:validation:XValidation:rule="!self.contains('#')",message="url must not contain a fragment (#...)"
	URL string `json:"url"`

	// Events are the event types this endpoint receives: 1 to 100 explicit names such as
	// order.created, or ["*"] alone for every type.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.all(e, e == '*' || e.matches('^[a-z][a-z0-9_]*(\\\\.[a-z0-9_]+)*$'))",message="events: each name must be lower-case and dotted like order.created (pattern ^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)*$); numeric codes and wildcard fragments such as order.* are not supported, use [\"*\"] alone for every type"
	// +kubebuilder:validation:XValidation:rule="!('*' in self) || size(self) == 1",message="events: \"*\" subscribes to every type and must be the only entry"
	Events []string `json:"events"`

	// Description is free text for humans.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Description string `json:"description,omitempty"`

	// Paused stops new deliveries from being enqueued; pending retries wait until unpaused.
	// +optional
	// +kubebuilder:default=false
	Paused bool `json:"paused,omitempty"`

	// Metadata is free key/value data kept with the endpoint.
	// +optional
	// +kubebuilder:validation:MaxProperties=50
	// +kubebuilder:validation:XValidation:rule="self.all(k, size(k) <= 40 && size(self[k]) <= 500)",message="metadata: keys are at most 40 characters and values at most 500"
	Metadata map[string]string `json:"metadata,omitempty"`

	// TimeoutSeconds bounds each whole request.
	// +optional
	// +kubebuilder:default=15
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=60
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`

	// Headers are extra request headers sent with every delivery.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=20
	Headers []EndpointHeader `json:"headers,omitempty"`

	// Signing says how requests are signed and where the secret lives.
	// +optional
	// +kubebuilder:default={}
	Signing SigningSpec `json:"signing,omitempty"`

	// Retry is the retry schedule after failed attempts.
	// +optional
	// +kubebuilder:default={}
	Retry RetrySpec `json:"retry,omitempty"`

	// RateLimit caps attempts towards this endpoint.
	// +optional
	RateLimit *RateLimitSpec `json:"rateLimit,omitempty"`

	// AutoDisableAfter disables the endpoint when it has failed with no success for this
	// long since the first failure.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s')",message="autoDisableAfter must be at least 1s"
	AutoDisableAfter *metav1.Duration `json:"autoDisableAfter,omitempty"`

	// SuccessfulDeliveriesHistoryLimit is the number of Succeeded deliveries to this
	// endpoint kept in the cluster, newest first (default: the manager's
	// --history-succeeded-per-endpoint). Older ones are deleted with their event once
	// all of the event's deliveries have finished.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	SuccessfulDeliveriesHistoryLimit *int32 `json:"successfulDeliveriesHistoryLimit,omitempty"`

	// FailedDeliveriesHistoryLimit is the same for Failed and Exhausted deliveries
	// (default: the manager's --history-failed-per-endpoint).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	FailedDeliveriesHistoryLimit *int32 `json:"failedDeliveriesHistoryLimit,omitempty"`
}

// EndpointHeader is one extra request header, given inline or from a Secret.
// +kubebuilder:validation:XValidation:rule="has(self.value) != has(self.valueFrom)",message="headers: set exactly one of value and valueFrom"
// +kubebuilder:validation:XValidation:rule="!(self.name.lowerAscii() in ['webhook-id', 'webhook-timestamp', 'webhook-signature', 'content-digest', 'signature', 'signature-input', 'content-type', 'host', 'content-length'])",message="headers: this name is set by hookline itself (signing, content-type, host, content-length) and cannot be overridden"
type EndpointHeader struct {
	// Name of the header.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&'*+.^_|~-]+$`
	Name string `json:"name"`

	// Value of the header.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Value *string `json:"value,omitempty"`

	// ValueFrom takes the value from a Secret of the endpoint's namespace.
	// +optional
	ValueFrom *HeaderValueSource `json:"valueFrom,omitempty"`
}

// HeaderValueSource is where a header's value comes from.
type HeaderValueSource struct {
	// SecretKeyRef selects a key of a Secret in the endpoint's namespace.
	// +required
	SecretKeyRef SecretKeyReference `json:"secretKeyRef"`
}

// SecretKeyReference names a key of a Secret in the same namespace.
type SecretKeyReference struct {
	// Name of the Secret, in the endpoint's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Key of the Secret's data whose value is the header's value.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// SigningSpec says how requests are signed.
// +kubebuilder:validation:XValidation:rule="!(self.scheme == 'HMACTimestamp' && has(self.algorithm) && self.algorithm == 'Ed25519')",message="signing: HMACTimestamp signs with HMAC-SHA256 only; use StandardWebhooks or HTTPMessageSignatures for Ed25519"
// +kubebuilder:validation:XValidation:rule="!(self.scheme == 'HTTPMessageSignatures' && has(self.algorithm) && self.algorithm == 'HMAC-SHA256')",message="signing: HTTPMessageSignatures signs with Ed25519 only"
// +kubebuilder:validation:XValidation:rule="!has(self.headerName) || self.scheme == 'HMACTimestamp'",message="signing: headerName applies to the HMACTimestamp scheme only"
type SigningSpec struct {
	// Scheme is the wire format of the signature.
	// +optional
	// +kubebuilder:default=StandardWebhooks
	Scheme SigningScheme `json:"scheme,omitempty"`

	// Algorithm defaults to Ed25519 for HTTPMessageSignatures and HMAC-SHA256 otherwise.
	// +optional
	Algorithm SigningAlgorithm `json:"algorithm,omitempty"`

	// SecretName is the Secret holding the signing secret; default <endpoint name>-signing-secret.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SecretName string `json:"secretName,omitempty"`

	// RotationGracePeriod is how long a replaced secret keeps signing.
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('168h')",message="rotationGracePeriod must be between 0s and 168h"
	RotationGracePeriod *metav1.Duration `json:"rotationGracePeriod,omitempty"`

	// HeaderName is the signature header of the HMACTimestamp scheme; default Hookline-Signature.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&'*+.^_|~-]+$`
	// +kubebuilder:validation:XValidation:rule="!(self.lowerAscii() in ['webhook-id', 'webhook-timestamp', 'webhook-signature', 'content-digest', 'signature', 'signature-input', 'content-type', 'host', 'content-length'])",message="signing.headerName may not be one of the headers hookline sets itself"
	HeaderName string `json:"headerName,omitempty"`
}

// RetrySpec is the retry schedule.
type RetrySpec struct {
	// Schedule is the delay after each failed attempt; the last delay repeats.
	// +optional
	// +kubebuilder:default={"5s","5m","30m","2h","5h","10h","10h"}
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=50
	// +kubebuilder:validation:XValidation:rule="self.all(d, duration(d) >= duration('0s') && duration(d) <= duration('168h'))",message="retry.schedule: each delay must be between 0s and 168h"
	Schedule []metav1.Duration `json:"schedule,omitempty"`

	// MaxAttempts is the number of attempts before a delivery is Exhausted; default
	// len(schedule)+1.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=50
	MaxAttempts *int32 `json:"maxAttempts,omitempty"`
}

// RateLimitSpec caps attempts towards one endpoint.
type RateLimitSpec struct {
	// PerSecond is attempts per second, evenly spaced (no burst).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	PerSecond *int32 `json:"perSecond,omitempty"`

	// MaxInFlight is the number of concurrent requests.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	MaxInFlight *int32 `json:"maxInFlight,omitempty"`
}

// WebhookEndpointStatus is what the manager observed and did. Every field has one
// writer, named in its comment: the endpoint controller (URL, secrets, readiness,
// one-shot actions) or the health recorder (what deliveries met at the receiver,
// disabling and re-enabling). Each writes only its own fields, so neither undoes the
// other's write.
type WebhookEndpointStatus struct {
	// ObservedGeneration is the generation the endpoint controller last acted on.
	// Written by the endpoint controller.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready (True: Active or Paused; False: DuplicateURL, InvalidSpec,
	// SecretInvalid, Disabled), Stalled=True when only a user can fix the endpoint, and
	// SecretRotation (Rotated, UserManagedSecret) after a rotation request.
	// Written by the endpoint controller.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// SecretName is the Secret whose value signs (spec.signing.secretName or its default).
	// Written by the endpoint controller.
	// +optional
	SecretName string `json:"secretName,omitempty"`
	// SecretHint is the first 8 characters of the current secret and "...", never more.
	// Written by the endpoint controller.
	// +optional
	SecretHint string `json:"secretHint,omitempty"`
	// PublicKey is the Ed25519 verification key (whpk_...), safe to share; Ed25519 only.
	// Written by the endpoint controller.
	// +optional
	PublicKey string `json:"publicKey,omitempty"`
	// PublicKeyID is the keyid HTTPMessageSignatures sends; Ed25519 only.
	// Written by the endpoint controller.
	// +optional
	PublicKeyID string `json:"publicKeyID,omitempty"`

	// LastRotationTime is when the current secret replaced the previous one.
	// Written by the endpoint controller.
	// +optional
	LastRotationTime *metav1.Time `json:"lastRotationTime,omitempty"`
	// LastHandledRotateSecret is the hookline.dev/rotate-secret token last acted on.
	// Written by the endpoint controller.
	// +optional
	LastHandledRotateSecret string `json:"lastHandledRotateSecret,omitempty"`
	// LastHandledEnable is the hookline.dev/enable token last acted on.
	// Written by the health recorder.
	// +optional
	LastHandledEnable string `json:"lastHandledEnable,omitempty"`
	// LastHandledSendTest is the hookline.dev/send-test token last acted on.
	// Written by the endpoint controller.
	// +optional
	LastHandledSendTest string `json:"lastHandledSendTest,omitempty"`
	// PreviousSecretsExpireAt is the end of the grace period, while one runs: until
	// then the previous secrets sign too.
	// Written by the endpoint controller.
	// +optional
	PreviousSecretsExpireAt *metav1.Time `json:"previousSecretsExpireAt,omitempty"`

	// ConsecutiveFailures counts the failed attempts since the last success.
	// Written by the health recorder.
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`
	// LastSuccessTime is the latest successful attempt (rewritten at most once a minute).
	// Written by the health recorder.
	// +optional
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`
	// LastFailureTime is the latest failed attempt.
	// Written by the health recorder.
	// +optional
	LastFailureTime *metav1.Time `json:"lastFailureTime,omitempty"`
	// FailingSince is the first failure with no success after it: the clock of
	// spec.autoDisableAfter.
	// Written by the health recorder.
	// +optional
	FailingSince *metav1.Time `json:"failingSince,omitempty"`
	// DisabledReason is EndpointGone (the receiver answered 410) or FailingTooLong
	// (failing for spec.autoDisableAfter) while the endpoint is disabled.
	// Written by the health recorder.
	// +optional
	DisabledReason string `json:"disabledReason,omitempty"`
	// DisabledGeneration is the endpoint's generation when it was disabled: a change of
	// the spec after it (a fixed URL, say) enables the endpoint again.
	// Written by the health recorder.
	// +optional
	DisabledGeneration int64 `json:"disabledGeneration,omitempty"`
}

// WebhookEndpoint is a receiver of webhooks: a URL, its subscriptions and its signing secret.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whe,categories=hookline
// +kubebuilder:selectablefield:JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Paused",type=boolean,JSONPath=`.spec.paused`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WebhookEndpoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WebhookEndpointSpec `json:"spec"`
	// +optional
	Status WebhookEndpointStatus `json:"status,omitempty"`
}

// WebhookEndpointList is a list of WebhookEndpoints.
// +kubebuilder:object:root=true
type WebhookEndpointList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookEndpoint `json:"items"`
}

func init() {
	SchemeBuilder.Register(&WebhookEndpoint{}, &WebhookEndpointList{})
}
