package controllers

import (
	"context"
	"fmt"
	"io"
	"math/bits"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/conncount"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/testenv"
)

// switchableReceiver never answers (until the client gives up) while stuck, or
// answers 503 at once if it refuses, and answers 200 at once after heal; it counts the
// requests in flight and the message ids it accepted.
type switchableReceiver struct {
	*httptest.Server
	stuck    atomic.Bool
	refuse   bool
	inFlight atomic.Int32
	mu       sync.Mutex
	peak     int32
	requests int
	accepted map[string]bool
}

func newSwitchableReceiver(t *testing.T) *switchableReceiver { return newStuckReceiver(t, false) }

// newStuckReceiver starts stuck; refuse: answering 503 rather than never.
func newStuckReceiver(t *testing.T, refuse bool) *switchableReceiver {
	t.Helper()
	r := &switchableReceiver{refuse: refuse, accepted: map[string]bool{}}
	r.stuck.Store(true)
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body) // the server notices the client leave once the body is read
		n := r.inFlight.Add(1)
		defer r.inFlight.Add(-1)
		r.mu.Lock()
		r.peak = max(r.peak, n)
		r.requests++
		r.mu.Unlock()
		switch {
		case r.stuck.Load() && r.refuse:
			w.WriteHeader(http.StatusServiceUnavailable)
		case r.stuck.Load():
			<-req.Context().Done()
		default:
			r.mu.Lock()
			r.accepted[req.Header.Get("webhook-id")] = true
			r.mu.Unlock()
		}
	}))
	t.Cleanup(r.Close)
	return r
}

// resetPeak starts a new observation window and returns the requests so far.
func (r *switchableReceiver) resetPeak() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.peak = r.inFlight.Load()
	return r.requests
}

// delivered is the number of distinct messages answered 200.
func (r *switchableReceiver) delivered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.accepted)
}

func (r *switchableReceiver) stats() (peak int32, requests int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peak, r.requests
}

// A stuck endpoint (never answers, 1 s timeout) with a backlog does not delay a
// healthy endpoint of another namespace: it holds at most its share of the workers,
// fewer once its attempts keep timing out, and gets them back when it answers again.
func TestStuckEndpointTakesItsShareOnlyAndIsRestored(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	share := int32(endpointShare(testConfig()))

	stuckNS, healthyNS := newNamespace(t), newNamespace(t)
	stuck := newSwitchableReceiver(t)
	ep := newEndpoint(stuckNS, "stuck", stuck.URL+"/", "*")
	ep.Spec.TimeoutSeconds = ptr(int32(1))
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 200 * time.Millisecond}}, MaxAttempts: ptr(int32(50))}
	activeEndpoint(t, ep)
	for i := range 30 {
		createAll(ctx, t, directDelivery(stuckNS, fmt.Sprintf("s-%d", i), "stuck"))
	}
	eventually(t, 10*time.Second, "the stuck endpoint's attempts in flight", func(context.Context) (bool, string, error) {
		peak, _ := stuck.stats()
		return peak > 0, fmt.Sprint(peak), nil
	})

	// The healthy tenant's deliveries go through while the backlog waits.
	healthy := newReceiver(t)
	activeEndpoint(t, newEndpoint(healthyNS, "healthy", healthy.URL+"/", "*"))
	// Judged by counts, not time: while a healthy delivery waits to be sent, the stuck
	// endpoint starts no more than twice its share of attempts (it is not served ahead
	// of the healthy one, round after round).
	for i := range 10 {
		_, before := stuck.stats()
		createAll(ctx, t, directDelivery(healthyNS, fmt.Sprintf("h-%d", i), "healthy"))
		waitDeliveryPhase(t, healthyNS, fmt.Sprintf("h-%d", i), hooklinev1.PhaseSucceeded, 10*time.Second)
		if _, after := stuck.stats(); after-before > 2*int(share) {
			t.Errorf("healthy delivery %d waited while the stuck endpoint started %d attempts (share %d)", i, after-before, share)
		}
	}
	if peak, _ := stuck.stats(); peak > share {
		t.Fatalf("the stuck endpoint had %d attempts in flight, its share is %d", peak, share)
	}

	// Timeouts reduce it to one attempt at a time.
	eventually(t, 15*time.Second, "concurrency reduced to one at a time, told in Events", func(ctx context.Context) (bool, string, error) {
		got, err := eventsAbout(ctx, stuckNS, "stuck")
		// From the share (4) down to 1: two steps, each told once.
		return got[hooklinev1.EventConcurrencyReduced] >= 2, fmt.Sprint(got), err
	})
	eventually(t, 5*time.Second, "the attempts in flight before the reduction drain", func(context.Context) (bool, string, error) {
		return stuck.inFlight.Load() <= 1, fmt.Sprint(stuck.inFlight.Load()), nil
	})
	before := stuck.resetPeak()
	eventually(t, 15*time.Second, "three more attempts while reduced", func(context.Context) (bool, string, error) {
		_, n := stuck.stats()
		return n >= before+3, fmt.Sprint(n - before), nil
	})
	// Reduced to one at a time. The receiver notices an abandoned request a moment
	// after the manager has moved on to the next, so it may count one more; either
	// way, fewer than the endpoint's share.
	if peak, _ := stuck.stats(); peak > 2 || peak >= share {
		t.Fatalf("reduced, the stuck endpoint still had %d attempts in flight (share %d)", peak, share)
	}

	// It answers again: concurrency is restored and the backlog drains.
	stuck.stuck.Store(false)
	for i := range 30 {
		waitDeliveryPhase(t, stuckNS, fmt.Sprintf("s-%d", i), hooklinev1.PhaseSucceeded, 30*time.Second)
	}
	waitEventsRecorded(t, stuckNS, "stuck", map[string]int{hooklinev1.EventConcurrencyRestored: 1})
	// Once per step down, never once per timeout: at one attempt at a time, further
	// timeouts tell nothing new.
	got, err := eventsAbout(ctx, stuckNS, "stuck")
	if err != nil {
		t.Fatal(err)
	}
	if n := got[hooklinev1.EventConcurrencyReduced]; n > bits.Len(uint(share)) {
		t.Fatalf("%d ConcurrencyReduced Events for a share of %d: more than one per step down", n, share)
	}
}

