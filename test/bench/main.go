// The benchmark: what the local API server accepts (the limit), and what hookline
// delivers through it end to end, with the manager running as its real binary. Prints a
// table and writes bin/bench-report.json. Run with `make bench`.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

var (
	managerBin = flag.String("manager", "bin/manager", "the manager binary")
	reportPath = flag.String("report", "bin/bench-report.json", "where the JSON report goes")
	parallel   = flag.Int("parallel", 16, "parallel clients creating objects")
	scale      = flag.Float64("scale", 1, "multiply every object count (0.1 for a quick run)")
	only       = flag.String("only", "", "run one part: soak, stores or budget (default: everything)")
	cpuProfile = flag.String("cpuprofile", "bin/bench-manager-cpu.pprof", "where the manager's CPU profile during fanout-1 goes (empty: none)")
)

func main() {
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func n(base int) int { return max(1, int(float64(base)**scale)) }

// report is everything measured, as written to the JSON file.
type report struct {
	Date     string            `json:"date"`
	Machine  string            `json:"machine"`
	Limit    limitResult       `json:"limit"`
	Runs     []scenarioResult  `json:"scenarios"`
	Memory   memoryResult      `json:"memory"`
	Fairness fairnessResult    `json:"fairness"`
	Etcd     footprintResult   `json:"etcd"`
	Soak     soakResult        `json:"soak"`
	Stores   storesResult      `json:"stores"`
	Budget   budgetResult      `json:"budget"`
	Targets  map[string]string `json:"targets"`
}

type limitResult struct {
	CreatesPerSec     float64 `json:"createsPerSec"`
	CreateUpdatePairs float64 `json:"createUpdatePairsPerSec"`
}

type scenarioResult struct {
	Name              string             `json:"name"`
	Events            int                `json:"events"`
	Endpoints         int                `json:"endpoints"`
	Deliveries        int                `json:"deliveries"`
	DeliveriesPerSec  float64            `json:"deliveriesPerSec"`
	LatencyMs         map[string]float64 `json:"latencyMs"`
	RequestsPerMsg    map[string]float64 `json:"apiRequestsPerDelivery"`
	WritesPerMsg      float64            `json:"apiWritesPerDelivery"`
	RetriedShare      float64            `json:"retriedShare,omitempty"`
	CreateRateLimited float64            `json:"eventsPerSecOffered,omitempty"`
}

type memoryResult struct {
	RetainedDeliveries int     `json:"retainedDeliveries"`
	PeakRSSMiB         float64 `json:"peakRSSMiB"`
	HeapInuseMiB       float64 `json:"heapInuseMiB"`
	// A manager started on exactly Retained10k finished deliveries (and their events),
	// after its caches have synced: the target's own measure.
	Retained10k     int     `json:"retained10k"`
	PeakRSSMiB10k   float64 `json:"peakRSSMiB10k"`
	HeapInuseMiB10k float64 `json:"heapInuseMiB10k"`
	// The same on as many as fill the default etcd budget to where pruning starts.
	RetainedAtBudget     int     `json:"retainedAtBudget"`
	PeakRSSMiBAtBudget   float64 `json:"peakRSSMiBAtBudget"`
	HeapInuseMiBAtBudget float64 `json:"heapInuseMiBAtBudget"`
}

func run() error {
	ctx := context.Background()
	fmt.Println("starting the control plane (envtest binaries)")
	env, err := testenv.Start()
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	work, _ := os.MkdirTemp("", "hookline-bench-")
	defer os.RemoveAll(work)
	kubeconfig, err := env.Kubeconfig(work, "bench", "system:masters")
	if err != nil {
		return err
	}
	rep := &report{Date: time.Now().UTC().Format(time.RFC3339), Machine: machine(), Targets: map[string]string{}}
	switch *only {
	case "soak":
		if err := soak(ctx, env, kubeconfig, work, rep); err != nil {
			return err
		}
		return finish(rep)
	case "stores":
		if err := runStores(ctx, env, kubeconfig, work, &rep.Stores); err != nil {
			return err
		}
		return finish(rep)
	case "budget":
		if err := runBudget(ctx, benchKubeconfig(work), work, &rep.Budget); err != nil {
			return err
		}
		return finish(rep)
	}

	fmt.Printf("measuring the limit: %d parallel clients\n", *parallel)
	if rep.Limit, err = measureLimit(ctx, env); err != nil {
		return err
	}

	recv, base, stopReceiver, err := serveReceiver()
	if err != nil {
		return err
	}
	defer stopReceiver()

	scenarios := []struct {
		name              string
		events, endpoints int
		halfRate          bool
		failPercent       int
		afterBurst        bool // starts right after the scenario before, its backlog still draining
	}{
		{"fanout-1", n(5000), 1, false, 0, false},
		{"half-rate-latency", n(1000), 1, true, 0, false},
		{"fanout-20", n(500), 20, false, 0, false},
		{"half-rate-after-burst", n(1000), 1, true, 0, true},
		{"retry-10pct-503", n(1000), 1, false, 10, false},
	}
	namespaces := []string{nsSteadyAlone, nsNoisyStuck, nsNoisyHealthy, nsHeaders}
	for _, s := range scenarios {
		namespaces = append(namespaces, "bench-"+s.name)
	}
	// The scenarios measure the delivery path and count every object they made, so
	// the history counts are off here; the soak measures retention at work.
	mgr, err := startManager(kubeconfig, work, namespaces, noHistoryCounts...)
	if err != nil {
		return err
	}
	defer mgr.stop()

	for _, s := range scenarios {
		rate := 0.0
		if s.halfRate && len(rep.Runs) > 0 {
			rate = rep.Runs[0].DeliveriesPerSec / 2
		}
		// Each scenario starts on a quiet manager (the work of the one before is done),
		// but one: a user does not get to choose.
		if !s.afterBurst {
			if err := mgr.waitIdle(ctx); err != nil {
				return err
			}
		}
		fmt.Printf("scenario %s: %d events x %d endpoints\n", s.name, s.events, s.endpoints)
		etcd := env.Etcd()
		var inUseBefore float64
		if s.name == "fanout-1" {
			// What a message costs etcd, measured on the first scenario from a compacted,
			// defragmented database.
			if err := etcd.Compact(ctx); err != nil {
				return fmt.Errorf("etcd compaction: %w", err)
			}
			if inUseBefore, _, err = etcd.DBSize(ctx); err != nil {
				return err
			}
		}
		var profileDone chan error
		if s.name == "fanout-1" && *cpuProfile != "" {
			profileDone = make(chan error, 1)
			go func() { profileDone <- mgr.profile(*cpuProfile, 15*time.Second) }()
		}
		res, err := runScenario(ctx, env.Client, mgr, recv, base, "bench-"+s.name, s.events, s.endpoints, rate, s.failPercent, false)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		res.Name = s.name
		rep.Runs = append(rep.Runs, res)
		if s.name == "fanout-1" {
			if err := measureFootprint(ctx, etcd, "bench-"+s.name, s.events, inUseBefore, res.DeliveriesPerSec, &rep.Etcd); err != nil {
				return fmt.Errorf("etcd footprint: %w", err)
			}
		}
		if profileDone != nil {
			if err := <-profileDone; err != nil {
				fmt.Fprintln(os.Stderr, "cpu profile:", err)
			}
		}
	}

	if err := mgr.waitIdle(ctx); err != nil {
		return err
	}
	fmt.Println("scenario noisy neighbour: a steady 10/s alone, then beside a stuck endpoint with 200 deliveries queued")
	rep.Fairness.GlobalCap = 64
	noisy, err := runNoisyNeighbour(ctx, env.Client, mgr, recv, base, &rep.Fairness)
	if err != nil {
		return err
	}
	rep.Runs = append(rep.Runs, noisy...)
	fmt.Println("scenario huge headers: 64 attempts answered with 8 MiB of headers each")
	if err := runHugeHeaders(ctx, env.Client, mgr, &rep.Fairness); err != nil {
		return err
	}

	var all hooklinev1.WebhookDeliveryList
	_ = env.Client.List(ctx, &all)
	m, _ := mgr.metrics()
	rep.Memory = memoryResult{RetainedDeliveries: len(all.Items), PeakRSSMiB: mgr.peakRSSMiB(), HeapInuseMiB: m.get("go_memstats_heap_inuse_bytes") / (1 << 20)}
	mgr.stop()

	fmt.Printf("memory: a manager on %d finished deliveries\n", n(10000))
	if err := measureRetained(ctx, env, kubeconfig, work, n(10000), &rep.Memory); err != nil {
		return err
	}
	if err := soak(ctx, env, kubeconfig, work, rep); err != nil {
		return err
	}
	fmt.Println("budget: the etcd store's promises with the shipped defaults, the admission webhook on")
	if err := runBudget(ctx, benchKubeconfig(work), work, &rep.Budget); err != nil {
		return err
	}
	fmt.Println("stores: the etcd store and the PostgreSQL store on the same scenarios")
	if err := runStores(ctx, env, kubeconfig, work, &rep.Stores); err != nil {
		return err
	}
	return finish(rep)
}

func soak(ctx context.Context, env *testenv.Env, kubeconfig, work string, rep *report) error {
	if *soakFor <= 0 {
		return nil
	}
	fmt.Printf("soak: %v at the maximum rate with --max-etcd-bytes=%s\n", *soakFor, *soakBudget)
	return runSoak(ctx, env, kubeconfig, work, &rep.Soak)
}

// finish judges, prints and writes the report.
func finish(rep *report) error {
	judge(rep)
	print(rep)
	raw, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.MkdirAll(filepath.Dir(*reportPath), 0o755); err != nil {
		return err
	}
	return os.WriteFile(*reportPath, raw, 0o644)
}

func machine() string {
	cpus := 0
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if strings.HasPrefix(s.Text(), "processor") {
				cpus++
			}
		}
		f.Close()
	}
	return fmt.Sprintf("linux, %d cores", cpus)
}

