// The hookline manager: reconciles WebhookEndpoints, fans WebhookEvents out and sends
// WebhookDeliveries.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/controllers"
	"github.com/hookline/hookline/internal/admission/serving"
	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/callerauth"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/historyapi"
	"github.com/hookline/hookline/internal/httpsserve"
	"github.com/hookline/hookline/internal/kubeclient"
	"github.com/hookline/hookline/internal/publishapi"
	"github.com/hookline/hookline/internal/queuesender"
	"github.com/hookline/hookline/internal/retention"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
	"github.com/hookline/hookline/internal/version"
)

// options are the manager's flags.
type options struct {
	metricsAddr, probeAddr     string
	metricsSecure, leaderElect bool
	allowInsecureHTTP          bool
	allowPrivateNetworks       bool
	maxConcurrentDeliveries    int
	endpointMaxInFlight        int
	retentionSucceeded         time.Duration
	retentionFailed            time.Duration
	historySucceeded           int
	historyFailed              int
	historyEvents              int
	maxEtcdBytes               string
	archiveDSNFile             string
	deliveryStore              string
	archiveRetention           time.Duration
	historyAddr                string
	publishAddr                string
	deliveryLease              time.Duration
	kubeAPIQPS                 float64
	kubeAPIBurst               int
	showVersion                bool
	leaderElectionNamespace    string
	leaderElectionID           string
	watchNamespaces            string
	pprofAddr                  string
	webhook                    serving.Options
	zapOpts                    zap.Options
}

