package controllers

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/engine"
	"github.com/hookline/hookline/internal/retention"
	"github.com/hookline/hookline/internal/secrets"
	"github.com/hookline/hookline/internal/testenv"
)

// The tests of this file run the reconcilers by hand, with a fake clock, against the
// real API server and through a real cache with the manager's indexes, in a reserved
// namespace no manager watches. A finished object reconciled again, whatever the
// clock says, and a stale copy of it from before it finished, must not be written
// again nor reported twice.

// countingRecorder counts the Kubernetes Events the reconcilers emit, by object and reason.
type countingRecorder struct {
	mu    sync.Mutex
	count map[string]int
}

func (r *countingRecorder) Eventf(regarding, _ runtime.Object, _, reason, _, _ string, _ ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.count == nil {
		r.count = map[string]int{}
	}
	r.count[regarding.(client.Object).GetName()+"/"+reason]++
}

func (r *countingRecorder) of(name, reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count[name+"/"+reason]
}

// staleReads answers Gets of one object with a copy from the past, as a cache that has
// not caught up does.
type staleReads struct {
	client.Client
	old client.Object
}

func (s staleReads) Get(ctx context.Context, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if k == client.ObjectKeyFromObject(s.old) {
		reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(s.old.DeepCopyObject()).Elem())
		return nil
	}
	return s.Client.Get(ctx, k, obj, opts...)
}

// handRig holds the reconcilers of one reserved namespace.
type handRig struct {
	t          *testing.T
	ns         string
	clock      *clocktesting.FakeClock
	cached     client.Client // reads through the cache, writes to the API server
	recorder   *countingRecorder
	events     *EventReconciler
	deliveries *DeliveryReconciler
	endpoints  *EndpointReconciler
}

func newHandRig(t *testing.T, ns string) *handRig {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	opts := CacheOptions()
	opts.Scheme = testScheme
	opts.DefaultNamespaces = map[string]cache.Config{ns: {}}
	c, err := cache.New(restConfig, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := SetupIndexes(ctx, c); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.Start(ctx) }()
	cached, err := client.New(restConfig, client.Options{Scheme: testScheme, Cache: &client.CacheOptions{Reader: c}})
	if err != nil {
		t.Fatal(err)
	}
	// Informers start on first use, once the cache runs: list every kind until each
	// list is served from a synced informer.
	eventually(t, 10*time.Second, "cache started", func(ctx context.Context) (bool, string, error) {
		for _, l := range []client.ObjectList{&hooklinev1.WebhookEventList{}, &hooklinev1.WebhookDeliveryList{}, &hooklinev1.WebhookEndpointList{}, &corev1.SecretList{}} {
			if err := cached.List(ctx, l, client.InNamespace(ns)); err != nil {
				return false, err.Error(), nil
			}
		}
		return true, "", nil
	})
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	rec := &countingRecorder{}
	secretReader := engine.SecretReader{Cached: cached, User: secrets.NewUserSecretCache(k8s)}
	metrics := NewMetrics()
	health := newEndpointHealth(cached, k8s, metrics)
	sender := delivery.NewClient(delivery.Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true, UserAgent: "hookline/test"})
	return &handRig{
		t: t, ns: ns, clock: clk, cached: cached, recorder: rec,
		events: &EventReconciler{Client: cached, APIReader: k8s, Recorder: rec, Clock: clk, Gate: retention.NewGate(0),
			wakeups: make(chan event.GenericEvent, 8)},
		deliveries: newDeliveryReconciler(cached, engine.Engine{Secrets: secretReader, Sender: sender, Health: health, Metrics: metrics,
			Events: rec, Clock: clk, EndpointShare: 1}, rec, clk, Config{MaxConcurrentDeliveries: 4, Metrics: metrics}),
		endpoints: &EndpointReconciler{Client: cached, Secrets: secretReader, Recorder: rec, Clock: clk, AllowInsecureHTTP: true},
	}
}

type reconciler interface {
	Reconcile(context.Context, ctrl.Request) (ctrl.Result, error)
}

