package deliverystate

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/backoff"
	"github.com/hookline/hookline/internal/delivery"
)

var t0 = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

func fixed(v float64) func() float64 { return func() float64 { return v } }

func policy(maxAttempts int, schedule ...time.Duration) Policy {
	return Policy{Retry: backoff.NewPolicy(schedule, maxAttempts), Random: fixed(0.5)}
}

func condition(st hooklinev1.WebhookDeliveryStatus) *metav1.Condition {
	return meta.FindStatusCondition(st.Conditions, hooklinev1.ConditionSucceeded)
}

func TestNext(t *testing.T) {
	answered := t0.Add(120 * time.Millisecond)
	cases := []struct {
		name        string
		attempts    int32
		result      delivery.Result
		policy      Policy
		phase       hooklinev1.DeliveryPhase
		reason      string
		nextAt      time.Duration // after t0; 0: none
		messageHas  string
		historyNote string
	}{
		{name: "2xx succeeds", result: delivery.Result{Outcome: delivery.Succeeded, StatusCode: 204},
			policy: policy(0), phase: hooklinev1.PhaseSucceeded, reason: hooklinev1.ReasonDelivered, messageHas: "delivered on attempt 1 (HTTP 204)"},
		{name: "503 retries on the first step, jitter centred", result: delivery.Result{Outcome: delivery.Retry, StatusCode: 503},
			policy: policy(0), phase: hooklinev1.PhaseRetrying, reason: hooklinev1.ReasonRetrying, nextAt: 5 * time.Second, messageHas: "attempt 1 failed (HTTP 503)"},
		{name: "the last step repeats", attempts: 9, result: delivery.Result{Outcome: delivery.Retry, StatusCode: 500},
			policy: policy(20, time.Second, time.Minute), phase: hooklinev1.PhaseRetrying, reason: hooklinev1.ReasonRetrying, nextAt: time.Minute},
		{name: "Retry-After stretches the wait", result: delivery.Result{Outcome: delivery.Retry, StatusCode: 429, RetryAfter: 30 * time.Second},
			policy: policy(0, 5*time.Second, time.Minute), phase: hooklinev1.PhaseRetrying, reason: hooklinev1.ReasonRetrying, nextAt: 30 * time.Second},
		{name: "Retry-After is capped at the longest step", result: delivery.Result{Outcome: delivery.Retry, StatusCode: 503, RetryAfter: 24 * time.Hour},
			policy: policy(0, 5*time.Second, time.Minute), phase: hooklinev1.PhaseRetrying, reason: hooklinev1.ReasonRetrying, nextAt: time.Minute},
		{name: "a connection error retries", result: delivery.Result{Outcome: delivery.Retry, Error: "connection refused"},
			policy: policy(0), phase: hooklinev1.PhaseRetrying, reason: hooklinev1.ReasonRetrying, nextAt: 5 * time.Second, messageHas: "(connection refused)"},
		{name: "the last attempt exhausts", attempts: 2, result: delivery.Result{Outcome: delivery.Retry, StatusCode: 502},
			policy: policy(3), phase: hooklinev1.PhaseExhausted, reason: hooklinev1.ReasonMaxAttempts, messageHas: "3 attempts made, the last: HTTP 502; set the annotation hookline.dev/retry"},
		{name: "410 fails", result: delivery.Result{Outcome: delivery.Gone, StatusCode: 410},
			policy: policy(0), phase: hooklinev1.PhaseFailed, reason: hooklinev1.ReasonEndpointGone, messageHas: "410 Gone"},
		{name: "a blocked address fails at once", result: delivery.Result{Outcome: delivery.Blocked, Error: "address 10.0.0.1 is private"},
			policy: policy(0), phase: hooklinev1.PhaseFailed, reason: hooklinev1.ReasonBlockedAddress, historyNote: "BlockedAddress: address 10.0.0.1 is private"},
		{name: "an invalid request fails", result: delivery.Result{Outcome: delivery.Invalid, Error: "http:// URLs are refused"},
			policy: policy(0), phase: hooklinev1.PhaseFailed, reason: hooklinev1.ReasonBadPayload},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := hooklinev1.WebhookDeliveryStatus{Phase: hooklinev1.PhaseRetrying, Attempts: c.attempts}
			st := Next(before, 3, Attempt{At: t0, Result: c.result, MessageID: "msg_1", Signature: "v1,x"}, c.policy, answered)
			if st.Phase != c.phase || st.Attempts != c.attempts+1 || st.MessageID != "msg_1" || st.Signature != "v1,x" {
				t.Fatalf("status %+v", st)
			}
			cond := condition(st)
			if cond == nil || cond.Reason != c.reason || cond.ObservedGeneration != 3 || !strings.Contains(cond.Message, c.messageHas) {
				t.Fatalf("condition %+v", cond)
			}
			switch {
			case c.nextAt == 0 && st.NextAttemptTime != nil:
				t.Fatalf("next attempt %v, want none", st.NextAttemptTime)
			case c.nextAt != 0 && (st.NextAttemptTime == nil || !st.NextAttemptTime.Time.Equal(t0.Add(c.nextAt))):
				t.Fatalf("next attempt %v, want %v", st.NextAttemptTime, t0.Add(c.nextAt))
			}
			finished := c.phase.Finished()
			if finished != (st.CompletionTime != nil) || (finished && !st.CompletionTime.Time.Equal(answered)) {
				t.Fatalf("completionTime %v", st.CompletionTime)
			}
			if len(st.History) != 1 || !st.History[0].Time.Time.Equal(t0) || st.History[0].StatusCode != int32(c.result.StatusCode) ||
				(c.historyNote != "" && st.History[0].Error != c.historyNote) {
				t.Fatalf("history %+v", st.History)
			}
			if before.Attempts != c.attempts || len(before.History) != 0 {
				t.Fatal("Next changed its input")
			}
		})
	}
}

