package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// budgetResult is what the etcd store promises with the shipped defaults, the
// admission webhook on: latency while retention prunes, one tenant's burst beside
// another's steady stream, the budget bounding a fast producer, and the event
// controller's rate by payload size.
type budgetResult struct {
	// SteadyWithPruning: 2,000 messages to one endpoint as fast as possible (past its
	// 1,000-delivery count), then 1,000 at 50/s, every one costing the pruner deletes.
	SteadyWithPruningMs map[string]float64 `json:"steadyWithPruningMs"`
	// Tenant B's 10/s alone, and during tenant A's burst of 400 events of 200 KiB.
	TenantBAloneMs     map[string]float64 `json:"tenantBAloneMs"`
	TenantBDuringA     map[string]float64 `json:"tenantBDuringBurstMs"`
	TenantARefusals    int64              `json:"tenantARefusals"`
	TenantBRefusals    int64              `json:"tenantBRefusals"`
	TenantABurstSecond float64            `json:"tenantABurstSeconds"`
	// A fast producer against --max-etcd-bytes=8Mi: hookline's bytes in etcd at most.
	SmallBudgetBytes     int64   `json:"smallBudgetBytes"`
	SmallBudgetPeakBytes int64   `json:"smallBudgetPeakBytes"`
	SmallBudgetRefusals  int64   `json:"smallBudgetRefusals"`
	SmallBudgetPerSec    float64 `json:"smallBudgetDeliveriesPerSec"`
	// Events fanned out and delivered per second, by payload size.
	EventsPerSec map[string]float64 `json:"eventsPerSecByPayload"`
}

// budgetRun is one manager on the budget's control plane, with a producer that counts
// its refusals and a receiver.
type budgetRun struct {
	env  *testenv.Env
	mgr  *managerProcess
	recv *receiver
	base string

	mu      sync.Mutex
	created map[string]time.Time // message id -> when its create returned
}

