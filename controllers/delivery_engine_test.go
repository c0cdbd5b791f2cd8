package controllers

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/retention"
	"github.com/hookline/hookline/internal/testenv"
)

func directDelivery(ns, name, endpoint string) *hooklinev1.WebhookDelivery {
	return &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: endpoint}, EventType: "order.created",
			Payload: &runtime.RawExtension{Raw: []byte(fmt.Sprintf(`{"delivery":%q}`, name))}},
	}
}

func createAll(ctx context.Context, t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
}

func TestScriptedOutcomes(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	flaky := newReceiver(t, 503, 503, 200)
	retryAfter := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer retryAfter.Close()
	slow, _ := hangingServer(t)
	refused := httptest.NewServer(http.NotFoundHandler())
	refused.Close()

	fast := []metav1.Duration{{Duration: 500 * time.Millisecond}, {Duration: 3 * time.Second}}
	one, ten := int32(1), int32(10)
	eps := []*hooklinev1.WebhookEndpoint{
		newEndpoint(ns, "flaky", flaky.URL+"/", "*"),
		newEndpoint(ns, "retry-after", retryAfter.URL+"/", "*"),
		newEndpoint(ns, "slow", slow.URL+"/", "*"),
		newEndpoint(ns, "refused", refused.URL+"/", "*"),
	}
	for _, ep := range eps {
		ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: fast, MaxAttempts: &ten}
	}
	eps[2].Spec.TimeoutSeconds = &one
	for _, ep := range eps {
		createAll(ctx, t, ep)
		waitReady(t, ns, ep.Name, hooklinev1.ReasonActive)
		createAll(ctx, t, directDelivery(ns, "to-"+ep.Name, ep.Name))
	}

	// 503, 503, 200: two retries on the schedule, then success.
	d := waitDeliveryPhase(t, ns, "to-flaky", hooklinev1.PhaseSucceeded, 15*time.Second)
	if d.Status.Attempts != 3 || len(d.Status.History) != 3 || d.Status.History[0].StatusCode != 503 || d.Status.History[2].StatusCode != 200 {
		t.Errorf("503,503,200: %+v", d.Status)
	}

	// 429 with Retry-After: 2 stretches the 500ms step (±20%) to 2s (never beyond the
	// longest step, 3s).
	eventually(t, 15*time.Second, "retry-after retried", func(ctx context.Context) (bool, string, error) {
		var d hooklinev1.WebhookDelivery
		if err := k8s.Get(ctx, key(ns, "to-retry-after"), &d); err != nil {
			return false, "", err
		}
		if len(d.Status.History) < 2 {
			return false, fmt.Sprintf("%d attempts", len(d.Status.History)), nil
		}
		gap := d.Status.History[1].Time.Sub(d.Status.History[0].Time.Time)
		if gap < 2*time.Second || gap > 3500*time.Millisecond {
			return false, "", fmt.Errorf("after a 429 with Retry-After: 2 the second attempt came %v later, want 2s", gap)
		}
		return true, "", nil
	})

	// A receiver that does not answer within timeoutSeconds: retried, the history says why.
	d = waitDeliveryPhase(t, ns, "to-slow", hooklinev1.PhaseRetrying, 10*time.Second)
	if h := d.Status.History[0]; !strings.Contains(h.Error, "timeout") || h.DurationMs < 900 || h.DurationMs > 3000 {
		t.Errorf("timeout: %+v", h)
	}

	// Connection refused: retried.
	d = waitDeliveryPhase(t, ns, "to-refused", hooklinev1.PhaseRetrying, 10*time.Second)
	if h := d.Status.History[0]; h.StatusCode != 0 || !strings.Contains(h.Error, "refused") {
		t.Errorf("connection refused: %+v", h)
	}
}

// concurrencyReceiver measures how many requests it holds at once and when each came.
type concurrencyReceiver struct {
	*httptest.Server
	inFlight, peak atomic.Int32
	mu             sync.Mutex
	arrivals       []time.Time
}

func newConcurrencyReceiver(t *testing.T, hold time.Duration) *concurrencyReceiver {
	r := &concurrencyReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := r.inFlight.Add(1)
		for {
			p := r.peak.Load()
			if n <= p || r.peak.CompareAndSwap(p, n) {
				break
			}
		}
		r.mu.Lock()
		r.arrivals = append(r.arrivals, time.Now())
		r.mu.Unlock()
		time.Sleep(hold)
		r.inFlight.Add(-1)
	}))
	t.Cleanup(r.Close)
	return r
}

