package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/testenv"
)

var (
	soakFor    = flag.Duration("soak", 3*time.Minute, "how long the soak runs at the maximum rate (0: no soak)")
	soakBudget = flag.String("soak-budget", "16Mi", "the soak's --max-etcd-bytes")
	soakWindow = flag.Int("soak-window", 400, "messages the soak's producers keep outstanding (created, not yet received)")
)

// soakResult is the footprint of a run at the maximum rate with a small budget.
type soakResult struct {
	Seconds          float64 `json:"seconds"`
	BudgetBytes      int64   `json:"budgetBytes"`
	Created          int64   `json:"created"`
	Delivered        int     `json:"delivered"`
	RatePerSec       float64 `json:"deliveredPerSec"`
	MaxRetainedBytes float64 `json:"maxRetainedBytesEstimate"`
	// MaxValueBytes is measured in etcd: the values of the namespace's events and
	// deliveries, at the sampling points.
	MaxValueBytes       int                `json:"maxEtcdValueBytes"`
	LastValueBytes      int                `json:"lastEtcdValueBytes"`
	MaxHeldEvents       float64            `json:"maxHeldEvents"`
	DBInUseStartBytes   float64            `json:"dbInUseStartBytes"`
	DBInUseMaxBytes     float64            `json:"dbInUseMaxBytes"`
	DBInUseEndBytes     float64            `json:"dbInUseEndBytes"`
	DBCompactedEndBytes float64            `json:"dbInUseAfterCompactionAtEndBytes"`
	Pruned              map[string]float64 `json:"pruned"`
	// The archive (PostgreSQL) every pruned delivery went to first.
	ArchivedRows       int64   `json:"archivedRows"`
	ArchivedPerSec     float64 `json:"archivedRowsPerSec"`
	ArchiveBytesPerRow float64 `json:"archiveBytesPerDelivery"`
	PeakRSSMiB         float64 `json:"peakRSSMiB"`
	// Samples are (seconds, estimate, etcd values) every few seconds: the curve.
	Samples [][3]float64 `json:"samples"`
}

// soakReceiver counts distinct message ids.
type soakReceiver struct {
	mu   sync.Mutex
	seen map[string]bool
	n    atomic.Int64
}

func (r *soakReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	id := req.Header.Get("webhook-id")
	r.mu.Lock()
	if !r.seen[id] {
		r.seen[id] = true
		r.n.Add(1)
	}
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// runSoak runs a manager with a small budget and the shipped defaults otherwise, and
// producers that keep soakWindow messages outstanding, so that the rate is the most
// the manager sustains; it samples the footprint as the manager and etcd see it.
func runSoak(ctx context.Context, env *testenv.Env, kubeconfig, work string, out *soakResult) error {
	const ns = "bench-soak"
	budget := resource.MustParse(*soakBudget)
	out.BudgetBytes = budget.Value()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	recv := &soakReceiver{seen: map[string]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() { _ = http.Serve(ln, recv) }()
	etcd := env.Etcd()
	if err := etcd.Compact(ctx); err != nil {
		return err
	}
	if out.DBInUseStartBytes, _, err = etcd.DBSize(ctx); err != nil {
		return err
	}
	// The budget, not the counts, is what binds here.
	// Every pruned delivery goes to an archive first, as with the archive option on.
	pg, err := testenv.StartPostgres()
	if err != nil {
		return err
	}
	defer func() { _ = pg.Remove() }()
	dsnFile := filepath.Join(work, "archive-dsn")
	if err := os.WriteFile(dsnFile, []byte(pg.DSN), 0o600); err != nil {
		return err
	}
	mgr, err := startManager(kubeconfig, work, []string{ns}, append(noHistoryCounts, "--max-etcd-bytes="+*soakBudget,
		"--archive-postgres-dsn-file="+dsnFile)...)
	if err != nil {
		return err
	}
	defer mgr.stop()
	ep := &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "soak"},
		Spec: hooklinev1.WebhookEndpointSpec{URL: "http://" + ln.Addr().String() + "/soak", Events: []string{"*"}}}
	if err := env.Client.Create(ctx, ep); err != nil {
		return err
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var e hooklinev1.WebhookEndpoint
		err := env.Client.Get(ctx, client.ObjectKeyFromObject(ep), &e)
		return err == nil && meta.IsStatusConditionTrue(e.Status.Conditions, hooklinev1.ConditionReady), nil
	}); err != nil {
		return fmt.Errorf("soak endpoint not ready: %w", err)
	}
	before, err := mgr.metrics()
	if err != nil {
		return err
	}

	start := time.Now()
	stop := start.Add(*soakFor)
	var created atomic.Int64
	produce := func(c client.Client) error {
		for time.Now().Before(stop) {
			if created.Load()-recv.n.Load() >= int64(*soakWindow) {
				time.Sleep(2 * time.Millisecond)
				continue
			}
			i := created.Add(1)
			ev := &hooklinev1.WebhookEvent{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("order-%07d-created", i)},
				Spec: hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtime.RawExtension{Raw: []byte(fmt.Sprintf(`{"order":%d,"amount":990,"currency":"EUR"}`, i))}}}
			if err := c.Create(ctx, ev); err != nil {
				return err
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, *parallel)
	for range *parallel {
		c, err := fastClient(mgr.restConfig, env.Scheme)
		if err != nil {
			return err
		}
		wg.Go(func() {
			if err := produce(c); err != nil {
				errs <- err
			}
		})
	}
	sample := func() error {
		m, err := mgr.metrics()
		if err != nil {
			return err
		}
		dv, ev, err := etcd.NamespaceValueBytes(ctx, ns)
		if err != nil {
			return err
		}
		inUse, _, err := etcd.DBSize(ctx)
		if err != nil {
			return err
		}
		est := m.get("hookline_retained_bytes")
		out.MaxRetainedBytes = max(out.MaxRetainedBytes, est)
		out.MaxValueBytes = max(out.MaxValueBytes, dv+ev)
		out.LastValueBytes = dv + ev
		out.MaxHeldEvents = max(out.MaxHeldEvents, m.get("hookline_fanout_held_events"))
		out.DBInUseMaxBytes = max(out.DBInUseMaxBytes, inUse)
		out.Samples = append(out.Samples, [3]float64{time.Since(start).Seconds(), est, float64(dv + ev)})
		return nil
	}
	for time.Now().Before(stop) {
		select {
		case err := <-errs:
			return err
		case <-time.After(5 * time.Second):
		}
		if err := sample(); err != nil {
			return err
		}
		fmt.Printf("  soak %3.0fs: %d delivered, estimate %.1f MiB, etcd values %.1f MiB of a %s budget\n", time.Since(start).Seconds(),
			recv.n.Load(), out.Samples[len(out.Samples)-1][1]/(1<<20), out.Samples[len(out.Samples)-1][2]/(1<<20), *soakBudget)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	out.Created = created.Load()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 5*time.Minute, true, func(context.Context) (bool, error) {
		return recv.n.Load() >= out.Created, nil
	}); err != nil {
		return fmt.Errorf("soak: %d of %d messages delivered", recv.n.Load(), out.Created)
	}
	out.Seconds = time.Since(start).Seconds()
	out.Delivered = int(recv.n.Load())
	out.RatePerSec = float64(out.Delivered) / out.Seconds
	if err := sample(); err != nil {
		return err
	}
	after, err := mgr.metrics()
	if err != nil {
		return err
	}
	out.Pruned = map[string]float64{}
	for k, v := range after {
		if strings.HasPrefix(k, "hookline_pruned_total{") {
			out.Pruned[strings.TrimPrefix(k, "hookline_pruned_total")] = v - before[k]
		}
	}
	out.PeakRSSMiB = mgr.peakRSSMiB()
	store, err := archive.Open(ctx, pg.DSN)
	if err != nil {
		return err
	}
	defer store.Close()
	rows, bytes, err := store.Size(ctx)
	if err != nil {
		return err
	}
	out.ArchivedRows, out.ArchivedPerSec = rows, float64(rows)/out.Seconds
	if rows > 0 {
		out.ArchiveBytesPerRow = float64(bytes) / float64(rows)
	}
	if out.DBInUseEndBytes, _, err = etcd.DBSize(ctx); err != nil {
		return err
	}
	if err := etcd.Compact(ctx); err != nil {
		return err
	}
	out.DBCompactedEndBytes, _, err = etcd.DBSize(ctx)
	return err
}

