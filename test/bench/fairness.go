package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/conncount"
)

// The fairness scenarios' namespaces (the manager watches them from the start).
const (
	nsSteadyAlone   = "bench-steady-alone"
	nsNoisyStuck    = "bench-noisy-stuck"
	nsNoisyHealthy  = "bench-noisy-healthy"
	nsHeaders       = "bench-huge-headers"
	steadyRate      = 10.0
	stuckDeliveries = 200
	hugeHeaderConns = 64
)

// fairnessResult is what the noisy-neighbour and huge-headers scenarios measured.
type fairnessResult struct {
	AloneP99Ms         float64 `json:"aloneP99Ms"`
	WithStuckP99Ms     float64 `json:"withStuckP99Ms"`
	StuckPeakConns     int     `json:"stuckPeakOpenConnections"`
	HugeHeadersPeakRSS float64 `json:"hugeHeadersPeakRSSMiB"`
	GlobalCap          int     `json:"globalCap"`
}

// connCountingServer serves h on loopback and counts the connections open to it.
type connCountingServer struct {
	base string
	conncount.Counter
}

func serveCounting(h http.Handler) (*connCountingServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &connCountingServer{base: "http://" + ln.Addr().String()}
	srv := &http.Server{Handler: h, ConnState: s.ConnState}
	go func() { _ = srv.Serve(ln) }()
	return s, nil
}

// runNoisyNeighbour measures a healthy endpoint's latency at a steady 10 events/s
// alone, then again while another namespace's endpoint never answers (default
// timeout) with 200 deliveries queued; the stuck receiver counts the connections.
func runNoisyNeighbour(ctx context.Context, admin client.Client, mgr *managerProcess, recv *receiver, base string, out *fairnessResult) ([]scenarioResult, error) {
	events := n(100)
	alone, err := runScenario(ctx, admin, mgr, recv, base, nsSteadyAlone, events, 1, steadyRate, 0, false)
	if err != nil {
		return nil, fmt.Errorf("steady alone: %w", err)
	}
	alone.Name = "steady-10/s-alone"
	if err := mgr.waitIdle(ctx); err != nil {
		return nil, err
	}

	stuck, err := serveCounting(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done() // never answers; the manager gives up after timeoutSeconds
	}))
	if err != nil {
		return nil, err
	}
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsNoisyStuck}}); err != nil {
		return nil, err
	}
	ep := &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: nsNoisyStuck, Name: "stuck"},
		Spec: hooklinev1.WebhookEndpointSpec{URL: stuck.base + "/", Events: []string{"*"}}} // the default 15 s timeout
	if err := admin.Create(ctx, ep); err != nil {
		return nil, err
	}
	if err := inParallel(n(stuckDeliveries), func(i int) error {
		return admin.Create(ctx, &hooklinev1.WebhookDelivery{
			ObjectMeta: metav1.ObjectMeta{Namespace: nsNoisyStuck, Name: fmt.Sprintf("stuck-%04d", i)},
			Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "stuck"}, EventType: "order.created",
				Payload: &runtime.RawExtension{Raw: []byte(fmt.Sprintf(`{"n":%d}`, i))}}})
	}); err != nil {
		return nil, err
	}
	noisy, err := runScenario(ctx, admin, mgr, recv, base, nsNoisyHealthy, events, 1, steadyRate, 0, false)
	if err != nil {
		return nil, fmt.Errorf("steady beside a stuck endpoint: %w", err)
	}
	noisy.Name = "steady-10/s-beside-stuck"
	out.AloneP99Ms, out.WithStuckP99Ms = alone.LatencyMs["p99"], noisy.LatencyMs["p99"]
	out.StuckPeakConns = stuck.Peak()
	// The stuck deliveries retry for hours; they are removed so the next scenario
	// starts on a quiet manager.
	if err := admin.DeleteAllOf(ctx, &hooklinev1.WebhookDelivery{}, client.InNamespace(nsNoisyStuck)); err != nil {
		return nil, err
	}
	if err := admin.Delete(ctx, ep); err != nil {
		return nil, err
	}
	return []scenarioResult{alone, noisy}, nil
}

// runHugeHeaders has 64 attempts in flight at once, each answered with 8 MiB of
// headers, and reports the manager's peak RSS over the whole run.
func runHugeHeaders(ctx context.Context, admin client.Client, mgr *managerProcess, out *fairnessResult) error {
	header := strings.Repeat("x", 8<<10)
	var gate sync.WaitGroup
	gate.Add(hugeHeaderConns)
	var once sync.Once
	release := make(chan struct{})
	srv, err := serveCounting(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		gate.Done()
		go once.Do(func() { gate.Wait(); close(release) })
		select { // answer once all 64 are in flight, so they are read at the same time
		case <-release:
		case <-time.After(5 * time.Second):
		}
		for i := range 1024 {
			w.Header().Set(fmt.Sprintf("X-Big-%04d", i), header) // 8 MiB in all
		}
		w.WriteHeader(http.StatusOK)
	}))
	if err != nil {
		return err
	}
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsHeaders}}); err != nil {
		return err
	}
	inFlight, one := int32(hugeHeaderConns), int32(1)
	ep := &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: nsHeaders, Name: "verbose"},
		Spec: hooklinev1.WebhookEndpointSpec{URL: srv.base + "/", Events: []string{"*"},
			RateLimit: &hooklinev1.RateLimitSpec{MaxInFlight: &inFlight}, Retry: hooklinev1.RetrySpec{MaxAttempts: &one}}}
	if err := admin.Create(ctx, ep); err != nil {
		return err
	}
	if err := inParallel(hugeHeaderConns, func(i int) error {
		return admin.Create(ctx, &hooklinev1.WebhookDelivery{
			ObjectMeta: metav1.ObjectMeta{Namespace: nsHeaders, Name: fmt.Sprintf("verbose-%02d", i)},
			Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "verbose"}, EventType: "order.created",
				Payload: &runtime.RawExtension{Raw: []byte(`{"n":1}`)}}})
	}); err != nil {
		return err
	}
	if err := waitFinished(ctx, admin, nsHeaders, hugeHeaderConns, 0); err != nil {
		return err
	}
	out.HugeHeadersPeakRSS = mgr.peakRSSMiB()
	return nil
}
