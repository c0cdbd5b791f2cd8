package engine

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/signing"
	"github.com/hookline/hookline/internal/throttle"
)

// answering answers every request with res and keeps what it was sent.
type answering struct {
	mu   sync.Mutex
	res  delivery.Result
	sent []delivery.Request
}

func (a *answering) Send(_ context.Context, r delivery.Request) delivery.Result {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sent = append(a.sent, r)
	return a.res
}

type healthLog struct{ outcomes []delivery.Outcome }

func (h *healthLog) Record(_ *hooklinev1.WebhookEndpoint, o delivery.Outcome, _ time.Time) bool {
	h.outcomes = append(h.outcomes, o)
	return o == delivery.Gone
}
func (h *healthLog) Flush(context.Context, *hooklinev1.WebhookEndpoint) error { return nil }

type metricsLog struct{ attempts, latencies int }

func (m *metricsLog) ObserveAttempt(delivery.Result) { m.attempts++ }
func (m *metricsLog) ObserveLatency(time.Duration)   { m.latencies++ }

func activeEndpoint() *hooklinev1.WebhookEndpoint {
	ep := &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "acme", Generation: 1},
		Spec: hooklinev1.WebhookEndpointSpec{URL: "https://acme.example/hooks"}}
	meta.SetStatusCondition(&ep.Status.Conditions, metav1.Condition{Type: hooklinev1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: hooklinev1.ReasonActive, ObservedGeneration: 1})
	return ep
}

func newEngine(res delivery.Result) (*Engine, *answering, *healthLog, *metricsLog) {
	sender, health, metrics := &answering{res: res}, &healthLog{}, &metricsLog{}
	return &Engine{Sender: sender, Throttle: throttle.New(func(string) {}), Health: health, Metrics: metrics,
		Clock: clocktesting.NewFakeClock(time.Date(2026, 12, 8, 10, 0, 0, 0, time.UTC)), EndpointShare: 4}, sender, health, metrics
}

func job(ep *hooklinev1.WebhookEndpoint) Job {
	key, err := signing.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	return Job{Endpoint: ep, EndpointName: "acme", Caller: "ns/d1",
		Message: func(context.Context) (Message, error) {
			return Message{ID: "msg_1", Body: []byte(`{"n":1}`), CreatedAt: time.Date(2026, 12, 8, 9, 59, 0, 0, time.UTC)}, nil
		},
		Keys: func(context.Context) ([]signing.Key, error) { return []signing.Key{key}, err },
	}
}

func header(r delivery.Request, name string) string {
	for _, h := range r.Headers {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

func reasonOf(st hooklinev1.WebhookDeliveryStatus) string {
	if c := meta.FindStatusCondition(st.Conditions, hooklinev1.ConditionSucceeded); c != nil {
		return c.Reason
	}
	return ""
}

// Before anything is sent: a deleted or disabled endpoint fails the delivery, a paused
// one holds it (gated), and nothing reaches a receiver.
func TestTheEndpointGatesAnAttempt(t *testing.T) {
	paused := activeEndpoint()
	paused.Spec.Paused = true
	disabled := activeEndpoint()
	disabled.Status.DisabledReason = hooklinev1.ReasonEndpointGone
	for _, c := range []struct {
		name   string
		ep     *hooklinev1.WebhookEndpoint
		phase  hooklinev1.DeliveryPhase
		reason string
		gated  bool
	}{
		{"deleted", nil, hooklinev1.PhaseFailed, hooklinev1.ReasonEndpointDeleted, false},
		{"disabled", disabled, hooklinev1.PhaseFailed, hooklinev1.ReasonEndpointDisabled, false},
		{"paused", paused, hooklinev1.PhasePending, hooklinev1.ReasonWaiting, true},
	} {
		e, sender, _, _ := newEngine(delivery.Result{Outcome: delivery.Succeeded, StatusCode: 200})
		res, err := e.Attempt(context.Background(), job(c.ep))
		if err != nil || res.Status.Phase != c.phase || reasonOf(res.Status) != c.reason || res.Gated != c.gated || res.Sent != nil {
			t.Errorf("%s: %+v (%v), want %s/%s gated %v", c.name, res, err, c.phase, c.reason, c.gated)
		}
		if len(sender.sent) != 0 {
			t.Errorf("%s: %d requests sent", c.name, len(sender.sent))
		}
	}
}

// A sent attempt is classified by the state machine, observed once, and signed with
// the message's id; a 5xx is retried on the endpoint's schedule.
func TestASentAttemptIsClassifiedAndScheduled(t *testing.T) {
	e, sender, health, metrics := newEngine(delivery.Result{Outcome: delivery.Retry, StatusCode: 503})
	ep := activeEndpoint()
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 30 * time.Second}}, MaxAttempts: new(int32(3))}
	res, err := e.Attempt(context.Background(), job(ep))
	if err != nil || res.Sent == nil || res.Status.Phase != hooklinev1.PhaseRetrying || res.Status.Attempts != 1 {
		t.Fatalf("%+v (%v)", res, err)
	}
	if res.Retry < 24*time.Second || res.Retry > 36*time.Second {
		t.Fatalf("retry in %v, want the schedule's 30s ±20%% jitter", res.Retry)
	}
	if len(sender.sent) != 1 || header(sender.sent[0], "webhook-id") != "msg_1" || header(sender.sent[0], "webhook-signature") == "" {
		t.Fatalf("sent %+v", sender.sent)
	}
	if metrics.attempts != 1 || metrics.latencies != 0 {
		t.Fatalf("metrics: %+v", metrics)
	}
	if err := e.Recorded(context.Background(), ep, res); err != nil || len(health.outcomes) != 1 {
		t.Fatalf("health after the record: %v (%v)", health.outcomes, err)
	}
}