func TestRateLimitAndMaxInFlightAreEnforced(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)

	// maxInFlight: 2 with requests that take 300ms, 8 deliveries.
	held := newConcurrencyReceiver(t, 300*time.Millisecond)
	capped := newEndpoint(ns, "capped", held.URL+"/", "*")
	two := int32(2)
	capped.Spec.RateLimit = &hooklinev1.RateLimitSpec{MaxInFlight: &two}
	// perSecond: 5, 11 deliveries answered at once.
	quick := newConcurrencyReceiver(t, 0)
	paced := newEndpoint(ns, "paced", quick.URL+"/", "*")
	five := int32(5)
	paced.Spec.RateLimit = &hooklinev1.RateLimitSpec{PerSecond: &five}
	createAll(ctx, t, capped, paced)
	waitReady(t, ns, "capped", hooklinev1.ReasonActive)
	waitReady(t, ns, "paced", hooklinev1.ReasonActive)
	for i := 0; i < 8; i++ {
		createAll(ctx, t, directDelivery(ns, fmt.Sprintf("capped-%d", i), "capped"))
	}
	for i := 0; i < 11; i++ {
		createAll(ctx, t, directDelivery(ns, fmt.Sprintf("paced-%d", i), "paced"))
	}
	for i := 0; i < 8; i++ {
		waitDeliveryPhase(t, ns, fmt.Sprintf("capped-%d", i), hooklinev1.PhaseSucceeded, 20*time.Second)
	}
	for i := 0; i < 11; i++ {
		waitDeliveryPhase(t, ns, fmt.Sprintf("paced-%d", i), hooklinev1.PhaseSucceeded, 20*time.Second)
	}
	if p := held.peak.Load(); p != 2 {
		t.Errorf("maxInFlight 2: the receiver saw %d requests at once", p)
	}
	quick.mu.Lock()
	arrivals := append([]time.Time(nil), quick.arrivals...)
	quick.mu.Unlock()
	if len(arrivals) != 11 {
		t.Fatalf("paced receiver got %d requests", len(arrivals))
	}
	// 11 requests at 5 per second, evenly spaced: 10 intervals of at least 200ms. The
	// limit is a ceiling; how close the manager comes to it under load is not the
	// point here (internal/throttle's unit tests time the spacing itself).
	span := arrivals[len(arrivals)-1].Sub(arrivals[0])
	if rate := float64(len(arrivals)-1) / span.Seconds(); rate > 5.5 {
		t.Errorf("perSecond 5: measured %.2f requests per second over %v", rate, span)
	}
	// Admissions are 200ms apart. A request sent late under load shortens the next gap
	// at the receiver, so no single gap is judged; but no three requests ever arrive
	// within 100ms (half the spacing, a margin for a loaded machine), as a burst would
	// (within milliseconds).
	for i := 2; i < len(arrivals); i++ {
		if span := arrivals[i].Sub(arrivals[i-2]); span < 100*time.Millisecond {
			t.Errorf("requests %d to %d arrived within %v: a burst", i-2, i, span)
		}
	}
}

func TestSlowEndpointDoesNotDelayHealthyOnes(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	stuck, stuckInFlight := hangingServer(t)
	healthy := newReceiver(t)
	slowEP := newEndpoint(ns, "stuck", stuck.URL+"/", "*")
	timeout := int32(60) // longer than the test: the hanging attempts never end in it
	slowEP.Spec.TimeoutSeconds = &timeout
	createAll(ctx, t, slowEP, newEndpoint(ns, "healthy", healthy.URL+"/", "*"))
	waitReady(t, ns, "stuck", hooklinev1.ReasonActive)
	waitReady(t, ns, "healthy", hooklinev1.ReasonActive)
	for i := 0; i < 4; i++ {
		createAll(ctx, t, directDelivery(ns, fmt.Sprintf("stuck-%d", i), "stuck"))
	}
	eventually(t, 10*time.Second, "the four hanging attempts in flight", func(context.Context) (bool, string, error) {
		return stuckInFlight.Load() == 4, fmt.Sprint(stuckInFlight.Load()), nil
	})
	for i := 0; i < 4; i++ {
		createAll(ctx, t, directDelivery(ns, fmt.Sprintf("healthy-%d", i), "healthy"))
	}
	for i := 0; i < 4; i++ {
		waitDeliveryPhase(t, ns, fmt.Sprintf("healthy-%d", i), hooklinev1.PhaseSucceeded, 30*time.Second)
	}
	// An ordering, not a time: every healthy delivery finished while all four hanging
	// attempts still hang, none of them recorded.
	if n := stuckInFlight.Load(); n != 4 {
		t.Fatalf("%d hanging attempts in flight when the healthy deliveries finished, want 4", n)
	}
	for i := 0; i < 4; i++ {
		var d hooklinev1.WebhookDelivery
		if err := k8s.Get(ctx, key(ns, fmt.Sprintf("stuck-%d", i)), &d); err != nil {
			t.Fatal(err)
		}
		if d.Status.Attempts != 0 {
			t.Fatalf("stuck-%d has %d attempts recorded: the healthy ones waited for it", i, d.Status.Attempts)
		}
	}
}

