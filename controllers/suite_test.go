package controllers

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/kubeclient"
	"github.com/hookline/hookline/internal/testenv"
)

// One control plane and one manager per package; each test works in its own namespace.
var (
	k8s        client.Client // direct to the API server, as a user's kubectl is
	restConfig *rest.Config
	testScheme *runtime.Scheme
	managerLog syncBuffer // everything the manager logged, scanned for secrets
	nsCounter  atomic.Int64
	etcd       testenv.Etcd // the control plane's etcd, to judge what objects cost it
	testEnv    *testenv.Env // for what only the control plane makes (ServiceAccount tokens)
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestMain(m *testing.M) {
	os.Exit(testenv.Suite(m, startSuite))
}

// startSuite starts the control plane and the shared manager.
func startSuite() (stop func(), err error) {
	ctrl.SetLogger(zap.New(zap.WriteTo(&managerLog), zap.UseDevMode(true)))
	env, err := testenv.Start()
	if err != nil {
		return nil, err
	}
	restConfig, k8s, testScheme, etcd, testEnv = env.Config, env.Client, env.Scheme, env.Etcd(), env
	ctx, cancel := context.WithCancel(context.Background())
	// The shared manager leaves the reserved namespaces to tests that run a manager of
	// their own (other flags, a crash and restart).
	stopManager, err := startManager(ctx, env.Config, testConfig(), cache.Config{FieldSelector: notReservedNamespaces()})
	if err != nil {
		cancel()
		_ = env.Stop()
		return nil, err
	}
	return func() {
		cancel()
		stopManager()
		_ = env.Stop()
	}, nil
}

// reservedNamespaces are watched only by the managers tests start themselves.
var reservedNamespaces = []string{"own-1", "own-2", "own-3", "own-4", "own-5", "own-6", "own-7", "own-8", "own-9", "own-10", "own-11", "own-12", "own-13", "own-14", "own-15", "own-16", "own-17", "own-18", "own-19", "own-20", "own-21", "own-22", "own-23", "own-24", "own-25", "own-26"}

func notReservedNamespaces() fields.Selector {
	var sels []fields.Selector
	for _, ns := range reservedNamespaces {
		sels = append(sels, fields.OneTermNotEqualSelector("metadata.namespace", ns))
	}
	return fields.AndSelectors(sels...)
}

// testConfig is the shared manager's configuration. Receivers are httptest servers on
// loopback over plain HTTP.
func testConfig() Config {
	return Config{
		AllowInsecureHTTP: true,
		Sender: delivery.NewClient(delivery.Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true, UserAgent: "hookline/test",
			MaxOpenConns: 16}),
		MaxConcurrentDeliveries: 16,
		Retention:               Retention{Succeeded: time.Hour, Failed: time.Hour},
		UserSecretPoll:          time.Second,
	}
}

// startManager runs a manager with the reconcilers until stop is called; stop returns
// once it has stopped.
func startManager(ctx context.Context, cfg *rest.Config, conf Config, namespaces cache.Config) (stop func(), err error) {
	opts := CacheOptions()
	opts.DefaultNamespaces = map[string]cache.Config{cache.AllNamespaces: namespaces}
	mgr, err := ctrl.NewManager(kubeclient.Guarded(cfg), ctrl.Options{
		Scheme:                 testScheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  opts,
		Controller:             config.Controller{SkipNameValidation: ptr(true)},
	})
	if err != nil {
		return nil, err
	}
	conf.Namespaces = opts.DefaultNamespaces
	if err := Setup(ctx, mgr, conf); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

func ptr[T any](v T) *T { return &v }

func namespaceOnly(ns string) cache.Config {
	return cache.Config{FieldSelector: fields.OneTermEqualSelector("metadata.namespace", ns)}
}

// ownNamespace creates one of the reserved namespaces and a manager for it alone.
func ownNamespace(t *testing.T, name string, conf Config) (stop func()) {
	t.Helper()
	ctx := context.Background()
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	stop, err := startManager(ctx, restConfig, conf, namespaceOnly(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return stop
}

func utilMust(err error) {
	if err != nil {
		panic(err)
	}
}

// newNamespace creates a namespace of the test's own.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("t%d-%d", time.Now().Unix()%100000, nsCounter.Add(1))}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// eventually polls cond until it holds or the deadline passes; it reports the last
// state cond described.
func eventually(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string, error)) {
	t.Helper()
	last := ""
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ok, state, err := cond(ctx)
		if state != "" {
			last = state
		}
		return ok, err
	})
	if err != nil {
		t.Fatalf("%s: %v (last seen: %s)", what, err, last)
	}
}

// throughout checks cond every 50ms for d and fails at the first error it returns.
func throughout(t *testing.T, d time.Duration, cond func(ctx context.Context) error) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
		if err := cond(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

func key(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }

func getEndpoint(ctx context.Context, t *testing.T, ns, name string) *hooklinev1.WebhookEndpoint {
	t.Helper()
	var ep hooklinev1.WebhookEndpoint
	if err := k8s.Get(ctx, key(ns, name), &ep); err != nil {
		t.Fatal(err)
	}
	return &ep
}

func fieldsSelector(s string) (client.ListOption, error) {
	sel, err := fields.ParseSelector(s)
	if err != nil {
		return nil, err
	}
	return client.MatchingFieldsSelector{Selector: sel}, nil
}

func inNamespace(ns string) client.ListOption { return client.InNamespace(ns) }

// patched applies mutate to obj and writes it as a merge patch: controllers write
// status concurrently, so an Update with the resourceVersion we read could conflict.
func patched[T client.Object](t *testing.T, obj T, mutate func(T)) T {
	t.Helper()
	before := obj.DeepCopyObject().(T)
	mutate(obj)
	if err := k8s.Patch(context.Background(), obj, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
	return obj
}