func judgeSoak(rep *report, met func(bool) string) {
	s := rep.Soak
	if s.Created == 0 {
		return
	}
	if f := rep.Etcd; f.BoundMiB > 0 {
		rep.Targets["etcd: the default budget bounds the database below 2 GiB at the maximum rate"] = fmt.Sprintf("%s (at most %.0f MiB)",
			met(f.BoundMiB < 2048), f.BoundMiB)
	}
	rep.Targets["soak: retained bytes (estimate and etcd values) <= budget"] = fmt.Sprintf("%s (estimate max %.1f MiB, etcd values max %.1f MiB, budget %.1f MiB)",
		met(s.MaxRetainedBytes <= float64(s.BudgetBytes) && s.MaxValueBytes <= int(s.BudgetBytes)),
		s.MaxRetainedBytes/(1<<20), float64(s.MaxValueBytes)/(1<<20), float64(s.BudgetBytes)/(1<<20))
	pruned := 0.0
	for k, v := range s.Pruned {
		if strings.Contains(k, "WebhookDelivery") {
			pruned += v
		}
	}
	rep.Targets["soak: every pruned delivery archived first"] = fmt.Sprintf("%s (%d archived, %.0f pruned)", met(float64(s.ArchivedRows) >= pruned), s.ArchivedRows, pruned)
	rep.Targets["soak: every message delivered"] = fmt.Sprintf("%s (%d of %d)", met(int64(s.Delivered) >= s.Created), s.Delivered, s.Created)
}

func printSoak(rep *report) {
	s := rep.Soak
	if s.Created == 0 {
		return
	}
	fmt.Printf("\nsoak: %.0f s at %.0f deliveries/s (%d messages) with a %.0f MiB budget: retained estimate max %.1f MiB, etcd values max %.1f MiB (last %.1f MiB); "+
		"fan-out held max %.0f events; etcd in use %.1f MiB at the start, max %.1f, %.1f at the end, %.1f once compacted; pruned %v; peak RSS %.0f MiB\n",
		s.Seconds, s.RatePerSec, s.Delivered, float64(s.BudgetBytes)/(1<<20), s.MaxRetainedBytes/(1<<20), float64(s.MaxValueBytes)/(1<<20),
		float64(s.LastValueBytes)/(1<<20), s.MaxHeldEvents, s.DBInUseStartBytes/(1<<20), s.DBInUseMaxBytes/(1<<20), s.DBInUseEndBytes/(1<<20),
		s.DBCompactedEndBytes/(1<<20), s.Pruned, s.PeakRSSMiB)
	fmt.Printf("soak archive: %d deliveries archived before they were pruned, %.0f rows/s; %.0f bytes per archived delivery in PostgreSQL (tables, indexes, TOAST)\n",
		s.ArchivedRows, s.ArchivedPerSec, s.ArchiveBytesPerRow)
}
