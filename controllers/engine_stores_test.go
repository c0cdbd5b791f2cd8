package controllers

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// fate is what became of a delivery, as either store records it.
type fate struct {
	phase    string
	attempts int32
	reason   string
}

// storeUnderTest is a manager on one store, and how to read a delivery's fate there.
type storeUnderTest struct {
	name, ns string
	fate     func(ctx context.Context, event, endpoint string) (fate, bool, error)
}

// scriptedReceiver answers each request with the next of its answers (the last
// repeats) and records when each came and what it carried.
type scriptedReceiver struct {
	mu       sync.Mutex
	answers  []scriptedAnswer
	requests []capturedRequest
	times    []time.Time
}

type scriptedAnswer struct {
	code       int
	retryAfter string
}

func (s *scriptedReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	a := s.answers[min(len(s.requests), len(s.answers)-1)]
	body := make([]byte, r.ContentLength)
	_, _ = r.Body.Read(body)
	s.requests = append(s.requests, capturedRequest{header: r.Header.Clone(), body: body})
	s.times = append(s.times, time.Now())
	s.mu.Unlock()
	if a.retryAfter != "" {
		w.Header().Set("Retry-After", a.retryAfter)
	}
	w.WriteHeader(a.code)
}

// The delivery engine's rules, run against both stores on the same cases: retries
// with the same webhook-id and body, Retry-After, exhausted after maxAttempts, 410
// Gone. Signing, the state machine and the retry schedule are the same code; this
// shows the stores record the same fates.
func TestEngineRulesAreTheSameOnBothStores(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	q := startQueue(t)
	kubeNS, pgNS := "own-22", "own-23"
	ownNamespace(t, kubeNS, testConfig())
	pgConf := testConfig()
	pgConf.Queue = q
	ownNamespace(t, pgNS, pgConf)
	stores := []storeUnderTest{
		{name: "kubernetes", ns: kubeNS, fate: func(ctx context.Context, event, endpoint string) (fate, bool, error) {
			var d hooklinev1.WebhookDelivery
			if err := k8s.Get(ctx, key(kubeNS, deliveryName(event, endpoint)), &d); err != nil {
				return fate{}, false, nil
			}
			f := fate{phase: string(d.Status.Phase), attempts: d.Status.Attempts}
			if c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded); c != nil {
				f.reason = c.Reason
			}
			return f, d.Status.Phase.Finished(), nil
		}},
		{name: "postgres", ns: pgNS, fate: func(ctx context.Context, event, endpoint string) (fate, bool, error) {
			ds, err := q.Deliveries(ctx, pgNS, 1000)
			for _, d := range ds {
				if d.EventName == event && d.Endpoint == endpoint {
					return fate{phase: d.State, attempts: d.Attempts, reason: d.Reason}, d.FinishedAt != nil, err
				}
			}
			return fate{}, false, err
		}},
	}
	fast := []metav1.Duration{{Duration: 100 * time.Millisecond}}
	cases := []struct {
		name      string
		answers   []scriptedAnswer
		maxTries  int32
		want      fate
		minGapSec float64 // between the first two attempts
		schedule  []metav1.Duration
	}{
		{"retried until it succeeds", []scriptedAnswer{{503, ""}, {500, ""}, {200, ""}}, 5,
			fate{string(hooklinev1.PhaseSucceeded), 3, hooklinev1.ReasonDelivered}, 0, fast},
		// Retry-After stretches a step up to the schedule's longest (2 s here).
		{"Retry-After stretches the wait", []scriptedAnswer{{429, "1"}, {200, ""}}, 5,
			fate{string(hooklinev1.PhaseSucceeded), 2, hooklinev1.ReasonDelivered}, 0.9,
			[]metav1.Duration{{Duration: 100 * time.Millisecond}, {Duration: 2 * time.Second}}},
		{"exhausted after maxAttempts", []scriptedAnswer{{500, ""}}, 2,
			fate{string(hooklinev1.PhaseExhausted), 2, hooklinev1.ReasonMaxAttempts}, 0, fast},
		{"410 Gone fails at once", []scriptedAnswer{{410, ""}}, 5,
			fate{string(hooklinev1.PhaseFailed), 1, hooklinev1.ReasonEndpointGone}, 0, fast},
	}
	for i, c := range cases {
		for _, s := range stores {
			recv := &scriptedReceiver{answers: c.answers}
			srv := newHandlerServer(t, recv)
			endpoint := fmt.Sprintf("case-%d", i)
			ep := newEndpoint(s.ns, endpoint, srv.URL+"/", fmt.Sprintf("case.c%d", i))
			ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: c.schedule, MaxAttempts: ptr(c.maxTries)}
			activeEndpoint(t, ep)
			createAll(ctx, t, newEvent(s.ns, "e-"+endpoint, fmt.Sprintf("case.c%d", i), fmt.Sprintf(`{"case":%d}`, i)))
			var got fate
			eventually(t, 20*time.Second, s.name+": "+c.name, func(ctx context.Context) (bool, string, error) {
				f, done, err := s.fate(ctx, "e-"+endpoint, endpoint)
				got = f
				return done, fmt.Sprintf("%+v", f), err
			})
			if got != c.want {
				t.Errorf("%s store, %s: %+v, want %+v", s.name, c.name, got, c.want)
			}
			recv.mu.Lock()
			reqs, times := recv.requests, recv.times
			recv.mu.Unlock()
			if int32(len(reqs)) != c.want.attempts {
				t.Errorf("%s store, %s: the receiver got %d requests, want %d", s.name, c.name, len(reqs), c.want.attempts)
				continue
			}
			for _, r := range reqs[1:] {
				if r.header.Get("webhook-id") != reqs[0].header.Get("webhook-id") || string(r.body) != string(reqs[0].body) {
					t.Errorf("%s store, %s: a retry changed the webhook-id or the body", s.name, c.name)
				}
			}
			if c.minGapSec > 0 && times[1].Sub(times[0]).Seconds() < c.minGapSec {
				t.Errorf("%s store, %s: the retry came %v after a Retry-After of 1 s", s.name, c.name, times[1].Sub(times[0]))
			}
		}
	}
	// 410 disables the endpoint in both.
	for _, s := range stores {
		waitReady(t, s.ns, fmt.Sprintf("case-%d", len(cases)-1), hooklinev1.ReasonDisabled)
	}
}