// A payload that cannot be sent fails at once; keys that are not ready wait; neither
// sends anything. A cluster error is returned, for the driver to try again.
func TestRefusalsWaitsAndErrorsSendNothing(t *testing.T) {
	e, sender, _, _ := newEngine(delivery.Result{Outcome: delivery.Succeeded, StatusCode: 200})
	bad := job(activeEndpoint())
	bad.Message = func(context.Context) (Message, error) { return Message{}, &BadPayload{Msg: "the payload is empty"} }
	if res, err := e.Attempt(context.Background(), bad); err != nil || res.Status.Phase != hooklinev1.PhaseFailed || reasonOf(res.Status) != hooklinev1.ReasonBadPayload {
		t.Fatalf("bad payload: %+v (%v)", res, err)
	}
	waiting := job(activeEndpoint())
	waiting.Keys = func(context.Context) ([]signing.Key, error) { return nil, &Wait{Msg: "keys not ready"} }
	if res, err := e.Attempt(context.Background(), waiting); err != nil || res.Status.Phase != hooklinev1.PhasePending || res.Retry != WaitSecret {
		t.Fatalf("keys not ready: %+v (%v)", res, err)
	}
	broken := job(activeEndpoint())
	broken.Message = func(context.Context) (Message, error) { return Message{}, errors.New("the API server did not answer") }
	if _, err := e.Attempt(context.Background(), broken); err == nil {
		t.Fatal("a cluster error was swallowed")
	}
	if len(sender.sent) != 0 {
		t.Fatalf("%d requests sent", len(sender.sent))
	}
}

// An endpoint's limits are divided among the replicas (at least one each); an endpoint
// without maxInFlight gets each replica's own share.
func TestLimitsAreDividedAmongReplicas(t *testing.T) {
	for _, c := range []struct {
		maxInFlight, perSecond *int32
		replicas               int
		want                   throttle.Limits
	}{
		{nil, nil, 1, throttle.Limits{MaxInFlight: 4}},
		{nil, nil, 3, throttle.Limits{MaxInFlight: 4}},
		{new(int32(10)), new(int32(100)), 1, throttle.Limits{MaxInFlight: 10, PerSecond: 100}},
		{new(int32(10)), new(int32(100)), 3, throttle.Limits{MaxInFlight: 3, PerSecond: 33}},
		{new(int32(1)), new(int32(2)), 4, throttle.Limits{MaxInFlight: 1, PerSecond: 1}},
	} {
		e, _, _, _ := newEngine(delivery.Result{})
		e.Replicas = func() int { return c.replicas }
		ep := activeEndpoint()
		ep.Spec.RateLimit = &hooklinev1.RateLimitSpec{MaxInFlight: c.maxInFlight, PerSecond: c.perSecond}
		if got := e.Limits(ep); got != c.want {
			t.Errorf("%d replicas: %+v, want %+v", c.replicas, got, c.want)
		}
	}
}

// A limit reached defers the attempt without sending or changing the status.
func TestALimitReachedDefersTheAttempt(t *testing.T) {
	e, sender, _, _ := newEngine(delivery.Result{Outcome: delivery.Succeeded, StatusCode: 200})
	ep := activeEndpoint()
	ep.Spec.RateLimit = &hooklinev1.RateLimitSpec{MaxInFlight: new(int32(1))}
	hold := e.Throttle.Acquire("ns/acme", "other", e.Limits(ep), e.Clock.Now())
	defer hold.Release()
	res, err := e.Attempt(context.Background(), job(ep))
	if err != nil || !res.Deferred || res.Sent != nil || len(sender.sent) != 0 {
		t.Fatalf("%+v (%v), %d sent", res, err, len(sender.sent))
	}
}