func TestBlockedAddressFailsAtOnce(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	conf := testConfig()
	conf.Sender = delivery.NewClient(delivery.Options{AllowInsecureHTTP: true, AllowPrivateNetworks: false, UserAgent: "hookline/test"})
	ns := "own-1"
	ownNamespace(t, ns, conf)
	recv := newReceiver(t)
	port := recv.URL[strings.LastIndex(recv.URL, ":"):]
	// A name that resolves to loopback: the guard judges the address dialled.
	createAll(ctx, t, newEndpoint(ns, "internal", "http://localhost"+port+"/", "*"))
	waitReady(t, ns, "internal", hooklinev1.ReasonActive)
	createAll(ctx, t, directDelivery(ns, "to-internal", "internal"))
	d := waitDeliveryPhase(t, ns, "to-internal", hooklinev1.PhaseFailed, 10*time.Second)
	if d.Status.Attempts != 1 || len(d.Status.History) != 1 || !strings.HasPrefix(d.Status.History[0].Error, hooklinev1.ReasonBlockedAddress) {
		t.Fatalf("blocked: %+v", d.Status)
	}
	if c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded); c.Reason != hooklinev1.ReasonBlockedAddress {
		t.Fatalf("condition: %+v", c)
	}
	if n := len(recv.got()); n != 0 {
		t.Fatalf("the internal receiver was reached %d times", n)
	}
}

func TestRetentionDeletesFinishedObjects(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	conf := testConfig()
	conf.Retention = Retention{Succeeded: time.Second, Failed: 2 * time.Second}
	conf.Metrics = NewMetrics()
	ns := "own-2"
	ownNamespace(t, ns, conf)
	recv := newReceiver(t)
	createAll(ctx, t, newEndpoint(ns, "ep", recv.URL+"/", "*"))
	waitReady(t, ns, "ep", hooklinev1.ReasonActive)
	createAll(ctx, t, directDelivery(ns, "ok", "ep"), directDelivery(ns, "to-nowhere", "missing"),
		newEvent(ns, "ev", "order.created", `{}`))
	gone := func(obj client.Object, name string) func(ctx context.Context) (bool, string, error) {
		return func(ctx context.Context) (bool, string, error) {
			err := k8s.Get(ctx, key(ns, name), obj)
			return client.IgnoreNotFound(err) == nil && err != nil, fmt.Sprint(err), client.IgnoreNotFound(err)
		}
	}
	start := time.Now()
	eventually(t, 15*time.Second, "succeeded delivery deleted", gone(&hooklinev1.WebhookDelivery{}, "ok"))
	eventually(t, 15*time.Second, "finished event deleted", gone(&hooklinev1.WebhookEvent{}, "ev"))
	eventually(t, 15*time.Second, "failed delivery deleted", gone(&hooklinev1.WebhookDelivery{}, "to-nowhere"))
	// completionTime has one-second resolution, like a Job's.
	if took := time.Since(start); took < time.Second {
		t.Fatalf("the failed delivery went after %v, before its 2s retention", took)
	}
	// The manager's own metrics: exactly this test's deletes, two direct deliveries and
	// one event with its delivery (a unit counts its event).
	eventually(t, 5*time.Second, "hookline_pruned_total counts the deletes", func(context.Context) (bool, string, error) {
		d := testutil.ToFloat64(conf.Metrics.pruned.WithLabelValues("WebhookDelivery", retention.ReasonAge))
		e := testutil.ToFloat64(conf.Metrics.pruned.WithLabelValues("WebhookEvent", retention.ReasonAge))
		return d == 3 && e == 1, fmt.Sprintf("deliveries %v, events %v", d, e), nil
	})
}
