package v1alpha1

// Annotations whose value is a one-shot token (the Flux requestedAt pattern): a new
// value is acted on once and recorded in status; the controller never removes them.
const (
	AnnotationRotateSecret = "hookline.dev/rotate-secret"
	AnnotationEnable       = "hookline.dev/enable"
	AnnotationSendTest     = "hookline.dev/send-test"
	AnnotationRetry        = "hookline.dev/retry"
)

// Keys of the signing Secret.
const (
	SecretKeySigningSecret = "signing-secret"
	SecretKeyPublicKey     = "public-key"
)

// Labels the manager puts on what it creates; its Secret cache selects on ManagedByLabel
// so the manager never caches every Secret of the cluster.
const (
	ManagedByLabel      = "app.kubernetes.io/managed-by"
	ManagedByValue      = "hookline"
	EndpointLabel       = "hookline.dev/endpoint"
	EventLabel          = "hookline.dev/event"
	TestEventType       = "hookline.test"
	DefaultSecretSuffix = "-signing-secret"
)

// Condition types.
const (
	ConditionReady     = "Ready"
	ConditionStalled   = "Stalled"
	ConditionComplete  = "Complete"
	ConditionSucceeded = "Succeeded"
	// ConditionSecretRotation reports the last rotation request and how it was answered.
	ConditionSecretRotation = "SecretRotation"
)

// Reasons of the endpoint's SecretRotation condition.
const (
	ReasonRotated           = "Rotated"
	ReasonUserManagedSecret = "UserManagedSecret"
)

// Reasons of the endpoint's Ready condition.
const (
	ReasonActive        = "Active"
	ReasonPaused        = "Paused"
	ReasonDuplicateURL  = "DuplicateURL"
	ReasonInvalidSpec   = "InvalidSpec"
	ReasonSecretInvalid = "SecretInvalid"
	ReasonDisabled      = "Disabled"
)

// Values of status.disabledReason.
const (
	DisabledEndpointGone   = "EndpointGone"
	DisabledFailingTooLong = "FailingTooLong"
)

// Reasons of the event's Complete condition.
const (
	ReasonAllSucceeded = "AllSucceeded"
	ReasonSomeFailed   = "SomeFailed"
	ReasonNoEndpoints  = "NoEndpoints"
	ReasonInProgress   = "InProgress"
	// ReasonWaitingForBudget: the fan-out waits until the manager's etcd byte budget
	// has room (--max-etcd-bytes).
	ReasonWaitingForBudget = "WaitingForBudget"
	// ReasonQueued: the fan-out is in the PostgreSQL delivery store
	// (--delivery-store=postgres), which keeps the deliveries and their fate.
	ReasonQueued = "Queued"
	// ReasonInvalidPayload: the payload breaks the documented limits; the event is refused, once.
	ReasonInvalidPayload = "InvalidPayload"
)

// Reasons of the delivery's Succeeded condition and of attempt records.
const (
	ReasonDelivered        = "Delivered"
	ReasonWaiting          = "Waiting"
	ReasonRetrying         = "Retrying"
	ReasonEndpointGone     = "EndpointGone"
	ReasonEndpointDeleted  = "EndpointDeleted"
	ReasonEndpointDisabled = "EndpointDisabled"
	ReasonBlockedAddress   = "BlockedAddress"
	ReasonBadPayload       = "BadPayload"
	ReasonMaxAttempts      = "MaxAttemptsReached"
)

// Reasons of the Kubernetes Events the manager emits that are not condition reasons.
const (
	EventDisabled            = "Disabled"
	EventEnabled             = "Enabled"
	EventSecretRotated       = "SecretRotated"
	EventSecretChanged       = "SecretChanged"
	EventRotationRefused     = "RotationRefused"
	EventConcurrencyReduced  = "ConcurrencyReduced"
	EventConcurrencyRestored = "ConcurrencyRestored"
)
