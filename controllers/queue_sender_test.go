package controllers

import (
	"github.com/prometheus/client_golang/prometheus/testutil"

	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/publishapi"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
	"github.com/hookline/hookline/internal/testenv"
)

// startQueue starts a PostgreSQL server for the test and opens the delivery queue on
// a database of its own; both go when the test ends.
func startQueue(t *testing.T) *pgstore.Queue {
	t.Helper()
	_, q := startQueueOn(t)
	return q
}

// startQueueOn is startQueue that also returns the server, to stop and start it.
func startQueueOn(t *testing.T) (*testenv.Postgres, *pgstore.Queue) {
	t.Helper()
	pg, err := testenv.StartPostgres()
	testenv.SkipIfMissing(t, err)
	t.Cleanup(func() { _ = pg.Remove() })
	dsn, err := pg.Database(context.Background(), "queue")
	if err != nil {
		t.Fatal(err)
	}
	q, err := pgstore.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return pg, q
}

// queueDeliveries waits until the queue holds want deliveries of ns in a finished state.
func queueFinished(t *testing.T, q *pgstore.Queue, ns string, want int) []pgstore.Delivery {
	t.Helper()
	var ds []pgstore.Delivery
	eventually(t, 30*time.Second, "deliveries finished in the queue", func(ctx context.Context) (bool, string, error) {
		var err error
		if ds, err = q.Deliveries(ctx, ns, 10000); err != nil {
			return false, "", err
		}
		finished := 0
		for _, d := range ds {
			if d.FinishedAt != nil {
				finished++
			}
		}
		return finished == want, fmt.Sprintf("%d of %d finished", finished, len(ds)), nil
	})
	return ds
}

// In postgres mode an event is published into the queue and delivered from it: signed,
// retried with the same webhook-id and body, recorded; nothing of the delivery is in
// the API server, the event is written once, and publishing the same name again
// delivers nothing new.
func TestPostgresStoreDeliversFromTheQueue(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	q := startQueue(t)
	conf := testConfig()
	conf.Queue = q
	ns := "own-18"
	ownNamespace(t, ns, conf)
	recv := newReceiver(t, http.StatusServiceUnavailable, http.StatusOK)
	gone := newReceiver(t, http.StatusGone)
	ep := newEndpoint(ns, "acme", recv.URL+"/", "order.created")
	ep.Spec.Retry = hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 100 * time.Millisecond}}}
	createAll(ctx, t, ep, newEndpoint(ns, "gone", gone.URL+"/", "order.created"))
	acme := waitReady(t, ns, "acme", hooklinev1.ReasonActive)
	waitReady(t, ns, "gone", hooklinev1.ReasonActive)

	createAll(ctx, t, newEvent(ns, "order-1", "order.created", `{"order":1}`))
	ds := queueFinished(t, q, ns, 2)
	byEndpoint := map[string]pgstore.Delivery{}
	for _, d := range ds {
		byEndpoint[d.Endpoint] = d
	}
	if d := byEndpoint["acme"]; d.State != pgstore.StateSucceeded || d.Attempts != 2 || len(d.History) != 2 || d.ResponseStatus != 200 {
		t.Fatalf("acme's delivery: %+v", d)
	}
	if d := byEndpoint["gone"]; d.State != pgstore.StateFailed || d.Reason != hooklinev1.ReasonEndpointGone {
		t.Fatalf("gone's delivery: %+v", d)
	}
	waitReady(t, ns, "gone", hooklinev1.ReasonDisabled)

	// The same message twice, signed with the endpoint's secret.
	got := recv.got()
	if len(got) != 2 {
		t.Fatalf("the receiver got %d requests, want 2", len(got))
	}
	ev := &hooklinev1.WebhookEvent{}
	if err := k8s.Get(ctx, key(ns, "order-1"), ev); err != nil {
		t.Fatal(err)
	}
	if got[0].header.Get("webhook-id") != ev.Status.MessageID || got[1].header.Get("webhook-id") != ev.Status.MessageID ||
		!bytes.Equal(got[0].body, got[1].body) {
		t.Fatalf("retry sent %q %s after %q %s; the same id and body are owed", got[1].header.Get("webhook-id"), got[1].body,
			got[0].header.Get("webhook-id"), got[0].body)
	}
	if secret := secretValue(ctx, t, ns, acme.Status.SecretName); !verifiesWith(t, got[1], secret) {
		t.Fatal("the Standard Webhooks library does not verify the request")
	}
	if !strings.Contains(string(got[0].body), `"order":1`) && !strings.Contains(string(got[0].body), `"order": 1`) {
		t.Fatalf("body %s", got[0].body)
	}

	// The API server holds the event, written once, and no delivery.
	if !ev.Queued() || ev.Status.Deliveries.Total != 2 {
		t.Fatalf("event status %+v", ev.Status)
	}
	var deliveries hooklinev1.WebhookDeliveryList
	if err := k8s.List(ctx, &deliveries, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(deliveries.Items) != 0 {
		t.Fatalf("%d WebhookDeliveries in the API server in postgres mode", len(deliveries.Items))
	}
	rv := ev.ResourceVersion
	createAll(ctx, t, newEvent(ns, "order-2", "order.created", `{"order":2}`))
	queueFinished(t, q, ns, 3)
	if err := k8s.Get(ctx, key(ns, "order-1"), ev); err != nil || ev.ResourceVersion != rv {
		t.Fatalf("the queued event was written again (%v)", err)
	}

	// A GitOps tool re-applies order-1 after retention deleted it: nothing new is sent.
	if err := k8s.Delete(ctx, ev); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "order-1 gone", func(ctx context.Context) (bool, string, error) {
		err := k8s.Get(ctx, key(ns, "order-1"), &hooklinev1.WebhookEvent{})
		return client.IgnoreNotFound(err) == nil && err != nil, "", client.IgnoreNotFound(err)
	})
	createAll(ctx, t, newEvent(ns, "order-1", "order.created", `{"order":1}`))
	waitEvent(t, ns, "order-1", 10*time.Second, "queued again", func(e *hooklinev1.WebhookEvent) bool { return e.Queued() })
	createAll(ctx, t, newEvent(ns, "order-3", "order.created", `{"order":3}`))
	ds = queueFinished(t, q, ns, 4) // order-3 to acme; gone is disabled now, order-1 not again
	if n := len(recv.got()); n != 4 {
		t.Fatalf("the receiver got %d requests, want 4 (order-1 twice, order-2, order-3)", n)
	}
}