// reconcile runs r once for the object, after the cache holds what the API server holds.
func (h *handRig) reconcile(r reconciler, obj client.Object) {
	h.t.Helper()
	h.synced(obj)
	if _, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(obj)}); err != nil {
		h.t.Fatalf("reconcile %s: %v", obj.GetName(), err)
	}
}

// synced waits until the cache holds the object's current resourceVersion.
func (h *handRig) synced(obj client.Object) {
	h.t.Helper()
	want := h.live(obj).GetResourceVersion()
	eventually(h.t, 10*time.Second, "cache has "+obj.GetName(), func(ctx context.Context) (bool, string, error) {
		got := obj.DeepCopyObject().(client.Object)
		if err := h.cached.Get(ctx, client.ObjectKeyFromObject(obj), got); err != nil {
			return false, err.Error(), nil
		}
		return got.GetResourceVersion() == want, got.GetResourceVersion(), nil
	})
}

// live is the object as the API server has it now.
func (h *handRig) live(obj client.Object) client.Object {
	h.t.Helper()
	got := obj.DeepCopyObject().(client.Object)
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(obj), got); err != nil {
		h.t.Fatal(err)
	}
	return got
}

// settle reconciles until a reconcile writes nothing (at most five times).
func (h *handRig) settle(r reconciler, obj client.Object) {
	h.t.Helper()
	for range 5 {
		rv := h.live(obj).GetResourceVersion()
		h.reconcile(r, obj)
		if h.live(obj).GetResourceVersion() == rv {
			return
		}
	}
	h.t.Fatalf("%s is still written after five reconciles", obj.GetName())
}

// staysUnwritten moves the clock by a second, a minute and an hour, reconciles the
// object after each step, and fails at the first write.
func (h *handRig) staysUnwritten(r reconciler, obj client.Object) {
	h.t.Helper()
	rv := h.live(obj).GetResourceVersion()
	for _, step := range []time.Duration{time.Second, time.Minute, time.Hour} {
		h.clock.Step(step)
		h.reconcile(r, obj)
		if got := h.live(obj).GetResourceVersion(); got != rv {
			h.t.Fatalf("%s was written again %s later (resourceVersion %s -> %s)", obj.GetName(), step, rv, got)
		}
	}
}

// staleCopyWritesNothing reconciles a copy of the object from before it finished, as a
// cache that has not caught up serves it, and fails if anything is written.
func (h *handRig) staleCopyWritesNothing(old client.Object, withStale func(client.Client) reconciler) {
	h.t.Helper()
	rv := h.live(old).GetResourceVersion()
	h.clock.Step(time.Minute)
	if _, err := withStale(staleReads{Client: h.cached, old: old}).Reconcile(context.Background(),
		ctrl.Request{NamespacedName: client.ObjectKeyFromObject(old)}); err != nil {
		h.t.Fatalf("reconcile a stale copy of %s: %v", old.GetName(), err)
	}
	if got := h.live(old).GetResourceVersion(); got != rv {
		h.t.Fatalf("a stale copy of %s was written over the newer one (resourceVersion %s -> %s)", old.GetName(), rv, got)
	}
}

func (h *handRig) create(objs ...client.Object) {
	h.t.Helper()
	createAll(context.Background(), h.t, objs...)
}

func completeReason(ev client.Object) string {
	c := meta.FindStatusCondition(ev.(*hooklinev1.WebhookEvent).Status.Conditions, hooklinev1.ConditionComplete)
	if c == nil {
		return ""
	}
	return c.Reason
}

func (h *handRig) staleEvents(c client.Client) reconciler {
	return &EventReconciler{Client: c, APIReader: k8s, Recorder: h.recorder, Clock: h.clock, Gate: h.events.Gate,
		wakeups: make(chan event.GenericEvent, 8)}
}

func (h *handRig) staleDeliveries(c client.Client) reconciler {
	eng := *h.deliveries.Engine
	return newDeliveryReconciler(c, eng, h.recorder, h.clock, Config{MaxConcurrentDeliveries: 4, Metrics: h.deliveries.Metrics})
}

func (h *handRig) staleEndpoints(c client.Client) reconciler {
	r := *h.endpoints
	r.Client = c
	r.Secrets.Cached = c
	return &r
}