// fastClient is a client without client-side rate limits: the API server is measured.
func fastClient(cfg *rest.Config, scheme *runtime.Scheme) (client.Client, error) {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = 1e6, 1e6
	return client.New(c, client.Options{Scheme: scheme})
}

// inParallel runs do(i) for i in [0,count) on `parallel` workers.
func inParallel(count int, do func(i int) error) error {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= count || firstErr.Load() != nil {
					return
				}
				if err := do(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}

// deliveryLike is an object of the size and shape of a fanned-out delivery.
func deliveryLike(ns string, i int) *hooklinev1.WebhookDelivery {
	return &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("order-%06d-created-12970445de", i)},
		Spec: hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "acme-orders"}, EventType: "order.created",
			EventRef: &hooklinev1.LocalRef{Name: fmt.Sprintf("order-%06d-created", i)}},
	}
}

func measureLimit(ctx context.Context, env *testenv.Env) (limitResult, error) {
	var res limitResult
	clients := make([]client.Client, *parallel)
	for i := range clients {
		c, err := fastClient(env.Config, env.Scheme)
		if err != nil {
			return res, err
		}
		clients[i] = c
	}
	for _, ns := range []string{"limit-warmup", "limit-create", "limit-pairs"} {
		if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return res, err
		}
	}
	// Warm up the API server (connections, caches) so the first phase is not penalised.
	if err := inParallel(n(500), func(i int) error {
		return clients[i%len(clients)].Create(ctx, deliveryLike("limit-warmup", i))
	}); err != nil {
		return res, err
	}
	count := n(3000)
	start := time.Now()
	if err := inParallel(count, func(i int) error {
		return clients[i%len(clients)].Create(ctx, deliveryLike("limit-create", i))
	}); err != nil {
		return res, err
	}
	res.CreatesPerSec = float64(count) / time.Since(start).Seconds()

	count = n(2000)
	start = time.Now()
	if err := inParallel(count, func(i int) error {
		c := clients[i%len(clients)]
		d := deliveryLike("limit-pairs", i)
		if err := c.Create(ctx, d); err != nil {
			return err
		}
		before := d.DeepCopy()
		now := metav1.NowMicro()
		d.Status = hooklinev1.WebhookDeliveryStatus{Phase: hooklinev1.PhaseSucceeded, Attempts: 1, ResponseStatusCode: 200,
			MessageID: "msg_0123456789abcdef0123456789abcdef", LastAttemptTime: &now, Signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
			History: []hooklinev1.AttemptRecord{{Time: now, DurationMs: 3, StatusCode: 200}}}
		return c.Status().Patch(ctx, d, client.MergeFrom(before))
	}); err != nil {
		return res, err
	}
	res.CreateUpdatePairs = float64(count) / time.Since(start).Seconds()
	return res, nil
}