// runBudget runs the budget's scenarios on a control plane of its own whose API server
// calls the manager's admission webhook.
func runBudget(ctx context.Context, kubeconfigFor func(*testenv.Env) (string, error), work string, out *budgetResult) error {
	env, err := testenv.StartWith(testenv.Options{Webhooks: true})
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	kubeconfig, err := kubeconfigFor(env)
	if err != nil {
		return err
	}
	recv, base, stopReceiver, err := serveReceiver()
	if err != nil {
		return err
	}
	defer stopReceiver()
	_, port, certDir := env.WebhookServing()
	webhook := []string{"--admission-webhook=cert-manager", fmt.Sprintf("--webhook-port=%d", port), "--webhook-cert-dir=" + certDir}
	start := func(namespaces []string, extra ...string) (*budgetRun, error) {
		mgr, err := startManager(kubeconfig, work, namespaces, append(webhook, extra...)...)
		if err != nil {
			return nil, err
		}
		return &budgetRun{env: env, mgr: mgr, recv: recv, base: base, created: map[string]time.Time{}}, nil
	}

	// 1. Steady latency with the shipped retention at work.
	fmt.Println("budget: 2,000 messages as fast as possible, then 1,000 at 50/s, retention by count at work")
	run, err := start([]string{"budget-steady"})
	if err != nil {
		return err
	}
	if err := createEndpoints(ctx, env.Client, run.base, "budget-steady", 1); err != nil {
		run.mgr.stop()
		return err
	}
	if _, err := run.publish(ctx, "budget-steady", "history", n(2000), 0, 64, *parallel); err != nil {
		run.mgr.stop()
		return err
	}
	if err := recv.waitFor(ctx, "/budget-steady/", n(2000)); err != nil {
		run.mgr.stop()
		return err
	}
	if _, err := run.publish(ctx, "budget-steady", "steady", n(1000), 50, 64, *parallel); err != nil {
		run.mgr.stop()
		return err
	}
	if err := recv.waitFor(ctx, "/budget-steady/", n(3000)); err != nil {
		run.mgr.stop()
		return err
	}
	out.SteadyWithPruningMs = run.latencies("/budget-steady/", "steady")
	run.mgr.stop()

	// 2. Two tenants: B's steady stream alone, then beside A's burst.
	fmt.Println("budget: tenant B at 10/s alone, then beside tenant A's burst of 400 events of 200 KiB")
	if run, err = start([]string{"budget-tenant-a", "budget-tenant-b"}); err != nil {
		return err
	}
	for _, ns := range []string{"budget-tenant-a", "budget-tenant-b"} {
		if err := createEndpoints(ctx, env.Client, run.base, ns, 1); err != nil {
			run.mgr.stop()
			return err
		}
	}
	if out.TenantBRefusals, err = run.publish(ctx, "budget-tenant-b", "alone", n(100), 10, 64, 1); err != nil {
		run.mgr.stop()
		return err
	}
	if err := recv.waitFor(ctx, "/budget-tenant-b/", n(100)); err != nil {
		run.mgr.stop()
		return err
	}
	out.TenantBAloneMs = run.latencies("/budget-tenant-b/", "alone")
	burst := make(chan error, 1)
	burstStart := time.Now()
	go func() {
		refused, err := run.publish(ctx, "budget-tenant-a", "burst", n(400), 0, 200<<10, *parallel)
		out.TenantARefusals = refused
		burst <- err
	}()
	// B's stream starts with A's burst and lasts as long as it takes A to publish.
	refusedB, err := run.publish(ctx, "budget-tenant-b", "beside", n(150), 10, 64, 1)
	out.TenantBRefusals += refusedB
	if err != nil {
		run.mgr.stop()
		return err
	}
	if err := <-burst; err != nil {
		run.mgr.stop()
		return err
	}
	if err := recv.waitFor(ctx, "/budget-tenant-a/", n(400)); err != nil {
		run.mgr.stop()
		return err
	}
	out.TenantABurstSecond = time.Since(burstStart).Seconds()
	if err := recv.waitFor(ctx, "/budget-tenant-b/", n(250)); err != nil {
		run.mgr.stop()
		return err
	}
	out.TenantBDuringA = run.latencies("/budget-tenant-b/", "beside")
	run.mgr.stop()

	// 3. A fast producer against a small budget.
	fmt.Println("budget: 6,000 messages from 16 clients against --max-etcd-bytes=8Mi")
	out.SmallBudgetBytes = 8 << 20
	if run, err = start([]string{"budget-small"}, "--max-etcd-bytes=8Mi"); err != nil {
		return err
	}
	if err := createEndpoints(ctx, env.Client, run.base, "budget-small", 1); err != nil {
		run.mgr.stop()
		return err
	}
	etcd := env.Etcd()
	var peak atomic.Int64
	sampling, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		_ = wait.PollUntilContextCancel(sampling, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			if deliveries, events, err := etcd.NamespaceValueBytes(ctx, "budget-small"); err == nil && int64(deliveries+events) > peak.Load() {
				peak.Store(int64(deliveries + events))
			}
			return false, nil
		})
	}()
	began := time.Now()
	refused, err := run.publish(ctx, "budget-small", "small", n(6000), 0, 1<<10, *parallel)
	if err == nil {
		err = recv.waitFor(ctx, "/budget-small/", n(6000))
	}
	stopSampling()
	<-sampled
	run.mgr.stop()
	if err != nil {
		return err
	}
	out.SmallBudgetPeakBytes, out.SmallBudgetRefusals = peak.Load(), refused
	out.SmallBudgetPerSec = float64(n(6000)) / time.Since(began).Seconds()

	// 4. The event controller's rate by payload size.
	out.EventsPerSec = map[string]float64{}
	for _, size := range []struct {
		label string
		bytes int
		count int
	}{{"1KiB", 1 << 10, n(1000)}, {"200KiB", 200 << 10, n(300)}} {
		ns := "budget-payload-" + strings.ToLower(size.label)
		fmt.Printf("budget: %d events of %s\n", size.count, size.label)
		if run, err = start([]string{ns}); err != nil {
			return err
		}
		if err := createEndpoints(ctx, env.Client, run.base, ns, 1); err != nil {
			run.mgr.stop()
			return err
		}
		began := time.Now()
		if _, err := run.publish(ctx, ns, "e", size.count, 0, size.bytes, *parallel); err == nil {
			err = recv.waitFor(ctx, "/"+ns+"/", size.count)
		}
		run.mgr.stop()
		if err != nil {
			return err
		}
		out.EventsPerSec[size.label] = float64(size.count) / time.Since(began).Seconds()
	}
	return nil
}

