package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
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
	// retry starts a Failed or Exhausted delivery again, as a user would.
	retry func(t *testing.T, event, endpoint string)
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

// bothStores starts a manager on each store, the etcd store's in kubeNS and the
// PostgreSQL store's in pgNS, both configured by conf, and says how to read a
// delivery's fate and retry it in each.
func bothStores(t *testing.T, conf func() Config, kubeNS, pgNS string) []storeUnderTest {
	t.Helper()
	ctx := context.Background()
	q := startQueue(t)
	ownNamespace(t, kubeNS, conf())
	pgConf := conf()
	pgConf.Queue = q
	ownNamespace(t, pgNS, pgConf)
	return []storeUnderTest{
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
		}, retry: func(t *testing.T, event, endpoint string) {
			var d hooklinev1.WebhookDelivery
			if err := k8s.Get(ctx, key(kubeNS, deliveryName(event, endpoint)), &d); err != nil {
				t.Fatal(err)
			}
			patched(t, &d, func(o *hooklinev1.WebhookDelivery) {
				o.Annotations = map[string]string{hooklinev1.AnnotationRetry: "again"}
			})
		}},
		{name: "postgres", ns: pgNS, fate: func(ctx context.Context, event, endpoint string) (fate, bool, error) {
			ds, err := q.Deliveries(ctx, pgNS, 1000)
			for _, d := range ds {
				if d.EventName == event && d.Endpoint == endpoint {
					return fate{phase: d.State, attempts: d.Attempts, reason: d.Reason}, d.FinishedAt != nil, err
				}
			}
			return fate{}, false, err
		}, retry: func(t *testing.T, event, endpoint string) {
			if found, retried, err := q.Retry(ctx, pgNS, deliveryName(event, endpoint)); err != nil || !found || !retried {
				t.Fatalf("retry in the queue: found %v, retried %v (%v)", found, retried, err)
			}
		}},
	}
}

// The delivery engine's rules, run against both stores on the same cases: retries
// with the same webhook-id and body, Retry-After, exhausted after maxAttempts, 410
// Gone. Signing, the state machine and the retry schedule are the same code; this
// shows the stores record the same fates.
func TestEngineRulesAreTheSameOnBothStores(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	stores := bothStores(t, testConfig, "own-22", "own-23")
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
	for _, s := range stores {
		t.Run(s.name+"/exhausted then retried", func(t *testing.T) { exhaustedThenRetried(t, s) })
		t.Run(s.name+"/rate limits", func(t *testing.T) { rateLimitsHold(t, s) })
		t.Run(s.name+"/rotation grace", func(t *testing.T) { rotationGraceSignsTwice(t, s) })
	}
}

// waitFate waits until the store records a delivery as finished and returns its fate.
func waitFate(t *testing.T, s storeUnderTest, event, endpoint string) fate {
	t.Helper()
	var got fate
	eventually(t, 20*time.Second, s.name+": "+event+" finished", func(ctx context.Context) (bool, string, error) {
		f, done, err := s.fate(ctx, event, endpoint)
		got = f
		return done, fmt.Sprintf("%+v", f), err
	})
	return got
}

// An exhausted delivery, retried by the user, is sent again with the same webhook-id
// and body, its attempts counted anew.
func exhaustedThenRetried(t *testing.T, s storeUnderTest) {
	ctx := context.Background()
	recv := &scriptedReceiver{answers: []scriptedAnswer{{500, ""}, {500, ""}, {200, ""}}}
	srv := newHandlerServer(t, recv)
	ep := newEndpoint(s.ns, "retried", srv.URL+"/", "retried.x")
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 100 * time.Millisecond}}, MaxAttempts: ptr(int32(2))}
	activeEndpoint(t, ep)
	createAll(ctx, t, newEvent(s.ns, "e-retried", "retried.x", `{"n":1}`))
	if got := waitFate(t, s, "e-retried", "retried"); got.phase != string(hooklinev1.PhaseExhausted) || got.attempts != 2 {
		t.Fatalf("before the retry: %+v, want Exhausted after 2", got)
	}
	s.retry(t, "e-retried", "retried")
	var got fate
	eventually(t, 20*time.Second, s.name+": delivered after the retry", func(ctx context.Context) (bool, string, error) {
		f, _, err := s.fate(ctx, "e-retried", "retried")
		got = f
		return f.phase == string(hooklinev1.PhaseSucceeded), fmt.Sprintf("%+v", f), err
	})
	if got.attempts != 1 {
		t.Fatalf("after the retry: %+v, want Succeeded at its first attempt anew", got)
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if len(recv.requests) != 3 {
		t.Fatalf("the receiver got %d requests, want 3", len(recv.requests))
	}
	first, last := recv.requests[0], recv.requests[2]
	if last.header.Get("webhook-id") != first.header.Get("webhook-id") || string(last.body) != string(first.body) {
		t.Fatal("the retried delivery changed its webhook-id or its body")
	}
}