func parseFlags(args []string) (*options, error) {
	o := &options{zapOpts: zap.Options{Development: false}}
	fs := o.flagSet()
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// flagSet binds every flag of the manager to o (docs_test reads it too).
func (o *options) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8443", "address of the metrics endpoint (\"0\" disables it)")
	fs.BoolVar(&o.metricsSecure, "metrics-secure", true, "serve metrics over HTTPS with authentication and authorization; false serves plain HTTP (local use)")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "address of the health and readiness probes")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "elect a leader so that only one replica reconciles")
	fs.StringVar(&o.leaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader election Lease (default: the manager's own)")
	fs.StringVar(&o.leaderElectionID, "leader-election-id", "hookline.hookline.dev", "name of the leader election Lease")
	fs.BoolVar(&o.allowInsecureHTTP, "allow-insecure-http", false, "permit http:// endpoint URLs (local development only)")
	fs.BoolVar(&o.allowPrivateNetworks, "allow-private-networks", false, "permit targets on loopback, private, link-local and metadata addresses")
	fs.IntVar(&o.maxConcurrentDeliveries, "max-concurrent-deliveries", 64, "attempts in flight across all endpoints, and connections open to receivers")
	fs.IntVar(&o.endpointMaxInFlight, "endpoint-max-in-flight", 0, "attempts in flight to one endpoint that sets no rateLimit.maxInFlight (0: a quarter of --max-concurrent-deliveries)")
	fs.DurationVar(&o.retentionSucceeded, "delivery-retention-succeeded", 24*time.Hour, "delete Succeeded deliveries (and finished events) this long after completion")
	fs.DurationVar(&o.retentionFailed, "delivery-retention-failed", 168*time.Hour, "delete Failed and Exhausted deliveries this long after completion")
	fs.IntVar(&o.historySucceeded, "history-succeeded-per-endpoint", 1000, "Succeeded deliveries kept per endpoint, newest first (0: any number; an endpoint's spec.successfulDeliveriesHistoryLimit overrides it)")
	fs.IntVar(&o.historyFailed, "history-failed-per-endpoint", 5000, "Failed and Exhausted deliveries kept per endpoint, newest first (0: any number; spec.failedDeliveriesHistoryLimit overrides it)")
	fs.IntVar(&o.historyEvents, "history-events-per-namespace", 20000, "finished WebhookEvents kept per namespace, those whose deliveries all succeeded pruned first (0: any number)")
	fs.StringVar(&o.maxEtcdBytes, "max-etcd-bytes", "64Mi", "ceiling on the estimated etcd bytes of hookline's events and deliveries: finished ones are pruned from 75% of it, new fan-outs wait at 90% (a Kubernetes quantity; 0: no ceiling)")
	fs.StringVar(&o.archiveDSNFile, "archive-postgres-dsn-file", "", "file holding a PostgreSQL DSN (a mounted Secret): finished deliveries are archived there before they are pruned, and nothing is pruned that could not be archived (default: no archive)")
	fs.StringVar(&o.deliveryStore, "delivery-store", "kubernetes", "where deliveries are queued: kubernetes (WebhookDelivery objects in the API server) or postgres (the database of --archive-postgres-dsn-file; every replica delivers, nothing per delivery is written to the API server)")
	fs.DurationVar(&o.archiveRetention, "archive-retention", 30*24*time.Hour, "how long the archive keeps deliveries; whole days are dropped")
	fs.StringVar(&o.historyAddr, "history-bind-address", ":8444", "address of the archive's read-only history API (HTTPS; with an archive only; \"0\" disables it)")
	fs.DurationVar(&o.deliveryLease, "delivery-lease", queuesender.DefaultLease, "how long a replica holds a claimed delivery before another may take it (PostgreSQL store): longer than any attempt; a replica that dies leaves its claims to the others after it")
	fs.StringVar(&o.publishAddr, "publish-bind-address", ":8445", "address of the publish API (HTTPS; with --delivery-store=postgres only; \"0\" disables it)")
	fs.Float64Var(&o.kubeAPIQPS, "kube-api-qps", -1, "queries per second to the API server; negative: no client-side limit, the API server's Priority and Fairness protects it")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", 100, "burst of queries to the API server (with a positive --kube-api-qps)")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "0", "address of the Go pprof endpoint (\"0\" disables it)")
	fs.StringVar(&o.watchNamespaces, "watch-namespaces", "", "comma-separated namespaces to watch (default: every namespace)")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	o.webhook.Bind(fs)
	o.zapOpts.BindFlags(fs)
	// --kubeconfig is registered on the standard flag set by controller-runtime.
	if f := flag.CommandLine.Lookup("kubeconfig"); f != nil {
		fs.Var(f.Value, f.Name, f.Usage)
	}
	return fs
}

// validate checks the flags' values together.
func (o *options) validate() error {
	if o.maxConcurrentDeliveries < 1 {
		return fmt.Errorf("--max-concurrent-deliveries must be at least 1")
	}
	if err := o.webhook.Validate(); err != nil {
		return err
	}
	if o.kubeAPIQPS == 0 || o.kubeAPIBurst < 1 {
		return fmt.Errorf("--kube-api-qps must be positive, or negative for no client-side limit; --kube-api-burst must be positive")
	}
	if o.endpointMaxInFlight < 0 {
		return fmt.Errorf("--endpoint-max-in-flight must not be negative")
	}
	if o.historySucceeded < 0 || o.historyFailed < 0 || o.historyEvents < 0 || o.retentionSucceeded < 0 || o.retentionFailed < 0 {
		return fmt.Errorf("retention ages and --history-* counts must not be negative (0: no limit)")
	}
	if _, err := o.etcdBudget(); err != nil {
		return err
	}
	if o.deliveryLease < 5*time.Second {
		return fmt.Errorf("--delivery-lease must be at least 5s: a claim must outlast its attempt")
	}
	switch o.deliveryStore {
	case "kubernetes":
	case "postgres":
		if o.archiveDSNFile == "" {
			return fmt.Errorf("--delivery-store=postgres needs the database: set --archive-postgres-dsn-file")
		}
	default:
		return fmt.Errorf("--delivery-store %q: want kubernetes or postgres", o.deliveryStore)
	}
	return nil
}

// etcdBudget parses --max-etcd-bytes.
func (o *options) etcdBudget() (int64, error) {
	q, err := resource.ParseQuantity(o.maxEtcdBytes)
	if err != nil || q.Sign() < 0 {
		return 0, fmt.Errorf("--max-etcd-bytes %q: want a non-negative quantity like 64Mi or 1Gi", o.maxEtcdBytes)
	}
	return q.Value(), nil
}

// dsn reads --archive-postgres-dsn-file; "" without one.
func (o *options) dsn() (string, error) {
	if o.archiveDSNFile == "" {
		return "", nil
	}
	raw, err := os.ReadFile(o.archiveDSNFile)
	if err != nil {
		return "", fmt.Errorf("--archive-postgres-dsn-file: %w", err)
	}
	return strings.TrimSpace(string(raw)), nil
}

// archive opens the archive named by --archive-postgres-dsn-file; nil without one.
// The database may be down: the store connects, and migrates, on its first write.
func (o *options) archive() (*archive.Store, error) {
	dsn, err := o.dsn()
	if err != nil || dsn == "" {
		return nil, err
	}
	return archive.New(dsn)
}

// queue opens the PostgreSQL delivery store when --delivery-store=postgres; nil
// otherwise. The manager does not start without its store.
func (o *options) queue(ctx context.Context) (*pgstore.Queue, error) {
	if o.deliveryStore != "postgres" {
		return nil, nil
	}
	dsn, err := o.dsn()
	if err != nil {
		return nil, err
	}
	return pgstore.Open(ctx, dsn)
}

func (o *options) retention() controllers.Retention {
	budget, _ := o.etcdBudget() // validated by parseFlags
	return controllers.Retention{
		Succeeded: o.retentionSucceeded, Failed: o.retentionFailed,
		SucceededPerEndpoint: o.historySucceeded, FailedPerEndpoint: o.historyFailed,
		EventsPerNamespace: o.historyEvents, MaxBytes: budget,
	}
}

// publishAuthTTL is how long the publish API trusts a token's review.
const publishAuthTTL = 10 * time.Second

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if o.showVersion {
		fmt.Println("hookline", version.Version)
		return
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&o.zapOpts)))
	if err := run(ctrl.SetupSignalHandler(), o); err != nil {
		ctrl.Log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

// cacheOptions restricts the cache to the watched namespaces, when some are given.
func cacheOptions(watchNamespaces string) cache.Options {
	opts := controllers.CacheOptions()
	for _, ns := range strings.Split(watchNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			if opts.DefaultNamespaces == nil {
				opts.DefaultNamespaces = map[string]cache.Config{}
			}
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}

func run(ctx context.Context, o *options) error {
	log := ctrl.Log.WithName("setup")
	log.Info("starting hookline", "version", version.Version,
		"allowInsecureHTTP", o.allowInsecureHTTP, "allowPrivateNetworks", o.allowPrivateNetworks,
		"maxConcurrentDeliveries", o.maxConcurrentDeliveries)

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(hooklinev1.AddToScheme(scheme))

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg = kubeclient.Guarded(cfg)
	cfg.QPS, cfg.Burst = float32(o.kubeAPIQPS), o.kubeAPIBurst
	cfg.UserAgent = "hookline-manager/" + version.Version

	metricsOpts := metricsserver.Options{
		BindAddress:   o.metricsAddr,
		SecureServing: o.metricsSecure,
		// HTTP/2 is off: it exposes the server to the Rapid Reset and Stream
		// Cancellation CVEs, and metrics scrapers need nothing from it.
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
	if o.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	cacheOpts := cacheOptions(o.watchNamespaces)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  o.probeAddr,
		PprofBindAddress:        o.pprofAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        o.leaderElectionID,
		LeaderElectionNamespace: o.leaderElectionNamespace,
		Cache:                   cacheOpts,
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	store, err := o.archive()
	if err != nil {
		return err
	}
	queue, err := o.queue(ctx)
	if err != nil {
		return err
	}
	var archiver controllers.Archiver
	if store != nil {
		archiver = store
		// The history API reads the store that keeps the deliveries: the queue in
		// postgres mode, the archive otherwise.
		var history historyapi.Reader = store
		var retrier historyapi.Retrier
		if queue != nil {
			history, retrier = queue, queue
		}
		if o.historyAddr != "0" {
			clientset, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			if err := mgr.Add(&httpsserve.Server{Addr: o.historyAddr,
				Handler: historyapi.Handler{Archive: history, Auth: historyapi.KubeAuth{KubeAuth: callerauth.KubeAuth{Client: clientset}}, Retrier: retrier}}); err != nil {
				return err
			}
		}
	}
	if queue != nil && o.publishAddr != "0" {
		clientset, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		if err := mgr.Add(&httpsserve.Server{Addr: o.publishAddr, Handler: publishapi.Handler{
			Auth:      &callerauth.Cached{Reviewer: callerauth.KubeAuth{Client: clientset}, TTL: publishAuthTTL},
			Publisher: controllers.QueuePublisher{Endpoints: mgr.GetClient(), Queue: queue},
		}}); err != nil {
			return err
		}
	}
	managerMetrics := controllers.NewMetrics()
	if err := managerMetrics.Register(ctrlmetrics.Registry); err != nil {
		return err
	}
	// One gate for the etcd budget: fan-outs wait on it, and the admission webhook
	// refuses creates by it.
	gate := retention.NewGate(o.retention().MaxBytes)
	o.webhook.Budget = controllers.AdmissionBudget{Gate: gate, Metrics: managerMetrics}
	if err := controllers.Setup(ctx, mgr, controllers.Config{
		Gate:              gate,
		Metrics:           managerMetrics,
		AllowInsecureHTTP: o.allowInsecureHTTP,
		Sender: delivery.NewClient(delivery.Options{AllowPrivateNetworks: o.allowPrivateNetworks, AllowInsecureHTTP: o.allowInsecureHTTP, UserAgent: version.UserAgent(),
			MaxOpenConns: o.maxConcurrentDeliveries}),
		MaxConcurrentDeliveries: o.maxConcurrentDeliveries,
		EndpointMaxInFlight:     o.endpointMaxInFlight,
		Retention:               o.retention(),
		Archive:                 archiver,
		ArchiveRetention:        o.archiveRetention,
		Queue:                   queue,
		DeliveryLease:           o.deliveryLease,
		Namespaces:              cacheOpts.DefaultNamespaces,
	}); err != nil {
		return err
	}
	if err := serving.Setup(ctx, mgr, o.webhook); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	return mgr.Start(ctx)
}