// Two managers deliver from one queue side by side: every message arrives once.
func TestTwoManagersShareTheQueue(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	q := startQueue(t)
	ns := "own-19"
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	for _, owner := range []string{"replica-a", "replica-b"} {
		conf := testConfig()
		conf.Queue, conf.QueueOwner = q, owner
		stop, err := startManager(ctx, restConfig, conf, namespaceOnly(ns))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	recv := newReceiver(t)
	counting := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("webhook-id")]++
		mu.Unlock()
		recv.Config.Handler.ServeHTTP(w, r)
	})
	srv := newHandlerServer(t, counting)
	activeEndpoint(t, newEndpoint(ns, "acme", srv.URL+"/", "order.created"))
	const messages = 300
	for i := range messages {
		createAll(ctx, t, newEvent(ns, fmt.Sprintf("m-%d", i), "order.created", fmt.Sprintf(`{"n":%d}`, i)))
	}
	queueFinished(t, q, ns, messages)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != messages {
		t.Fatalf("%d distinct messages arrived, want %d", len(seen), messages)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("message %s arrived %d times while both managers lived", id, n)
		}
	}
}

// PostgreSQL stops for 20 seconds in the middle of a run: publishing is refused
// meanwhile, a WebhookEvent created then is queued once the database is back, and
// every message arrives; what arrives twice is what was sent but could not be recorded.
func TestPostgresOutageLosesNothing(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	pg, q := startQueueOn(t)
	conf := testConfig()
	conf.Queue, conf.DeliveryLease = q, 5*time.Second
	ns := "own-21"
	ownNamespace(t, ns, conf)
	var mu sync.Mutex
	seen := map[string]int{}
	srv := newHandlerServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		seen[r.Header.Get("webhook-id")]++
		mu.Unlock()
	}))
	distinct := func() (n, twice int) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range seen {
			twice += c - 1
		}
		return len(seen), twice
	}
	activeEndpoint(t, newEndpoint(ns, "acme", srv.URL+"/", "order.created"))
	publisher := QueuePublisher{Endpoints: k8s, Queue: q}
	const messages = 300
	var batch []publishapi.Event
	for i := range messages {
		batch = append(batch, publishapi.Event{Name: fmt.Sprintf("m-%d", i), Type: "order.created", Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))})
	}
	if _, err := publisher.Publish(ctx, ns, batch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "delivery under way", func(context.Context) (bool, string, error) {
		n, _ := distinct()
		return n >= 50, fmt.Sprint(n), nil
	})
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	if _, err := publisher.Publish(ctx, ns, []publishapi.Event{{Name: "refused", Type: "order.created", Payload: []byte(`{}`)}}); !errors.Is(err, publishapi.ErrUnavailable) {
		t.Fatalf("publishing while PostgreSQL is down: %v, want ErrUnavailable (503)", err)
	}
	createAll(ctx, t, newEvent(ns, "during-outage", "order.created", `{"n":-1}`))
	atStop, _ := distinct()
	time.Sleep(20*time.Second - time.Since(down)) // the outage itself, not a wait for a result
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "every message delivered after the outage", func(context.Context) (bool, string, error) {
		n, _ := distinct()
		return n == messages+1, fmt.Sprintf("%d of %d", n, messages+1), nil
	})
	queueFinished(t, q, ns, messages+1)
	n, twice := distinct()
	t.Logf("PostgreSQL down for 20 s with %d of %d delivered; afterwards %d delivered, %d twice", atStop, messages+1, n, twice)
	// At least once: what was sent and not yet committed when the database went away
	// is sent again after its lease: the attempts in flight and the outcomes waiting
	// for a group commit (up to 64 a batch, four batches buffered, one committing).
	if bound := conf.MaxConcurrentDeliveries + 5*64; twice > bound {
		t.Fatalf("%d messages arrived twice: more than could have been sent and not recorded (%d)", twice, bound)
	}
}