// receiver records the first receipt of every (path, webhook-id), and answers 503 once
// to the message ids chosen for failure.
type receiver struct {
	mu       sync.Mutex
	first    map[string]time.Time
	seen     map[string]int
	failOnce map[string]bool // webhook-id -> answer 503 the first time
}

func newReceiver() *receiver {
	return &receiver{first: map[string]time.Time{}, seen: map[string]int{}, failOnce: map[string]bool{}}
}

// serveReceiver starts a receiver on loopback and returns it with its base URL; stop
// closes its listener.
func serveReceiver() (recv *receiver, base string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	recv = newReceiver()
	go func() { _ = http.Serve(ln, recv) }()
	return recv, "http://" + ln.Addr().String(), func() { _ = ln.Close() }, nil
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	now := time.Now()
	id := req.Header.Get("webhook-id")
	key := req.URL.Path + " " + id
	r.mu.Lock()
	r.seen[key]++
	fail := r.failOnce[id] && r.seen[key] == 1
	if !fail {
		if _, ok := r.first[key]; !ok {
			r.first[key] = now
		}
	}
	r.mu.Unlock()
	if fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) received(prefix string) (map[string]time.Time, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]time.Time{}
	retried := 0
	for k, t := range r.first {
		if strings.HasPrefix(k, prefix) {
			out[k] = t
		}
	}
	for k, c := range r.seen {
		if strings.HasPrefix(k, prefix) && c > 1 {
			retried++
		}
	}
	return out, retried
}