// readyEndpoint creates an endpoint for the receiver and reconciles it until it is
// Ready and settled.
func (h *handRig) readyEndpoint(name, url string, events ...string) *hooklinev1.WebhookEndpoint {
	h.t.Helper()
	ep := newEndpoint(h.ns, name, url, events...)
	h.create(ep)
	h.settle(h.endpoints, ep)
	live := h.live(ep).(*hooklinev1.WebhookEndpoint)
	if !live.AcceptsDeliveries() {
		h.t.Fatalf("endpoint %s does not accept deliveries: %+v", name, live.Status.Conditions)
	}
	return live
}

func TestFinalEventsAreNotWrittenAgain(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	h := newHandRig(t, "own-12")
	recv := newReceiver(t)
	h.readyEndpoint("acme", recv.URL+"/", "order.created")

	t.Run("refused for an invalid payload", func(t *testing.T) {
		h.t = t
		ev := &hooklinev1.WebhookEvent{ObjectMeta: metav1.ObjectMeta{Name: "too-deep", Namespace: h.ns},
			Spec: hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtime.RawExtension{Raw: nestedPayload(100)}}}
		h.create(ev)
		before := h.live(ev)
		h.reconcile(h.events, ev)
		if got := completeReason(h.live(ev)); got != hooklinev1.ReasonInvalidPayload {
			t.Fatalf("Complete reason %q, want %s", got, hooklinev1.ReasonInvalidPayload)
		}
		h.staysUnwritten(h.events, ev)
		h.staleCopyWritesNothing(before, h.staleEvents)
		if n := h.recorder.of(ev.Name, hooklinev1.ReasonInvalidPayload); n != 1 {
			t.Fatalf("%d InvalidPayload Events, want 1", n)
		}
	})
	t.Run("no endpoint subscribes", func(t *testing.T) {
		h.t = t
		ev := newEvent(h.ns, "nobody", "order.nobody", `{"id":1}`)
		h.create(ev)
		before := h.live(ev)
		h.reconcile(h.events, ev)
		if got := completeReason(h.live(ev)); got != hooklinev1.ReasonNoEndpoints {
			t.Fatalf("Complete reason %q, want %s", got, hooklinev1.ReasonNoEndpoints)
		}
		h.staysUnwritten(h.events, ev)
		h.staleCopyWritesNothing(before, h.staleEvents)
	})
	t.Run("all deliveries succeeded", func(t *testing.T) {
		h.t = t
		ev := newEvent(h.ns, "order-1", "order.created", `{"id":1}`)
		h.create(ev)
		h.reconcile(h.events, ev) // fans out
		d := &hooklinev1.WebhookDelivery{ObjectMeta: metav1.ObjectMeta{Namespace: h.ns, Name: deliveryName(ev.Name, "acme")}}
		h.reconcile(h.deliveries, d)
		if got := h.live(d).(*hooklinev1.WebhookDelivery).Status.Phase; got != hooklinev1.PhaseSucceeded {
			t.Fatalf("delivery phase %s, want Succeeded", got)
		}
		h.synced(d)
		beforeCompletion := h.live(ev)
		h.reconcile(h.events, ev) // counts
		if got := completeReason(h.live(ev)); got != hooklinev1.ReasonAllSucceeded {
			t.Fatalf("Complete reason %q, want %s", got, hooklinev1.ReasonAllSucceeded)
		}
		h.staysUnwritten(h.events, ev)
		h.staleCopyWritesNothing(beforeCompletion, h.staleEvents)
		h.staysUnwritten(h.deliveries, d)
		if n := len(recv.got()); n != 1 {
			t.Fatalf("the receiver got %d requests, want 1", n)
		}
	})
}