// An endpoint's maxInFlight holds across replicas: two managers deliver from one queue
// and the receiver never sees more attempts at once than the endpoint allows.
func TestEndpointLimitsHoldAcrossReplicas(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	q := startQueue(t)
	ns := "own-24"
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	var replicas []*Metrics
	for _, owner := range []string{"replica-a", "replica-b"} {
		conf := testConfig()
		conf.Queue, conf.QueueOwner, conf.Metrics = q, owner, NewMetrics()
		stop, err := startManager(ctx, restConfig, conf, namespaceOnly(ns))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		replicas = append(replicas, conf.Metrics)
	}
	eventually(t, 15*time.Second, "each replica counts two", func(context.Context) (bool, string, error) {
		a, b := testutil.ToFloat64(replicas[0].replicas), testutil.ToFloat64(replicas[1].replicas)
		return a == 2 && b == 2, fmt.Sprintf("hookline_delivery_replicas %v and %v", a, b), nil
	})
	held := newConcurrencyReceiver(t, 200*time.Millisecond)
	ep := newEndpoint(ns, "capped", held.URL+"/", "order.created")
	ep.Spec.RateLimit = &hooklinev1.RateLimitSpec{MaxInFlight: ptr(int32(2))}
	activeEndpoint(t, ep)
	batch := make([]publishapi.Event, 40) // more than one replica's 16 workers claim at once
	for i := range batch {
		batch[i] = publishapi.Event{Name: fmt.Sprintf("m-%d", i), Type: "order.created", Payload: []byte(`{}`)}
	}
	if _, err := (QueuePublisher{Endpoints: k8s, Queue: q}).Publish(ctx, ns, batch); err != nil {
		t.Fatal(err)
	}
	queueFinished(t, q, ns, len(batch))
	if p := held.peak.Load(); p > 2 {
		t.Fatalf("maxInFlight 2 across two replicas: the receiver saw %d attempts at once", p)
	}
}