// waitFor waits until want distinct deliveries under prefix have arrived.
func (r *receiver) waitFor(ctx context.Context, prefix string, want int) error {
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Minute, true, func(context.Context) (bool, error) {
		got, _ := r.received(prefix)
		return len(got) >= want, nil
	}); err != nil {
		got, _ := r.received(prefix)
		return fmt.Errorf("%d of %d deliveries received", len(got), want)
	}
	return nil
}

func runScenario(ctx context.Context, admin client.Client, mgr *managerProcess, recv *receiver, base, ns string,
	events, endpoints int, rate float64, failPercent int, queued bool) (scenarioResult, error) {
	res := scenarioResult{Events: events, Endpoints: endpoints, Deliveries: events * endpoints, CreateRateLimited: rate}
	if err := createEndpoints(ctx, admin, base, ns, endpoints); err != nil {
		return res, err
	}
	before, err := mgr.metrics()
	if err != nil {
		return res, err
	}

	clients := make([]client.Client, *parallel)
	for i := range clients {
		if clients[i], err = fastClient(mgr.restConfig, admin.Scheme()); err != nil {
			return res, err
		}
	}
	var mu sync.Mutex
	created := map[string]time.Time{} // message id -> when its create call returned
	interval := time.Duration(0)
	if rate > 0 {
		interval = time.Duration(float64(time.Second) / rate)
	}
	start := time.Now()
	err = inParallel(events, func(i int) error {
		if interval > 0 {
			if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
				time.Sleep(d)
			}
		}
		ev := &hooklinev1.WebhookEvent{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("order-%06d-created", i)},
			Spec: hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtime.RawExtension{Raw: []byte(fmt.Sprintf(`{"order":%d,"amount":990,"currency":"EUR"}`, i))}}}
		id := ""
		if failPercent > 0 && i%100 < failPercent {
			// The id is known only once created; mark the event's number instead.
			id = "fail"
		}
		if err := clients[i%len(clients)].Create(ctx, ev); err != nil {
			return err
		}
		msg := "msg_" + strings.ReplaceAll(string(ev.UID), "-", "")
		mu.Lock()
		created[msg] = time.Now()
		mu.Unlock()
		if id == "fail" {
			recv.mu.Lock()
			recv.failOnce[msg] = true
			recv.mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	want := events * endpoints
	prefix := "/" + ns + "/"
	if err := recv.waitFor(ctx, prefix, want); err != nil {
		return res, err
	}
	got, retried := recv.received(prefix)
	var last time.Time
	latencies := make([]float64, 0, len(got))
	for key, at := range got {
		if at.After(last) {
			last = at
		}
		id := key[strings.LastIndex(key, " ")+1:]
		if c, ok := created[id]; ok {
			latencies = append(latencies, float64(at.Sub(c).Microseconds())/1000)
		}
	}
	res.DeliveriesPerSec = float64(len(got)) / last.Sub(start).Seconds()
	res.LatencyMs = percentiles(latencies)
	if failPercent > 0 {
		res.RetriedShare = float64(retried) / float64(want)
	}

	// The manager's requests, once every delivery and event has its final status (in
	// the PostgreSQL store, no delivery is in the API server).
	inAPI := want
	if queued {
		inAPI = 0
	}
	if err := waitFinished(ctx, admin, ns, inAPI, events); err != nil {
		return res, err
	}
	after, err := mgr.metrics()
	if err != nil {
		return res, err
	}
	res.RequestsPerMsg = map[string]float64{}
	for _, verb := range []string{"GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "DELETE"} {
		if d := after.requests(verb) - before.requests(verb); d > 0 {
			res.RequestsPerMsg[verb] = d / float64(want)
		}
	}
	res.WritesPerMsg = res.RequestsPerMsg["POST"] + res.RequestsPerMsg["PUT"] + res.RequestsPerMsg["PATCH"] + res.RequestsPerMsg["DELETE"]
	return res, nil
}