// publish creates count events named prefix-NNNNNN in ns with a payload of about
// payloadBytes, at rate per second (0: as fast as clients allow), from clients
// clients; a create refused with 429 is retried (by client-go, then after a second).
// It returns how many 429 answers its creates met.
func (r *budgetRun) publish(ctx context.Context, ns, prefix string, count int, rate float64, payloadBytes, clients int) (int64, error) {
	var refused atomic.Int64
	cfg := rest.CopyConfig(r.mgr.restConfig)
	cfg.QPS, cfg.Burst = 1e6, 1e6
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return countingTransport{rt: rt, refused: &refused}
	}
	c, err := client.New(cfg, client.Options{Scheme: r.env.Client.Scheme()})
	if err != nil {
		return 0, err
	}
	var next atomic.Int64
	pad := strings.Repeat("x", max(payloadBytes-40, 0))
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				if rate > 0 {
					if d := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); d > 0 {
						time.Sleep(d)
					}
				}
				ev := &hooklinev1.WebhookEvent{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%06d", prefix, i)},
					Spec: hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtime.RawExtension{Raw: []byte(fmt.Sprintf(`{"order":%d,"pad":%q}`, i, pad))}}}
				for {
					err := c.Create(ctx, ev)
					if apierrors.IsTooManyRequests(err) {
						time.Sleep(time.Second)
						ev.ResourceVersion = ""
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					break
				}
				r.mu.Lock()
				r.created[prefix+" msg_"+strings.ReplaceAll(string(ev.UID), "-", "")] = time.Now()
				r.mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	return refused.Load(), <-errs
}

// latencies are the times from create to receipt of the messages published with prefix.
func (r *budgetRun) latencies(path, prefix string) map[string]float64 {
	got, _ := r.recv.received(path)
	r.mu.Lock()
	defer r.mu.Unlock()
	var ms []float64
	for key, at := range got {
		id := key[strings.LastIndex(key, " ")+1:]
		if c, ok := r.created[prefix+" "+id]; ok {
			ms = append(ms, float64(at.Sub(c).Microseconds())/1000)
		}
	}
	return percentiles(ms)
}

// countingTransport counts the 429 answers.
type countingTransport struct {
	rt      http.RoundTripper
	refused *atomic.Int64
}

func (t countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		t.refused.Add(1)
	}
	return resp, err
}

// printBudget prints the budget's section.
func printBudget(r budgetResult) {
	if r.SteadyWithPruningMs == nil {
		return
	}
	fmt.Println("\nthe etcd store's promises (shipped defaults, admission webhook on):")
	fmt.Printf("steady 50/s after 2,000 messages, retention by count at work: p50 %.1f ms, p99 %.1f ms\n",
		r.SteadyWithPruningMs["p50"], r.SteadyWithPruningMs["p99"])
	fmt.Printf("tenant B at 10/s: alone p50 %.1f / p99 %.1f ms; during A's burst (400 x 200 KiB, %.0f s) p50 %.1f / p99 %.1f ms; 429s: A %d, B %d\n",
		r.TenantBAloneMs["p50"], r.TenantBAloneMs["p99"], r.TenantABurstSecond, r.TenantBDuringA["p50"], r.TenantBDuringA["p99"], r.TenantARefusals, r.TenantBRefusals)
	fmt.Printf("fast producer, --max-etcd-bytes=8Mi: peak %.1f MiB of hookline's bytes in etcd (%.0f%% of the budget), %d answers 429, %.0f deliveries/s\n",
		float64(r.SmallBudgetPeakBytes)/(1<<20), 100*float64(r.SmallBudgetPeakBytes)/float64(r.SmallBudgetBytes), r.SmallBudgetRefusals, r.SmallBudgetPerSec)
	fmt.Printf("events fanned out and delivered per second: %.0f with 1 KiB payloads, %.0f with 200 KiB\n", r.EventsPerSec["1KiB"], r.EventsPerSec["200KiB"])
}

// judgeBudget states the budget's targets.
func judgeBudget(rep *report, met func(bool) string) {
	r := rep.Budget
	if r.SteadyWithPruningMs == nil {
		return
	}
	rep.Targets["etcd store, shipped defaults, pruning at work: steady half rate p99 <= 250 ms"] = fmt.Sprintf("%s (%.1f ms)",
		met(r.SteadyWithPruningMs["p99"] <= 250), r.SteadyWithPruningMs["p99"])
	rep.Targets["etcd store: tenant B's p99 during A's burst <= 2 x alone"] = fmt.Sprintf("%s (%.1f ms vs %.1f ms)",
		met(r.TenantBDuringA["p99"] <= 2*r.TenantBAloneMs["p99"]), r.TenantBDuringA["p99"], r.TenantBAloneMs["p99"])
	rep.Targets["etcd store: real bytes <= 110% of the budget with a fast producer"] = fmt.Sprintf("%s (%.0f%%)",
		met(float64(r.SmallBudgetPeakBytes) <= 1.10*float64(r.SmallBudgetBytes)), 100*float64(r.SmallBudgetPeakBytes)/float64(r.SmallBudgetBytes))
}