// The global cap on attempts is a cap on connections open to receivers, idle
// keep-alive ones included, counted by the receivers themselves: three receivers,
// each of which would otherwise keep its own idle connections open.
func TestOpenConnectionsStayWithinTheGlobalCap(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := "own-6"
	conf := testConfig()
	conf.MaxConcurrentDeliveries = 4
	conf.EndpointMaxInFlight = 4
	conf.Sender = delivery.NewClient(delivery.Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true, UserAgent: "hookline/test",
		MaxOpenConns: 4, MaxConnsPerHost: 16})
	ownNamespace(t, ns, conf)

	var conns conncount.Counter // the three receivers' connections, together
	for i := range 3 {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(100 * time.Millisecond)
		}))
		srv.Config.ConnState = conns.ConnState
		srv.Start()
		t.Cleanup(srv.Close)
		activeEndpoint(t, newEndpoint(ns, fmt.Sprintf("ep-%d", i), srv.URL+"/", "*"))
	}
	// In rounds, one receiver after the other: each round leaves idle connections.
	for round := range 3 {
		for i := range 8 {
			createAll(ctx, t, directDelivery(ns, fmt.Sprintf("d-%d-%d", round, i), fmt.Sprintf("ep-%d", round)))
		}
		for i := range 8 {
			waitDeliveryPhase(t, ns, fmt.Sprintf("d-%d-%d", round, i), hooklinev1.PhaseSucceeded, 30*time.Second)
		}
	}
	peak := conns.Peak()
	// The manager closes an idle connection before it opens one beyond the cap; a
	// receiver may see the new one a moment before the close, so it can count one
	// more for each dial racing the closes (two seen under the race detector's load).
	// Without the cap each receiver kept its idle connections: 12 in all.
	if peak > 4+2 {
		t.Fatalf("the receivers saw %d connections open at once; the cap is 4", peak)
	}
	t.Logf("peak open connections at the receivers: %d (cap 4, one of them closing)", peak)
}

// A receiver answering with megabytes of headers costs an attempt, not memory.
func TestHugeResponseHeadersFailTheAttempt(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		big := strings.Repeat("x", 8<<10)
		for i := range 128 {
			w.Header().Set(fmt.Sprintf("X-Big-%d", i), big) // 1 MiB of headers
		}
	}))
	t.Cleanup(srv.Close)
	ep := newEndpoint(ns, "verbose", srv.URL+"/", "*")
	ep.Spec.Retry = hooklinev1.RetrySpec{MaxAttempts: ptr(int32(1))}
	activeEndpoint(t, ep)
	createAll(ctx, t, directDelivery(ns, "d", "verbose"))
	d := waitDeliveryPhase(t, ns, "d", hooklinev1.PhaseExhausted, 10*time.Second)
	if len(d.Status.History) != 1 || !strings.Contains(d.Status.History[0].Error, "exceeded") {
		t.Fatalf("history %+v", d.Status.History)
	}
	if c := meta.FindStatusCondition(d.Status.Conditions, hooklinev1.ConditionSucceeded); c == nil || !strings.Contains(c.Message, "exceeded") {
		t.Fatalf("condition %+v", c)
	}
}

// A burst to one endpoint allowed every worker does not queue another endpoint's
// delivery behind it: the work queue serves endpoints in turn, not in arrival order.
func TestEndpointsAreServedInTurn(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	conf := testConfig()
	conf.MaxConcurrentDeliveries = 2
	ns := "own-9"
	ownNamespace(t, ns, conf)
	var burstServed atomic.Int32
	burst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(100 * time.Millisecond) // a receiver that takes its time, not a wait in the test
		burstServed.Add(1)
	}))
	t.Cleanup(burst.Close)
	servedBefore := make(chan int32, 1)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case servedBefore <- burstServed.Load():
		default:
		}
	}))
	t.Cleanup(other.Close)
	busy := newEndpoint(ns, "busy", burst.URL+"/", "*")
	busy.Spec.RateLimit = &hooklinev1.RateLimitSpec{MaxInFlight: ptr(int32(2))} // every worker
	createAll(ctx, t, busy, newEndpoint(ns, "other", other.URL+"/", "*"))
	waitReady(t, ns, "busy", hooklinev1.ReasonActive)
	waitReady(t, ns, "other", hooklinev1.ReasonActive)

	const queued = 150
	var created sync.WaitGroup
	errs := make(chan error, queued)
	for i := range queued {
		created.Go(func() { errs <- k8s.Create(ctx, directDelivery(ns, fmt.Sprintf("burst-%03d", i), "busy")) })
	}
	created.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	createAll(ctx, t, directDelivery(ns, "other", "other"))
	waitDeliveryPhase(t, ns, "other", hooklinev1.PhaseSucceeded, 20*time.Second)
	before := <-servedBefore
	// In arrival order it would come after all 150 (7.5 s of the busy receiver's
	// time on two workers); in turn, right after the deliveries in flight.
	if left := queued - before; left < 50 {
		t.Fatalf("the other endpoint's delivery was sent after %d of the burst's %d, with only %d left: it queued behind them", before, queued, left)
	}
	t.Logf("sent after %d of the burst's %d", before, queued)
}