// createEndpoints makes the namespace and its endpoints ep-00.. (receiving at
// base/ns/i) and waits until they are Ready.
func createEndpoints(ctx context.Context, admin client.Client, base, ns string, endpoints int) error {
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	for i := 0; i < endpoints; i++ {
		ep := &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("ep-%02d", i)},
			Spec: hooklinev1.WebhookEndpointSpec{URL: fmt.Sprintf("%s/%s/%d", base, ns, i), Events: []string{"*"},
				Retry: hooklinev1.RetrySpec{Schedule: []metav1.Duration{{Duration: 200 * time.Millisecond}}}}}
		if err := admin.Create(ctx, ep); err != nil {
			return err
		}
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var list hooklinev1.WebhookEndpointList
		if err := admin.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false, err
		}
		ready := 0
		for _, ep := range list.Items {
			if meta.IsStatusConditionTrue(ep.Status.Conditions, hooklinev1.ConditionReady) {
				ready++
			}
		}
		return ready == endpoints, nil
	}); err != nil {
		return fmt.Errorf("endpoints not ready: %w", err)
	}
	return nil
}

func waitFinished(ctx context.Context, c client.Client, ns string, deliveries, events int) error {
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		var ds hooklinev1.WebhookDeliveryList
		if err := c.List(ctx, &ds, client.InNamespace(ns)); err != nil {
			return false, err
		}
		done := 0
		for _, d := range ds.Items {
			if d.Status.Phase.Finished() {
				done++
			}
		}
		var es hooklinev1.WebhookEventList
		if err := c.List(ctx, &es, client.InNamespace(ns)); err != nil {
			return false, err
		}
		complete := 0
		for _, e := range es.Items {
			if e.Status.CompletionTime != nil {
				complete++
			}
		}
		return done == deliveries && complete == events, nil
	})
}

// measureRetained fills a namespace with finished deliveries (and their events, as a
// fan-out leaves them), starts a manager watching only it, and reads its memory once
// its caches have synced and it has looked at every object.
func measureRetained(ctx context.Context, env *testenv.Env, kubeconfig, work string, count int, out *memoryResult) error {
	const ns = "bench-retained"
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		return err
	}
	if err := fillRetained(ctx, env, ns, 0, count); err != nil {
		return err
	}
	out.Retained10k = count
	var err error
	if out.PeakRSSMiB10k, out.HeapInuseMiB10k, err = managerMemoryOn(ctx, kubeconfig, work, ns, count); err != nil {
		return err
	}
	// As many as fill the default budget up to where pruning starts (75 %); the
	// manager's flags are the shipped ones, so it prunes nothing.
	atBudget := 3 * defaultBudget / 4 / (deliveryValueBytes + eventValueBytes)
	if *scale < 1 {
		atBudget = n(atBudget)
	}
	fmt.Printf("memory: a manager on %d finished deliveries (the default budget's 75%%)\n", atBudget)
	if err := fillRetained(ctx, env, ns, count, atBudget); err != nil {
		return err
	}
	out.RetainedAtBudget = atBudget
	out.PeakRSSMiBAtBudget, out.HeapInuseMiBAtBudget, err = managerMemoryOn(ctx, kubeconfig, work, ns, atBudget)
	return err
}

// The etcd values of a finished 1-endpoint message, as measured by the footprint.
const (
	deliveryValueBytes = 2070
	eventValueBytes    = 1500
)