func TestFinalDeliveriesAreNotWrittenAgain(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	h := newHandRig(t, "own-13")
	recv := newReceiver(t)
	h.readyEndpoint("acme", recv.URL+"/", "order.created")
	disabled := h.readyEndpoint("off", recv.URL+"/off", "order.created")
	disabled.Status.DisabledReason = hooklinev1.DisabledEndpointGone
	if err := k8s.Status().Update(context.Background(), disabled); err != nil {
		t.Fatal(err)
	}
	badPayload := directDelivery(h.ns, "bad-payload", "acme")
	badPayload.Spec.Payload = &runtime.RawExtension{Raw: nestedPayload(100)}
	cases := []struct {
		delivery *hooklinev1.WebhookDelivery
		reason   string
	}{
		{directDelivery(h.ns, "endpoint-deleted", "gone"), hooklinev1.ReasonEndpointDeleted},
		{directDelivery(h.ns, "endpoint-disabled", "off"), hooklinev1.ReasonEndpointDisabled},
		{badPayload, hooklinev1.ReasonBadPayload},
	}
	for _, c := range cases {
		t.Run(c.reason, func(t *testing.T) {
			h.t = t
			h.create(c.delivery)
			before := h.live(c.delivery)
			h.reconcile(h.deliveries, c.delivery)
			got := h.live(c.delivery).(*hooklinev1.WebhookDelivery)
			cond := meta.FindStatusCondition(got.Status.Conditions, hooklinev1.ConditionSucceeded)
			if got.Status.Phase != hooklinev1.PhaseFailed || cond == nil || cond.Reason != c.reason {
				t.Fatalf("phase %s, condition %+v; want Failed/%s", got.Status.Phase, cond, c.reason)
			}
			h.staysUnwritten(h.deliveries, c.delivery)
			h.staleCopyWritesNothing(before, h.staleDeliveries)
			if n := h.recorder.of(c.delivery.Name, string(hooklinev1.PhaseFailed)); n != 1 {
				t.Fatalf("%d Failed Events, want 1", n)
			}
		})
	}
	if n := len(recv.got()); n != 0 {
		t.Fatalf("the receiver got %d requests, want none", n)
	}
}

func TestFinalEndpointStatusIsNotWrittenAgain(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	h := newHandRig(t, "own-14")
	recv := newReceiver(t)
	ep := h.readyEndpoint("acme", recv.URL+"/", "order.created")

	t.Run("settled", func(t *testing.T) {
		h.t = t
		h.staysUnwritten(h.endpoints, ep)
	})
	t.Run("rotated", func(t *testing.T) {
		h.t = t
		patched(t, ep, func(e *hooklinev1.WebhookEndpoint) {
			metav1.SetMetaDataAnnotation(&e.ObjectMeta, hooklinev1.AnnotationRotateSecret, "r1")
		})
		before := h.live(ep)
		h.reconcile(h.endpoints, ep)
		live := h.live(ep).(*hooklinev1.WebhookEndpoint)
		if live.Status.LastHandledRotateSecret != "r1" || live.Status.LastRotationTime == nil {
			t.Fatalf("rotation not recorded: %+v", live.Status)
		}
		rotatedAt := live.Status.LastRotationTime.Time
		h.settle(h.endpoints, ep)
		h.staysUnwritten(h.endpoints, ep)
		h.staleCopyWritesNothing(before, h.staleEndpoints)
		if got := h.live(ep).(*hooklinev1.WebhookEndpoint).Status.LastRotationTime.Time; !got.Equal(rotatedAt) {
			t.Fatalf("lastRotationTime moved from %s to %s", rotatedAt, got)
		}
		if n := h.recorder.of(ep.Name, "SecretRotated"); n != 1 {
			t.Fatalf("%d SecretRotated Events, want 1", n)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		h.t = t
		live := h.live(ep).(*hooklinev1.WebhookEndpoint)
		live.Status.DisabledReason = hooklinev1.DisabledFailingTooLong
		live.Status.DisabledGeneration = live.Generation
		if err := k8s.Status().Update(context.Background(), live); err != nil {
			t.Fatal(err)
		}
		before := h.live(ep)
		h.reconcile(h.endpoints, ep)
		c := meta.FindStatusCondition(h.live(ep).(*hooklinev1.WebhookEndpoint).Status.Conditions, hooklinev1.ConditionReady)
		if c == nil || c.Reason != hooklinev1.ReasonDisabled {
			t.Fatalf("Ready %+v, want reason Disabled", c)
		}
		h.staysUnwritten(h.endpoints, ep)
		h.staleCopyWritesNothing(before, h.staleEndpoints)
		if n := h.recorder.of(ep.Name, "Disabled"); n != 1 {
			t.Fatalf("%d Disabled Events, want 1", n)
		}
	})
}