func TestJitterStaysWithinTwentyPercent(t *testing.T) {
	for _, r := range []float64{0, 0.25, 0.5, 0.999999} {
		st := Next(hooklinev1.WebhookDeliveryStatus{}, 1, Attempt{At: t0, Result: delivery.Result{Outcome: delivery.Retry, StatusCode: 500}},
			Policy{Retry: backoff.NewPolicy([]time.Duration{10 * time.Second}, 5), Random: fixed(r)}, t0)
		wait := st.NextAttemptTime.Sub(t0)
		if wait < 8*time.Second || wait > 12*time.Second {
			t.Fatalf("random %v: wait %s outside 10s ±20%%", r, wait)
		}
	}
}

func TestHistoryKeepsTheLastTen(t *testing.T) {
	st := hooklinev1.WebhookDeliveryStatus{}
	p := policy(50, time.Second)
	for i := range 15 {
		st = Next(st, 1, Attempt{At: t0.Add(time.Duration(i) * time.Second), Result: delivery.Result{Outcome: delivery.Retry, StatusCode: 500 + i}}, p, t0)
	}
	if len(st.History) != HistoryLimit || st.History[0].StatusCode != 505 || st.History[9].StatusCode != 514 || st.Attempts != 15 {
		t.Fatalf("history %d entries, first %d, last %d, attempts %d", len(st.History), st.History[0].StatusCode, st.History[9].StatusCode, st.Attempts)
	}
}

func TestRetryToken(t *testing.T) {
	exhausted := hooklinev1.WebhookDeliveryStatus{Phase: hooklinev1.PhaseExhausted, Attempts: 8,
		CompletionTime: &metav1.Time{Time: t0}, LastHandledRetry: "old"}
	cases := []struct {
		token   string
		from    hooklinev1.WebhookDeliveryStatus
		started bool
		handled string
	}{
		{"", exhausted, false, "old"},
		{"old", exhausted, false, "old"},
		{"new", exhausted, true, "new"},
		{"new", hooklinev1.WebhookDeliveryStatus{Phase: hooklinev1.PhaseFailed}, true, "new"},
		{"new", hooklinev1.WebhookDeliveryStatus{Phase: hooklinev1.PhaseSucceeded}, false, "new"}, // recorded, nothing to do
		{"new", hooklinev1.WebhookDeliveryStatus{Phase: hooklinev1.PhaseRetrying, Attempts: 2}, false, "new"},
	}
	for i, c := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			st, started := Retry(c.from, 2, c.token, t0)
			if started != c.started || st.LastHandledRetry != c.handled {
				t.Fatalf("started %v, handled %q", started, st.LastHandledRetry)
			}
			if started && (st.Phase != hooklinev1.PhasePending || st.Attempts != 0 || st.CompletionTime != nil || condition(st).Reason != hooklinev1.ReasonRetrying) {
				t.Fatalf("after retry: %+v", st)
			}
			if !started && st.Phase != c.from.Phase {
				t.Fatalf("phase changed to %s", st.Phase)
			}
		})
	}
}

func TestFailAndWait(t *testing.T) {
	st := Wait(hooklinev1.WebhookDeliveryStatus{}, 1, "waiting: WebhookEndpoint a is paused", t0)
	if st.Phase != hooklinev1.PhasePending || condition(st).Reason != hooklinev1.ReasonWaiting || !condition(st).LastTransitionTime.Time.Equal(t0) {
		t.Fatalf("wait: %+v", st)
	}
	st.NextAttemptTime = &metav1.MicroTime{Time: t0}
	st = Fail(st, 1, hooklinev1.ReasonEndpointDeleted, "WebhookEndpoint a does not exist", t0.Add(time.Second))
	if st.Phase != hooklinev1.PhaseFailed || st.NextAttemptTime != nil || !st.CompletionTime.Time.Equal(t0.Add(time.Second)) ||
		condition(st).Reason != hooklinev1.ReasonEndpointDeleted || condition(st).Status != metav1.ConditionFalse {
		t.Fatalf("fail: %+v", st)
	}
}