// An endpoint's rateLimit holds: never more than maxInFlight at once, and no faster
// than perSecond.
func rateLimitsHold(t *testing.T, s storeUnderTest) {
	ctx := context.Background()
	recv := newConcurrencyReceiver(t, 50*time.Millisecond)
	ep := newEndpoint(s.ns, "limited", recv.URL+"/", "limited.x")
	ep.Spec.RateLimit = &hooklinev1.RateLimitSpec{MaxInFlight: ptr(int32(1)), PerSecond: ptr(int32(5))}
	activeEndpoint(t, ep)
	const n = 8
	for i := range n {
		createAll(ctx, t, newEvent(s.ns, fmt.Sprintf("e-limited-%d", i), "limited.x", fmt.Sprintf(`{"n":%d}`, i)))
	}
	for i := range n {
		if got := waitFate(t, s, fmt.Sprintf("e-limited-%d", i), "limited"); got.phase != string(hooklinev1.PhaseSucceeded) {
			t.Fatalf("e-limited-%d: %+v", i, got)
		}
	}
	if peak := recv.peak.Load(); peak != 1 {
		t.Errorf("%d requests in flight at once, want at most maxInFlight 1", peak)
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	// perSecond 5: eight requests are spread over at least 7 intervals of 200 ms
	// (less a little for the clock's grain).
	if span := recv.arrivals[len(recv.arrivals)-1].Sub(recv.arrivals[0]); len(recv.arrivals) != n || span < 1300*time.Millisecond {
		t.Errorf("%d requests in %v, want %d spread over at least 1.3 s at 5 per second", len(recv.arrivals), span, n)
	}
}

// During a rotation's grace period both the new and the previous secret sign, and each
// alone verifies with the Standard Webhooks library.
func rotationGraceSignsTwice(t *testing.T, s storeUnderTest) {
	ctx := context.Background()
	recv := newReceiver(t)
	ep := newEndpoint(s.ns, "rotating", recv.URL+"/", "rotating.x")
	ep.Spec.Signing.RotationGracePeriod = &metav1.Duration{Duration: time.Hour}
	ep = activeEndpoint(t, ep)
	oldSecret := secretValue(ctx, t, s.ns, "rotating-signing-secret")
	rotated(t, ep, "2026-12-08T00:00:00Z")
	newSecret := secretValue(ctx, t, s.ns, "rotating-signing-secret")
	// The PostgreSQL sender reads an endpoint's keys at most once a second: a request
	// sent just before may carry one signature.
	eventually(t, 10*time.Second, s.name+": signed by both secrets", func(ctx context.Context) (bool, string, error) {
		name := fmt.Sprintf("e-rotating-%d", len(recv.got()))
		createAll(ctx, t, newEvent(s.ns, name, "rotating.x", `{"n":1}`))
		if got := waitFate(t, s, name, "rotating"); got.phase != string(hooklinev1.PhaseSucceeded) {
			return false, "", fmt.Errorf("%s: %+v", name, got)
		}
		reqs := recv.got()
		r := reqs[len(reqs)-1]
		n := len(strings.Fields(r.header.Get("webhook-signature")))
		return n == 2 && verifiesWith(t, r, newSecret) && verifiesWith(t, r, oldSecret), fmt.Sprintf("%d signatures", n), nil
	})
}

// The address guard is the engine's in both stores: a receiver on an internal address
// is never reached, and the delivery fails at once with reason BlockedAddress.
func TestBlockedAddressIsTheSameOnBothStores(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	guarded := func() Config {
		conf := testConfig()
		conf.Sender = delivery.NewClient(delivery.Options{AllowInsecureHTTP: true, AllowPrivateNetworks: false, UserAgent: "hookline/test"})
		return conf
	}
	stores := bothStores(t, guarded, "own-25", "own-26")
	recv := newReceiver(t)
	port := recv.URL[strings.LastIndex(recv.URL, ":"):]
	for _, s := range stores {
		// A name that resolves to loopback: the guard judges the address dialled.
		activeEndpoint(t, newEndpoint(s.ns, "internal", "http://localhost"+port+"/", "*"))
		createAll(ctx, t, newEvent(s.ns, "e-internal", "order.created", `{"n":1}`))
		want := fate{string(hooklinev1.PhaseFailed), 1, hooklinev1.ReasonBlockedAddress}
		if got := waitFate(t, s, "e-internal", "internal"); got != want {
			t.Errorf("%s store: %+v, want %+v", s.name, got, want)
		}
	}
	if n := len(recv.got()); n != 0 {
		t.Fatalf("the internal receiver was reached %d times", n)
	}
}
