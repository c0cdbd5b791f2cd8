package controllers

import (
	"context"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/engine"
	"github.com/hookline/hookline/internal/fairqueue"
	"github.com/hookline/hookline/internal/queuesender"
	"github.com/hookline/hookline/internal/retention"
	"github.com/hookline/hookline/internal/secrets"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
	"github.com/hookline/hookline/internal/throttle"
)

// Config is what the manager's flags decide for the reconcilers.
type Config struct {
	AllowInsecureHTTP       bool
	Sender                  delivery.Sender
	MaxConcurrentDeliveries int
	// EndpointMaxInFlight caps the attempts in flight to an endpoint that sets no
	// rateLimit.maxInFlight; 0 means a quarter of MaxConcurrentDeliveries.
	EndpointMaxInFlight int
	Retention           Retention
	// UserSecretPoll is how often an endpoint whose Secrets are not in order looks
	// again (DefaultUserSecretPoll when zero).
	UserSecretPoll time.Duration
	// Archive, when set, keeps finished deliveries before they are pruned, for
	// ArchiveRetention.
	Archive          Archiver
	ArchiveRetention time.Duration
	// Namespaces are the namespaces the manager's cache watches (its
	// DefaultNamespaces; empty: all), for the caches Setup makes of its own.
	Namespaces map[string]cache.Config
	// Metrics are the manager's metrics; nil: a set of its own, registered nowhere.
	Metrics *Metrics
	// Queue, when set, is the PostgreSQL delivery store (--delivery-store=postgres):
	// events are published into it and every replica delivers from it; nothing of a
	// delivery is written to the API server.
	Queue *pgstore.Queue
	// QueueOwner names this process's claims on the queue.
	QueueOwner string
	// DeliveryLease is how long a claim on the queue is held (DefaultDeliveryLease
	// when zero).
	DeliveryLease time.Duration
	// Gate is the etcd budget's gate, shared with the admission webhook; nil: Setup
	// makes one for Retention.MaxBytes.
	Gate *retention.Gate
	// Clock is the reconcilers' clock; nil means the real one. Tests inject a fake one
	// to show that nothing final is rewritten as time passes.
	Clock clock.WithTicker
}

// Setup builds every dependency of the reconcilers here, in one place, and registers
// the field indexes, the caches of its own and the reconcilers with mgr.
func Setup(ctx context.Context, mgr ctrl.Manager, cfg Config) error {
	if err := SetupIndexes(ctx, mgr.GetFieldIndexer()); err != nil {
		return fmt.Errorf("field indexes: %w", err)
	}
	secretMetadata, err := newSecretMetadataCache(mgr, cfg.Namespaces)
	if err != nil {
		return fmt.Errorf("Secret metadata cache: %w", err)
	}
	if err := mgr.Add(secretMetadata); err != nil {
		return err
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	var clk clock.Clock = clock.RealClock{}
	if cfg.Clock != nil {
		clk = cfg.Clock
	}
	recorder := mgr.GetEventRecorder("hookline")
	secretReader := engine.SecretReader{Cached: mgr.GetClient(), User: secrets.NewUserSecretCache(mgr.GetAPIReader())}
	health := newEndpointHealth(mgr.GetClient(), mgr.GetAPIReader(), cfg.Metrics)
	if err := mgr.Add(health); err != nil {
		return err
	}

	if err := (&EndpointReconciler{
		Client:            mgr.GetClient(),
		Secrets:           secretReader,
		SecretMetadata:    secretMetadata,
		Recorder:          recorder,
		Clock:             clk,
		AllowInsecureHTTP: cfg.AllowInsecureHTTP,
		UserSecretPoll:    cfg.UserSecretPoll,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("endpoint controller: %w", err)
	}
	if err := (&EnableReconciler{Client: mgr.GetClient(), health: health, Recorder: recorder}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("enable controller: %w", err)
	}
	// Fan-out and counting are short; a few workers keep a burst of events from queueing.
	gate := cfg.Gate
	if gate == nil {
		gate = retention.NewGate(cfg.Retention.MaxBytes)
	}
	events := &EventReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: recorder, Clock: clk, Gate: gate,
		Queue: cfg.Queue, MaxConcurrent: max(cfg.MaxConcurrentDeliveries/8, 2), wakeups: make(chan event.GenericEvent, 1024)}
	if err := events.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("event controller: %w", err)
	}
	pruner := &Pruner{Client: mgr.GetClient(), Cache: mgr.GetCache(), Retention: cfg.Retention, Gate: gate, Clock: clk, Wake: events.wake,
		Archive: cfg.Archive, ArchiveRetention: cfg.ArchiveRetention, Metrics: cfg.Metrics}
	if cfg.Queue != nil {
		pruner.QueueHistory = cfg.Queue
	}
	if err := mgr.Add(pruner); err != nil {
		return err
	}
	if err := mgr.Add(&budgetCounter{pruner: pruner, elected: mgr.Elected()}); err != nil {
		return err
	}
	// The engine's shared parts; each store's driver adds its throttle.
	eng := engine.Engine{Secrets: secretReader, Sender: cfg.Sender, Health: health, Metrics: cfg.Metrics, Events: recorder,
		Clock: clk, EndpointShare: endpointShare(cfg)}
	if cfg.Queue != nil {
		owner := cfg.QueueOwner
		if owner == "" {
			host, _ := os.Hostname()
			owner = queuesender.Owner(host)
		}
		if err := mgr.Add(queuesender.New(eng, mgr.GetClient(), cfg.Queue, cfg.Metrics, owner, cfg.MaxConcurrentDeliveries, cfg.DeliveryLease)); err != nil {
			return err
		}
	}
	// WebhookDeliveries created directly (and send-test's) go through the API server in
	// both modes.
	deliveries := newDeliveryReconciler(mgr.GetClient(), eng, recorder, clk, cfg)
	if err := deliveries.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("delivery controller: %w", err)
	}
	return nil
}

// CacheOptions restricts the manager's Secret cache to the Secrets it made, so that it
// never holds every Secret of the cluster.
func CacheOptions() cache.Options {
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Label: labels.SelectorFromSet(labels.Set{hooklinev1.ManagedByLabel: hooklinev1.ManagedByValue})},
		},
		// managedFields are a large share of every cached object and no reconciler reads
		// them; with many deliveries retained they dominate the manager's memory.
		DefaultTransform: cache.TransformStripManagedFields(),
	}
}

// endpointShare is the default in-flight cap of one endpoint: a quarter of the global
// cap, so that one stuck endpoint leaves three quarters of the workers to the others.
func endpointShare(cfg Config) int {
	if cfg.EndpointMaxInFlight > 0 {
		return cfg.EndpointMaxInFlight
	}
	return max(cfg.MaxConcurrentDeliveries/4, 1)
}

// newDeliveryReconciler builds the delivery reconciler with its engine's throttle,
// turns and wakeups.
func newDeliveryReconciler(c client.Client, eng engine.Engine, recorder eventRecorder, clk clock.Clock, cfg Config) *DeliveryReconciler {
	r := &DeliveryReconciler{
		Client:        c,
		MaxConcurrent: cfg.MaxConcurrentDeliveries,
		Recorder:      recorder,
		Clock:         clk,
		Metrics:       cfg.Metrics,
		turns:         fairqueue.NewTurns(),
		wakeups:       make(chan event.GenericEvent, 1024),
	}
	eng.Throttle = throttle.New(r.wake)
	r.Engine = &eng
	return r
}