// fillRetained creates the finished events from..to-1 of ns, each with its finished
// delivery, as a fan-out leaves them.
func fillRetained(ctx context.Context, env *testenv.Env, ns string, from, to int) error {
	c, err := fastClient(env.Config, env.Scheme)
	if err != nil {
		return err
	}
	return inParallel(to-from, func(j int) error {
		i := from + j
		ev := &hooklinev1.WebhookEvent{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("order-%06d-created", i)},
			Spec: hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtime.RawExtension{Raw: []byte(fmt.Sprintf(`{"order":%d,"amount":990,"currency":"EUR"}`, i))}}}
		if err := c.Create(ctx, ev); err != nil {
			return err
		}
		evBefore := ev.DeepCopy()
		finished := metav1.Now()
		ev.Status = hooklinev1.WebhookEventStatus{ObservedGeneration: 1, MessageID: "msg_" + strings.ReplaceAll(string(ev.UID), "-", ""),
			Deliveries: &hooklinev1.DeliveryCounts{Total: 1, Succeeded: 1}, CompletionTime: &finished,
			Conditions: []metav1.Condition{{Type: hooklinev1.ConditionComplete, Status: metav1.ConditionTrue, Reason: hooklinev1.ReasonAllSucceeded,
				Message: "all 1 deliveries succeeded", ObservedGeneration: 1, LastTransitionTime: finished}}}
		if err := c.Status().Patch(ctx, ev, client.MergeFrom(evBefore)); err != nil {
			return err
		}
		d := deliveryLike(ns, i)
		if err := c.Create(ctx, d); err != nil {
			return err
		}
		before := d.DeepCopy()
		now := metav1.NowMicro()
		done := metav1.Now()
		d.Status = hooklinev1.WebhookDeliveryStatus{Phase: hooklinev1.PhaseSucceeded, Attempts: 1, ResponseStatusCode: 200, CompletionTime: &done,
			MessageID: "msg_0123456789abcdef0123456789abcdef", LastAttemptTime: &now, Signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
			History: []hooklinev1.AttemptRecord{{Time: now, DurationMs: 3, StatusCode: 200, Response: "ok"}}}
		return c.Status().Patch(ctx, d, client.MergeFrom(before))
	})
}

// managerMemoryOn starts a manager on ns, holding count finished messages, and reads
// its memory once it has looked at every object.
func managerMemoryOn(ctx context.Context, kubeconfig, work, ns string, count int) (rssMiB, heapMiB float64, err error) {
	mgr, err := startManager(kubeconfig, work, []string{ns}, noHistoryCounts...)
	if err != nil {
		return 0, 0, err
	}
	defer mgr.stop()
	// Every delivery and event is reconciled once at start; wait until that is over.
	prev := -1.0
	_ = wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*time.Minute, false, func(context.Context) (bool, error) {
		m, err := mgr.metrics()
		if err != nil {
			return false, nil
		}
		total := 0.0
		for k, v := range m {
			if strings.HasPrefix(k, "controller_runtime_reconcile_total{") {
				total += v
			}
		}
		settled := total == prev && total >= float64(2*count)
		prev = total
		return settled, nil
	})
	m, err := mgr.metrics()
	if err != nil {
		return 0, 0, err
	}
	return mgr.peakRSSMiB(), m.get("go_memstats_heap_inuse_bytes") / (1 << 20), nil
}

