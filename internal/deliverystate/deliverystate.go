// Package deliverystate is the delivery state machine: what a WebhookDelivery's status
// becomes after an attempt, a refusal, a wait or a manual retry. Every function is
// pure: it takes the status, the policy and the time, and returns the new status, so
// the rules (retry, exhausted, failed, gone, blocked, Retry-After, jitter bounds) are
// tested with a fixed clock, without an API server or a receiver.
package deliverystate

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/backoff"
	"github.com/hookline/hookline/internal/conditions"
	"github.com/hookline/hookline/internal/delivery"
)

// HistoryLimit is how many attempts a delivery's status keeps.
const HistoryLimit = 10

// Attempt is one attempt as the state machine records it.
type Attempt struct {
	At        time.Time // when it was made
	Result    delivery.Result
	MessageID string
	Signature string // the signature header sent
}

// Policy is how the endpoint retries.
type Policy struct {
	Retry backoff.Policy
	// Random is the jitter source, values in [0,1); nil means math/rand.
	Random func() float64
}

// Next is the status after an attempt: Succeeded, Failed (410 Gone, a blocked address,
// an invalid request), Exhausted (no attempt left), or Retrying with the next attempt's
// time. now is when the attempt's answer was in.
func Next(st hooklinev1.WebhookDeliveryStatus, generation int64, a Attempt, p Policy, now time.Time) hooklinev1.WebhookDeliveryStatus {
	st = *st.DeepCopy()
	res := a.Result
	st.MessageID = a.MessageID
	st.Attempts++
	st.Signature = a.Signature
	st.LastAttemptTime = &metav1.MicroTime{Time: a.At}
	st.ResponseStatusCode = int32(res.StatusCode)
	rec := hooklinev1.AttemptRecord{
		Time: metav1.MicroTime{Time: a.At}, DurationMs: res.Duration.Milliseconds(),
		StatusCode: int32(res.StatusCode), Error: res.Error, Response: res.Response,
	}
	if res.Outcome == delivery.Blocked {
		rec.Error = hooklinev1.ReasonBlockedAddress + ": " + res.Error
	}
	st.History = append(st.History, rec)
	if len(st.History) > HistoryLimit {
		st.History = st.History[len(st.History)-HistoryLimit:]
	}
	st.NextAttemptTime = nil

	switch res.Outcome {
	case delivery.Succeeded:
		st.Phase = hooklinev1.PhaseSucceeded
		st.CompletionTime = &metav1.Time{Time: now}
		conditions.Set(&st.Conditions, generation, hooklinev1.ConditionSucceeded, metav1.ConditionTrue, hooklinev1.ReasonDelivered,
			fmt.Sprintf("delivered on attempt %d (HTTP %d)", st.Attempts, res.StatusCode), now)
		return st
	case delivery.Gone:
		return Fail(st, generation, hooklinev1.ReasonEndpointGone, "the receiver answered 410 Gone; the endpoint is disabled", now)
	case delivery.Blocked:
		return Fail(st, generation, hooklinev1.ReasonBlockedAddress, res.Error, now)
	case delivery.Invalid:
		return Fail(st, generation, hooklinev1.ReasonBadPayload, res.Error, now)
	}
	if p.Retry.Exhausted(int(st.Attempts)) {
		st.Phase = hooklinev1.PhaseExhausted
		st.CompletionTime = &metav1.Time{Time: now}
		conditions.Set(&st.Conditions, generation, hooklinev1.ConditionSucceeded, metav1.ConditionFalse, hooklinev1.ReasonMaxAttempts,
			fmt.Sprintf("%d attempts made, the last: %s; set the annotation %s to try again", st.Attempts, summary(res), hooklinev1.AnnotationRetry), now)
		return st
	}
	next := a.At.Add(p.Retry.NextDelay(int(st.Attempts), res.RetryAfter, p.Random))
	st.Phase = hooklinev1.PhaseRetrying
	st.NextAttemptTime = &metav1.MicroTime{Time: next}
	conditions.Set(&st.Conditions, generation, hooklinev1.ConditionSucceeded, metav1.ConditionUnknown, hooklinev1.ReasonRetrying,
		fmt.Sprintf("attempt %d failed (%s); next attempt at %s", st.Attempts, summary(res), next.UTC().Format(time.RFC3339)), now)
	return st
}

func summary(res delivery.Result) string {
	if res.StatusCode != 0 {
		return fmt.Sprintf("HTTP %d", res.StatusCode)
	}
	return res.Error
}

// Fail finishes the delivery as Failed: it is not retried without the annotation.
func Fail(st hooklinev1.WebhookDeliveryStatus, generation int64, reason, message string, now time.Time) hooklinev1.WebhookDeliveryStatus {
	st = *st.DeepCopy()
	st.Phase = hooklinev1.PhaseFailed
	st.NextAttemptTime = nil
	st.CompletionTime = &metav1.Time{Time: now}
	conditions.Set(&st.Conditions, generation, hooklinev1.ConditionSucceeded, metav1.ConditionFalse, reason, message, now)
	return st
}

// Wait says why no attempt is made now (a paused or unready endpoint, a missing
// header Secret); the phase does not change.
func Wait(st hooklinev1.WebhookDeliveryStatus, generation int64, message string, now time.Time) hooklinev1.WebhookDeliveryStatus {
	st = *st.DeepCopy()
	if st.Phase == "" {
		st.Phase = hooklinev1.PhasePending
	}
	conditions.Set(&st.Conditions, generation, hooklinev1.ConditionSucceeded, metav1.ConditionUnknown, hooklinev1.ReasonWaiting, message, now)
	return st
}

// Retry acts on a hookline.dev/retry token: a new token is recorded, and a Failed or
// Exhausted delivery starts again, its attempts counting anew towards maxAttempts.
// It reports whether the delivery was started again.
func Retry(st hooklinev1.WebhookDeliveryStatus, generation int64, token string, now time.Time) (hooklinev1.WebhookDeliveryStatus, bool) {
	if token == "" || token == st.LastHandledRetry {
		return st, false
	}
	st = *st.DeepCopy()
	st.LastHandledRetry = token
	if st.Phase != hooklinev1.PhaseFailed && st.Phase != hooklinev1.PhaseExhausted {
		return st, false
	}
	st.Phase = hooklinev1.PhasePending
	st.Attempts = 0
	st.NextAttemptTime, st.CompletionTime = nil, nil
	conditions.Set(&st.Conditions, generation, hooklinev1.ConditionSucceeded, metav1.ConditionUnknown, hooklinev1.ReasonRetrying,
		"retry requested by the "+hooklinev1.AnnotationRetry+" annotation", now)
	return st, true
}
