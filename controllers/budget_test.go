package controllers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/admission"
	"github.com/hookline/hookline/internal/retention"
	"github.com/hookline/hookline/internal/testenv"
)

// budgetRig is a control plane of its own whose API server calls the admission
// webhook, served here with the manager's gate, and one manager on it.
type budgetRig struct {
	env     *testenv.Env
	gate    *retention.Gate
	metrics *Metrics
	// refused are the admission's refusals by namespace, with why.
	mu      sync.Mutex
	refused map[string][]string
}

// recordingBudget is the manager's AdmissionBudget, its refusals recorded.
type recordingBudget struct {
	AdmissionBudget
	rig *budgetRig
}

func (b recordingBudget) AdmitCreate(kind, namespace, name string, payloadBytes int) (bool, string) {
	ok, why := b.AdmissionBudget.AdmitCreate(kind, namespace, name, payloadBytes)
	if !ok {
		b.rig.mu.Lock()
		b.rig.refused[namespace] = append(b.rig.refused[namespace], why)
		b.rig.mu.Unlock()
	}
	return ok, why
}

func newBudgetRig(t *testing.T, budget int64) *budgetRig {
	t.Helper()
	env, err := testenv.StartWith(testenv.Options{Webhooks: true})
	testenv.SkipIfMissing(t, err)
	t.Cleanup(func() { _ = env.Stop() })
	r := &budgetRig{env: env, gate: retention.NewGate(budget), metrics: NewMetrics(), refused: map[string][]string{}}
	host, port, certDir := env.WebhookServing()
	cert, err := tls.LoadX509KeyPair(filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port)), &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(admission.PayloadPath, admission.PayloadHandler{Budget: recordingBudget{AdmissionBudget{Gate: r.gate, Metrics: r.metrics}, r}})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	conf := testConfig()
	conf.Gate, conf.Metrics = r.gate, r.metrics
	conf.Retention.MaxBytes = budget
	conf.Retention.Interval = 500 * time.Millisecond
	stop, err := startManager(context.Background(), env.Config, conf, cache.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return r
}

// activeIn creates an endpoint on the rig's control plane and waits until it is Ready.
func (r *budgetRig) activeIn(t *testing.T, ep *hooklinev1.WebhookEndpoint) {
	t.Helper()
	ctx := context.Background()
	if err := r.env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ep.Namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := r.env.Client.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "endpoint "+ep.Name+" Ready", func(ctx context.Context) (bool, string, error) {
		var got hooklinev1.WebhookEndpoint
		err := r.env.Client.Get(ctx, client.ObjectKeyFromObject(ep), &got)
		return err == nil && meta.IsStatusConditionTrue(got.Status.Conditions, hooklinev1.ConditionReady), fmt.Sprint(err), nil
	})
}

// producer publishes events with client-go's own retries and, beyond them, its own
// (a robust producer); it counts the 429 answers it got.
type producer struct {
	c         client.Client
	refusals  atomic.Int64
	published atomic.Int64
}