func percentiles(ms []float64) map[string]float64 {
	if len(ms) == 0 {
		return nil
	}
	sort.Float64s(ms)
	at := func(p float64) float64 { return ms[min(len(ms)-1, int(p*float64(len(ms))))] }
	return map[string]float64{"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ms[len(ms)-1]}
}

// managerProcess is the manager binary, run as users run it.
type managerProcess struct {
	cmd         *exec.Cmd
	metricsAddr string
	pprofAddr   string
	restConfig  *rest.Config
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// noHistoryCounts turns retention by count off.
var noHistoryCounts = []string{"--history-succeeded-per-endpoint=0", "--history-failed-per-endpoint=0", "--history-events-per-namespace=0"}

// startManager runs the manager binary with the shipped defaults, watching namespaces;
// extra flags come last.
func startManager(kubeconfig, work string, namespaces []string, extra ...string) (*managerProcess, error) {
	metricsAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	probeAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	pprofAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(os.TempDir(), "hookline-bench-manager.log"))
	if err != nil {
		return nil, err
	}
	args := []string{"--kubeconfig=" + kubeconfig, "--allow-insecure-http", "--allow-private-networks",
		"--metrics-bind-address=" + metricsAddr, "--metrics-secure=false", "--health-probe-bind-address=" + probeAddr,
		// The shipped defaults otherwise: no client-side API limit (Priority and
		// Fairness decides), a quarter of the global cap per endpoint.
		"--watch-namespaces=" + strings.Join(namespaces, ",")}
	args = append(args, extra...)
	if *cpuProfile != "" {
		args = append(args, "--pprof-bind-address="+pprofAddr)
	}
	cmd := exec.Command(*managerBin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m := &managerProcess{cmd: cmd, metricsAddr: metricsAddr, pprofAddr: pprofAddr}
	if m.restConfig, err = clientConfig(kubeconfig); err != nil {
		return nil, err
	}
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		resp, err := http.Get("http://" + probeAddr + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		m.stop()
		return nil, fmt.Errorf("the manager did not become ready (log: %s)", logFile.Name())
	}
	return m, nil
}

// waitIdle waits until the manager's work queues have been empty for a few seconds.
func (m *managerProcess) waitIdle(ctx context.Context) error {
	quiet := 0
	return wait.PollUntilContextTimeout(ctx, time.Second, 5*time.Minute, true, func(context.Context) (bool, error) {
		samples, err := m.metrics()
		if err != nil {
			return false, nil
		}
		depth := 0.0
		for k, v := range samples {
			if strings.HasPrefix(k, "workqueue_depth{") {
				depth += v
			}
		}
		if depth > 0 {
			quiet = 0
			return false, nil
		}
		quiet++
		return quiet >= 3, nil
	})
}

// profile saves the manager's CPU profile over d (net/http/pprof).
func (m *managerProcess) profile(path string, d time.Duration) error {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", m.pprofAddr, int(d.Seconds())))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func (m *managerProcess) stop() {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = m.cmd.Process.Kill()
	}
}

// peakRSSMiB is the manager's high-water resident set size.
func (m *managerProcess) peakRSSMiB() float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// metricSamples are the manager's metrics: name{labels} -> value.
type metricSamples map[string]float64

func (m *managerProcess) metrics() (metricSamples, error) {
	resp, err := http.Get("http://" + m.metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := metricSamples{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, s.Err()
}

func (m metricSamples) get(name string) float64 { return m[name] }

// requests sums rest_client_requests_total for one HTTP method.
func (m metricSamples) requests(method string) float64 {
	sum := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "rest_client_requests_total{") && strings.Contains(k, `method="`+method+`"`) {
			sum += v
		}
	}
	return sum
}

func judge(rep *report) {
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	for _, r := range rep.Runs {
		switch r.Name {
		case "fanout-1", "fanout-20":
			ratio := r.DeliveriesPerSec / rep.Limit.CreateUpdatePairs
			rep.Targets[r.Name+": deliveries/s >= 0.5 x limit pairs/s"] = fmt.Sprintf("%s (%.2f)", met(ratio >= 0.5), ratio)
			limit := 3.0
			if r.Name == "fanout-20" {
				limit = 2.1
			}
			writes := math.Round(r.WritesPerMsg*100) / 100 // two decimals: endpoint writes amortise to ~0.0005
			rep.Targets[fmt.Sprintf("%s: API writes per delivery <= %.1f", r.Name, limit)] = fmt.Sprintf("%s (%.4f)", met(writes <= limit), r.WritesPerMsg)
		case "half-rate-latency", "half-rate-after-burst":
			label := map[string]string{"half-rate-latency": "half rate", "half-rate-after-burst": "half rate right after a burst"}[r.Name]
			rep.Targets[label+": p50 <= 30 ms"] = fmt.Sprintf("%s (%.1f ms)", met(r.LatencyMs["p50"] <= 30), r.LatencyMs["p50"])
			rep.Targets[label+": p99 <= 250 ms"] = fmt.Sprintf("%s (%.1f ms)", met(r.LatencyMs["p99"] <= 250), r.LatencyMs["p99"])
		}
	}
	judgeSoak(rep, met)
	judgeStores(rep, met)
	judgeBudget(rep, met)
	if len(rep.Runs) == 0 {
		return
	}
	f := rep.Fairness
	bound := max(2*f.AloneP99Ms, 250)
	rep.Targets["noisy neighbour: healthy p99 <= max(2 x alone, 250 ms)"] = fmt.Sprintf("%s (%.1f ms beside the stuck endpoint, %.1f ms alone)",
		met(f.WithStuckP99Ms <= bound), f.WithStuckP99Ms, f.AloneP99Ms)
	rep.Targets["noisy neighbour: open connections to the stuck endpoint <= global cap"] = fmt.Sprintf("%s (%d, cap %d)",
		met(f.StuckPeakConns <= f.GlobalCap), f.StuckPeakConns, f.GlobalCap)
	rep.Targets["peak RSS <= 256 MiB while 64 responses carry 8 MiB of headers"] = fmt.Sprintf("%s (%.0f MiB)",
		met(f.HugeHeadersPeakRSS > 0 && f.HugeHeadersPeakRSS <= 256), f.HugeHeadersPeakRSS)
	rep.Targets["peak RSS at the default etcd budget <= 384 MiB (the chart's 512Mi limit, with room)"] = fmt.Sprintf("%s (%.0f MiB, %d retained)",
		met(rep.Memory.PeakRSSMiBAtBudget > 0 && rep.Memory.PeakRSSMiBAtBudget <= 384), rep.Memory.PeakRSSMiBAtBudget, rep.Memory.RetainedAtBudget)
	rep.Targets["peak RSS <= 150 MiB with 10,000 finished deliveries retained"] = fmt.Sprintf("%s (%.0f MiB, %d retained)",
		met(rep.Memory.PeakRSSMiB10k <= 150 && rep.Memory.Retained10k >= 10000), rep.Memory.PeakRSSMiB10k, rep.Memory.Retained10k)
}

func print(rep *report) {
	fmt.Printf("\nhookline benchmark, %s, %s\n\n", rep.Date, rep.Machine)
	fmt.Printf("limit (%d parallel clients): %.0f creates/s, %.0f create+status-update pairs/s\n\n", *parallel, rep.Limit.CreatesPerSec, rep.Limit.CreateUpdatePairs)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tdeliveries\tdeliveries/s\tvs limit\tp50 ms\tp95 ms\tp99 ms\tmax ms\twrites/delivery\trequests/delivery by verb\tretried")
	for _, r := range rep.Runs {
		var verbs []string
		for v, x := range r.RequestsPerMsg {
			verbs = append(verbs, fmt.Sprintf("%s %.2f", v, x))
		}
		sort.Strings(verbs)
		retried := ""
		if r.RetriedShare > 0 {
			retried = fmt.Sprintf("%.1f%%", 100*r.RetriedShare)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.2f\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%s\t%s\n", r.Name, r.Deliveries, r.DeliveriesPerSec,
			r.DeliveriesPerSec/rep.Limit.CreateUpdatePairs, r.LatencyMs["p50"], r.LatencyMs["p95"], r.LatencyMs["p99"], r.LatencyMs["max"],
			r.WritesPerMsg, strings.Join(verbs, ", "), retried)
	}
	_ = tw.Flush()
	if f := rep.Etcd; f.Messages > 0 {
		fmt.Printf("\netcd, per 1-endpoint message (%d messages, a 45-byte payload): values %.0f B (delivery %.0f, event %.0f); "+
			"database in use +%.0f B before compaction, +%.0f B after\n", f.Messages, f.ValueBytesPerMsg, f.DeliveryValueBytes, f.EventValueBytes,
			f.InUseGrowthPerMsg, f.CompactedPerMsg)
		fmt.Printf("etcd: at the maximum rate (%.0f/s) with 24h retention and no budget, a 2 GiB quota would be full after %.1f hours\n",
			f.MaxRatePerSec, f.HoursToFill2GiB)
		fmt.Printf("etcd: with the default budget (%d MiB of values) the database holds at most %.0f MiB: %.0f MiB of objects after compaction + %.0f MiB of revisions between compactions (5 min at %.0f/s)\n",
			defaultBudget>>20, f.BoundMiB, f.BoundObjectsMiB, f.BoundRevisionsMiB, f.MaxRatePerSec)
	}
	printSoak(rep)
	printStores(rep.Stores)
	printBudget(rep.Budget)
	fmt.Printf("\nmemory: after the scenarios (%d finished deliveries retained) peak RSS %.0f MiB, heap in use %.0f MiB\n",
		rep.Memory.RetainedDeliveries, rep.Memory.PeakRSSMiB, rep.Memory.HeapInuseMiB)
	fmt.Printf("memory: a manager started on %d finished deliveries: peak RSS %.0f MiB, heap in use %.0f MiB\n",
		rep.Memory.Retained10k, rep.Memory.PeakRSSMiB10k, rep.Memory.HeapInuseMiB10k)
	fmt.Printf("memory: a manager started on %d (the default etcd budget's 75%%): peak RSS %.0f MiB, heap in use %.0f MiB\n\n",
		rep.Memory.RetainedAtBudget, rep.Memory.PeakRSSMiBAtBudget, rep.Memory.HeapInuseMiBAtBudget)
	var names []string
	for k := range rep.Targets {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Printf("target %-70s %s\n", k, rep.Targets[k])
	}
	fmt.Println("\nreport:", *reportPath)
}

func clientConfig(kubeconfig string) (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", kubeconfig)
}

// benchKubeconfig writes an administrator's kubeconfig for a control plane.
func benchKubeconfig(work string) func(*testenv.Env) (string, error) {
	return func(env *testenv.Env) (string, error) {
		dir, err := os.MkdirTemp(work, "kubeconfig-")
		if err != nil {
			return "", err
		}
		return env.Kubeconfig(dir, "bench", "system:masters")
	}
}