func (r *budgetRig) producer(t *testing.T) *producer {
	t.Helper()
	p := &producer{}
	cfg := rest.CopyConfig(r.env.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(req)
			if err == nil && resp.StatusCode == http.StatusTooManyRequests {
				p.refusals.Add(1)
			}
			return resp, err
		})
	}
	c, err := client.New(cfg, client.Options{Scheme: r.env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	p.c = c
	return p
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// publish creates ev, retrying as long as the budget refuses it.
func (p *producer) publish(ctx context.Context, ev *hooklinev1.WebhookEvent) error {
	for {
		err := p.c.Create(ctx, ev.DeepCopy())
		if apierrors.IsTooManyRequests(err) {
			time.Sleep(time.Second)
			continue
		}
		if err == nil {
			p.published.Add(1)
		}
		return err
	}
}

// publishAll publishes count events named prefix-NNNN in ns from 8 clients at once, in
// the background; the channel says how it went.
func (p *producer) publishAll(ctx context.Context, ns, prefix string, count int, payload string) <-chan error {
	done := make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		errs := make(chan error, count)
		sem := make(chan struct{}, 8)
		for i := range count {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := p.publish(ctx, newEvent(ns, fmt.Sprintf("%s-%04d", prefix, i), "order.created", payload)); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		var all []error
		for err := range errs {
			all = append(all, err)
		}
		done <- errors.Join(all...)
	}()
	return done
}

// slowReceiver answers after a delay and counts the distinct messages it got.
type slowReceiver struct {
	delay time.Duration
	mu    sync.Mutex
	ids   map[string]time.Time
}

func (s *slowReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	time.Sleep(s.delay)
	s.mu.Lock()
	if _, seen := s.ids[r.Header.Get("webhook-id")]; !seen {
		s.ids[r.Header.Get("webhook-id")] = time.Now()
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (s *slowReceiver) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// A producer that publishes faster than the receiver takes is held at the door: the
// budget counts the events too, creates beyond it get 429 with a Retry-After, the
// producer's client retries, and what etcd holds stays within the budget (plus a
// margin for what a count takes). Every message is delivered.
func TestProducersFasterThanDeliveryAreHeldAtTheDoor(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	const budget = 1 << 20
	r := newBudgetRig(t, budget)
	ctx := context.Background()
	ns := "fast-producer"
	recv := &slowReceiver{delay: 20 * time.Millisecond, ids: map[string]time.Time{}}
	srv := newHandlerServer(t, recv)
	ep := newEndpoint(ns, "slow", srv.URL+"/", "order.created")
	ep.Spec.RateLimit = &hooklinev1.RateLimitSpec{MaxInFlight: ptr(int32(2))}
	r.activeIn(t, ep)

	const events = 600
	p := r.producer(t)
	payload := fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 2000))
	published := p.publishAll(ctx, ns, "e", events, payload)
	etcd := r.env.Etcd()
	var peak int64
	done := false
	for !done {
		select {
		case err := <-published:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		case <-time.After(50 * time.Millisecond):
		}
		deliveries, evs, err := etcd.NamespaceValueBytes(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		peak = max(peak, int64(deliveries+evs))
	}
	eventually(t, 60*time.Second, "every message delivered", func(ctx context.Context) (bool, string, error) {
		deliveries, evs, err := etcd.NamespaceValueBytes(ctx, ns)
		peak = max(peak, int64(deliveries+evs))
		return recv.count() == events, fmt.Sprintf("%d of %d", recv.count(), events), err
	})
	t.Logf("peak %d bytes in etcd of a %d-byte budget (%.0f%%); %d answers 429", peak, budget, 100*float64(peak)/budget, p.refusals.Load())
	if p.refusals.Load() == 0 {
		t.Fatal("the producer was never refused: the test did not outrun delivery")
	}
	if float64(peak) > 1.10*budget {
		t.Fatalf("etcd held %d bytes of the namespace, over 110%% of the %d-byte budget", peak, budget)
	}
}

// Namespace A bursts beyond the budget; namespace B publishes a steady few meanwhile.
// A, over its share, is held at the door; B, under its share, is never refused and its
// messages are delivered while A's burst still waits. Once B is idle, A gets all of
// its messages through.
func TestANamespaceOverItsShareIsHeldAndTheOthersFlow(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	const budget = 2 << 20
	r := newBudgetRig(t, budget)
	ctx := context.Background()
	recvA := &slowReceiver{delay: 30 * time.Millisecond, ids: map[string]time.Time{}}
	recvB := &slowReceiver{ids: map[string]time.Time{}}
	epA := newEndpoint("tenant-a", "a", newHandlerServer(t, recvA).URL+"/", "order.created")
	epA.Spec.RateLimit = &hooklinev1.RateLimitSpec{MaxInFlight: ptr(int32(2))}
	r.activeIn(t, epA)
	r.activeIn(t, newEndpoint("tenant-b", "b", newHandlerServer(t, recvB).URL+"/", "order.created"))

	pA, pB := r.producer(t), r.producer(t)
	const burst, steady = 300, 20
	big := fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 20_000))
	burstDone := pA.publishAll(ctx, "tenant-a", "a", burst, big)
	// B publishes once A is being refused.
	eventually(t, 60*time.Second, "tenant A refused at the door", func(context.Context) (bool, string, error) {
		return pA.refusals.Load() > 0, fmt.Sprintf("%d published", pA.published.Load()), nil
	})
	for i := range steady {
		if err := pB.publish(ctx, newEvent("tenant-b", fmt.Sprintf("b-%02d", i), "order.created", `{"n":1}`)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	eventually(t, 20*time.Second, "tenant B's messages delivered", func(context.Context) (bool, string, error) {
		return recvB.count() == steady, fmt.Sprintf("%d of %d", recvB.count(), steady), nil
	})
	aWhenBDone := recvA.count()
	r.mu.Lock()
	refusedB := r.refused["tenant-b"]
	r.mu.Unlock()
	// B may meet the whole budget full for a moment (the estimate counts what is
	// admitted until a count shows it), never its share. (A was refused before B began.)
	if len(refusedB) > 2 {
		t.Errorf("tenant B, under its share, was refused %d times: %v", len(refusedB), refusedB)
	}
	for _, why := range refusedB {
		if strings.Contains(why, "namespace tenant-b holds") {
			t.Errorf("tenant B was refused for its share: %s", why)
		}
	}
	if aWhenBDone >= burst {
		t.Fatalf("tenant A's burst was all delivered (%d) before B's last: the test did not hold A", aWhenBDone)
	}
	if err := <-burstDone; err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "tenant A's burst delivered once B is idle", func(context.Context) (bool, string, error) {
		return recvA.count() == burst, fmt.Sprintf("%d of %d", recvA.count(), burst), nil
	})
	t.Logf("tenant A: %d answers 429, %d of %d delivered when B's %d were", pA.refusals.Load(), aWhenBDone, burst, steady)
}
