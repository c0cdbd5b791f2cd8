package controllers

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/retention"
)

// Retention is what the manager keeps of finished work: by age, by count and within
// a ceiling on the bytes kept in etcd.
type Retention struct {
	Succeeded time.Duration
	Failed    time.Duration
	// SucceededPerEndpoint and FailedPerEndpoint are the finished deliveries kept per
	// endpoint (0: any number); an endpoint's spec may set its own.
	SucceededPerEndpoint int
	FailedPerEndpoint    int
	// EventsPerNamespace is the number of finished events kept per namespace (0: any).
	EventsPerNamespace int
	// MaxBytes is the ceiling on the estimated etcd bytes of events and deliveries
	// (0: none).
	MaxBytes int64
	// Interval is how often the pruner walks the cache (DefaultPruneInterval when 0).
	Interval time.Duration
}

// DefaultPruneInterval is how often the pruner walks the cache. A walk reads the
// informers' stores without copying; at the default budget it takes milliseconds.
const DefaultPruneInterval = 2 * time.Second

// pruneWorkers delete in parallel: at the maximum delivery rate every message costs
// two deletes. pruneQueue bounds the deletions planned ahead; what does not fit is
// planned again by the next walk.
const (
	pruneWorkers = 16
	pruneQueue   = 4096
)

// Pruner deletes finished events and deliveries by age, by count and to stay within
// the byte budget, from one walk of the cache per interval. Every deletion of
// hookline's objects happens here. The same walk publishes the footprint metrics and
// refreshes the fan-out gate, whose held events it wakes when room is made.
type Pruner struct {
	Client    client.Client
	Cache     cache.Cache
	Retention Retention
	Gate      *retention.Gate
	Clock     clock.PassiveClock
	// Wake reconciles a held event again ("namespace/name").
	Wake func(key string)
	// Archive, when set, receives every unit before it is deleted; ArchiveRetention
	// is how long the archive keeps it.
	Archive          Archiver
	ArchiveRetention time.Duration
	Metrics          *Metrics
	// QueueHistory, with the PostgreSQL store, is the queue's history, kept for
	// ArchiveRetention too.
	QueueHistory interface {
		DropBefore(ctx context.Context, cutoff time.Time) ([]string, error)
	}

	// deleting holds the units queued or being deleted (by the UID of their first
	// object): the walks leave them out of their plans but count them until gone.
	deleting sync.Map
	work     chan pruneJob
	// pace spreads the deletes over a walk's interval (see paceDeletes).
	pace *rate.Limiter
	// archiveFailing: the last archive write failed (logged once per outage);
	// archiveDroppedAt: when the archive's retention last ran.
	archiveFailing   bool
	archiveDroppedAt time.Time
}

// pruneJob is one unit to delete.
type pruneJob struct {
	objects unitObjects
	reason  string
}

// NeedLeaderElection: only the leader deletes.
func (p *Pruner) NeedLeaderElection() bool { return true }

// Start walks until ctx ends.
func (p *Pruner) Start(ctx context.Context) error {
	interval := p.Retention.Interval
	if interval <= 0 {
		interval = DefaultPruneInterval
	}
	if !p.Cache.WaitForCacheSync(ctx) {
		return nil
	}
	// Deletes run apart from the walks, so that the footprint and the gate are
	// refreshed every interval however long the deletes take: when they fall behind,
	// what they have not deleted yet still counts, and the gate holds fan-out back.
	p.work = make(chan pruneJob, pruneQueue)
	p.pace = rate.NewLimiter(rate.Inf, 1)
	var workers sync.WaitGroup
	defer workers.Wait()
	defer close(p.work)
	for range pruneWorkers {
		workers.Go(func() {
			for job := range p.work {
				if err := p.pace.Wait(ctx); err != nil {
					p.deleting.Delete(job.objects.uid())
					continue // stopping
				}
				if err := p.deleteUnit(ctx, job.objects, job.reason); err != nil && ctx.Err() == nil {
					logf.FromContext(ctx).Error(err, "prune", "unit", job.objects.key())
				}
				p.deleting.Delete(job.objects.uid())
			}
		})
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := p.walk(ctx); err != nil && ctx.Err() == nil {
			logf.FromContext(ctx).Error(err, "retention walk")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// paceDeletes spreads what is queued for deletion over the next interval, so that the
// deletes retention by age and count asks for come as a steady stream, not a burst
// every walk that the deliveries' own writes queue behind. Under pressure on the byte
// budget (pruning by bytes, or fan-outs held) they go at once.
func (p *Pruner) paceDeletes(fp *footprint) {
	interval := p.Retention.Interval
	if interval <= 0 {
		interval = DefaultPruneInterval
	}
	pressed := p.Retention.MaxBytes > 0 && (float64(fp.bytes) > retention.PruneStart*float64(p.Retention.MaxBytes) || p.Gate.Holding() > 0)
	if pressed {
		p.pace.SetLimit(rate.Inf)
		return
	}
	// A little faster than the interval, so that the queue is empty before the next walk.
	p.pace.SetLimit(rate.Limit(max(float64(len(p.work))*1.25/interval.Seconds(), 1)))
}

// unitObjects are the objects of one retention unit, deleted together.
type unitObjects struct {
	event      *hooklinev1.WebhookEvent
	deliveries []*hooklinev1.WebhookDelivery
}

func (u unitObjects) first() client.Object {
	if u.event != nil {
		return u.event
	}
	return u.deliveries[0]
}

func (u unitObjects) uid() types.UID        { return u.first().GetUID() }
func (u unitObjects) key() client.ObjectKey { return client.ObjectKeyFromObject(u.first()) }

func (p *Pruner) walk(ctx context.Context) error {
	takenAt := time.Now()
	deliveries, events, err := p.snapshot(ctx)
	if err != nil {
		return err
	}
	units, objects, fp := p.units(deliveries, events)
	limits, err := p.endpointLimits(ctx)
	if err != nil {
		return err
	}
	// Units being deleted are left out of the plan, so that they are neither deleted
	// twice nor counted as room still to be made.
	var candidates []retention.Unit
	var candidateObjects []unitObjects
	for i, u := range units {
		if _, busy := p.deleting.Load(objects[i].uid()); !busy {
			candidates = append(candidates, u)
			candidateObjects = append(candidateObjects, objects[i])
		}
	}
	plan := retention.Decide(candidates, retention.Policy{
		SucceededAge: p.Retention.Succeeded, FailedAge: p.Retention.Failed,
		PerEndpoint: limits, EventsPerNamespace: p.Retention.EventsPerNamespace, MaxBytes: p.Retention.MaxBytes,
	}, p.Clock.Now())
	var jobs []pruneJob
	for _, pr := range plan.Prune {
		if len(jobs) == cap(p.work)-len(p.work) {
			break // the queue is full: the next walk plans the rest again
		}
		jobs = append(jobs, pruneJob{objects: candidateObjects[pr.Unit], reason: pr.Reason})
	}
	for _, job := range p.archived(ctx, jobs) {
		p.deleting.Store(job.objects.uid(), struct{}{})
		p.work <- job
	}
	p.paceDeletes(fp)
	p.expireArchive(ctx)
	// Everything still in the cache counts, the units queued for deletion and the
	// events not fanned out yet included.
	p.Gate.Observe(fp.count(), takenAt)
	for _, key := range p.Gate.Release() {
		p.Wake(key)
	}
	p.Metrics.retained.publish(fp, p.Gate)
	return nil
}

// units groups the cached objects into retention units: each event with its
// deliveries, each other delivery alone.
func (p *Pruner) units(deliveries []*hooklinev1.WebhookDelivery, events []*hooklinev1.WebhookEvent) ([]retention.Unit, []unitObjects, *footprint) {
	fp := &footprint{deliveries: map[hooklinev1.DeliveryPhase]int{}, byNamespace: map[string]int64{}, events: make(map[string]bool, len(events))}
	units := make([]retention.Unit, 0, len(events)+len(deliveries)/2)
	objects := make([]unitObjects, 0, cap(units))
	byUID := make(map[types.UID]int, len(events))
	for _, e := range events {
		byUID[e.UID] = len(units)
		u := retention.Unit{Namespace: e.Namespace, Name: e.Name, Event: true, Bytes: eventBytes(e), Finished: e.Status.CompletionTime != nil}
		fp.events[e.Namespace+"/"+e.Name] = e.FannedOut()
		switch {
		case u.Finished:
			u.CompletedAt = e.Status.CompletionTime.Time
			fp.complete++
		case !e.FannedOut():
			fp.inProgress++
			fp.notFannedOut += u.Bytes
		default:
			fp.inProgress++
		}
		units = append(units, u)
		objects = append(objects, unitObjects{event: e})
	}
	for _, d := range deliveries {
		phase := d.Status.Phase
		if phase == "" {
			phase = hooklinev1.PhasePending
		}
		fp.deliveries[phase]++
		finished := phase.Finished() && d.Status.CompletionTime != nil
		failed := phase != hooklinev1.PhaseSucceeded
		i, ok := -1, false
		if owner := metav1.GetControllerOf(d); owner != nil && d.Spec.EventRef != nil {
			i, ok = byUID[owner.UID]
		}
		if !ok {
			i = len(units)
			u := retention.Unit{Namespace: d.Namespace, Name: d.Name, Finished: finished}
			if finished {
				u.CompletedAt = d.Status.CompletionTime.Time
			}
			units = append(units, u)
			objects = append(objects, unitObjects{})
		}
		u := &units[i]
		objects[i].deliveries = append(objects[i].deliveries, d)
		if !finished {
			u.Bytes += int64(max(deliveryBytes(d), liveDeliveryBytes))
			u.Finished = false // a manual retry of one delivery reopens its event
			continue
		}
		u.Bytes += int64(deliveryBytes(d))
		u.Failed = u.Failed || failed
		u.Deliveries = append(u.Deliveries, retention.Outcome{Endpoint: d.Spec.EndpointRef.Name, Failed: failed})
	}
	for _, u := range units {
		fp.bytes += u.Bytes
		fp.byNamespace[u.Namespace] += u.Bytes
	}
	return units, objects, fp
}

// endpointLimits returns the per-endpoint counts: the endpoint's own, or the flags'.
func (p *Pruner) endpointLimits(ctx context.Context) (func(ns, name string) retention.Limits, error) {
	var list hooklinev1.WebhookEndpointList
	if err := p.Cache.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	overrides := map[types.NamespacedName]retention.Limits{}
	for _, ep := range list.Items {
		if ep.Spec.SuccessfulDeliveriesHistoryLimit == nil && ep.Spec.FailedDeliveriesHistoryLimit == nil {
			continue
		}
		l := retention.Limits{Succeeded: p.Retention.SucceededPerEndpoint, Failed: p.Retention.FailedPerEndpoint}
		if n := ep.Spec.SuccessfulDeliveriesHistoryLimit; n != nil {
			l.Succeeded = int(*n)
		}
		if n := ep.Spec.FailedDeliveriesHistoryLimit; n != nil {
			l.Failed = int(*n)
		}
		overrides[types.NamespacedName{Namespace: ep.Namespace, Name: ep.Name}] = l
	}
	defaults := retention.Limits{Succeeded: p.Retention.SucceededPerEndpoint, Failed: p.Retention.FailedPerEndpoint}
	return func(ns, name string) retention.Limits {
		if l, ok := overrides[types.NamespacedName{Namespace: ns, Name: name}]; ok {
			return l
		}
		return defaults
	}, nil
}

// archived writes the jobs' units to the archive, in batches, and returns those
// written: a unit that is not in the archive is not deleted. Without an archive, all.
func (p *Pruner) archived(ctx context.Context, jobs []pruneJob) []pruneJob {
	if p.Archive == nil || len(jobs) == 0 {
		return jobs
	}
	done := 0
	for done < len(jobs) {
		var deliveries []archive.Delivery
		var payloads []archive.Payload
		end := done
		for end < len(jobs) && len(deliveries) < archiveBatch {
			d, pl := archiveRecords(jobs[end].objects)
			deliveries, payloads = append(deliveries, d...), append(payloads, pl...)
			end++
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		added, err := p.Archive.Write(wctx, deliveries, payloads)
		cancel()
		if err != nil {
			p.Metrics.archiveErrors.Inc()
			p.Metrics.archiveUp.Set(0)
			if !p.archiveFailing {
				logf.FromContext(ctx).Error(err, "archive write failed: nothing is pruned until it succeeds again")
			}
			p.archiveFailing = true
			break
		}
		if p.archiveFailing {
			logf.FromContext(ctx).Info("archive writes succeed again")
		}
		p.archiveFailing = false
		p.Metrics.archiveUp.Set(1)
		// A unit written again (after an outage, or still in the cache after its delete)
		// is counted once.
		p.Metrics.archived.Add(float64(added))
		done = end
	}
	return jobs[:done]
}

// archiveRetentionEvery is how often the archive's old partitions are dropped.
const archiveRetentionEvery = time.Hour

// expireArchive drops the archive's days older than its retention, once an hour.
func (p *Pruner) expireArchive(ctx context.Context) {
	if p.ArchiveRetention <= 0 || p.Clock.Since(p.archiveDroppedAt) < archiveRetentionEvery {
		return
	}
	var queue interface {
		DropBefore(context.Context, time.Time) ([]string, error)
	}
	if p.QueueHistory != nil {
		queue = p.QueueHistory
	}
	cutoff := p.Clock.Now().Add(-p.ArchiveRetention)
	for _, history := range []interface {
		DropBefore(context.Context, time.Time) ([]string, error)
	}{p.Archive, queue} {
		if history == nil {
			continue
		}
		dropped, err := history.DropBefore(ctx, cutoff)
		if err != nil {
			logf.FromContext(ctx).Error(err, "archive retention")
			return
		}
		if len(dropped) > 0 {
			logf.FromContext(ctx).Info("archive retention dropped history", "what", dropped)
		}
	}
	p.archiveDroppedAt = p.Clock.Now()
}

// deleteUnit deletes an event first, so that it is not recounted as its deliveries
// go, then its deliveries (the garbage collector would too, later; deleting them here
// frees the budget now and works where no garbage collector runs). The UID
// preconditions never delete a new object of the same name.
func (p *Pruner) deleteUnit(ctx context.Context, u unitObjects, reason string) error {
	log := logf.FromContext(ctx).V(1)
	if e := u.event; e != nil {
		err := p.Client.Delete(ctx, e, client.Preconditions{UID: &e.UID}, client.PropagationPolicy(metav1.DeletePropagationBackground))
		if err := ignoreGone(err); err != nil {
			return err
		}
		if err == nil {
			p.Metrics.pruned.WithLabelValues("WebhookEvent", reason).Inc()
			log.Info("pruned", "event", client.ObjectKeyFromObject(e), "reason", reason)
		}
	}
	for _, d := range u.deliveries {
		err := p.Client.Delete(ctx, d, client.Preconditions{UID: &d.UID})
		if err := ignoreGone(err); err != nil {
			return err
		}
		if err == nil {
			p.Metrics.pruned.WithLabelValues("WebhookDelivery", reason).Inc()
			log.Info("pruned", "delivery", client.ObjectKeyFromObject(d), "reason", reason)
		}
	}
	return nil
}

// ignoreGone: an object already deleted (by the garbage collector, or a user), or
// replaced by a new one of the same name (UID precondition), is not an error.
func ignoreGone(err error) error {
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

// snapshot reads the informers' stores: pointers to the cached objects, with no list
// built and nothing copied. A cache of several namespaces has no single store; it is
// listed instead, without deep copies.
func (p *Pruner) snapshot(ctx context.Context) ([]*hooklinev1.WebhookDelivery, []*hooklinev1.WebhookEvent, error) {
	di, err := p.Cache.GetInformer(ctx, &hooklinev1.WebhookDelivery{}, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, nil, err
	}
	ei, err := p.Cache.GetInformer(ctx, &hooklinev1.WebhookEvent{}, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, nil, err
	}
	ds, ok1 := di.(interface{ GetStore() toolscache.Store })
	es, ok2 := ei.(interface{ GetStore() toolscache.Store })
	if !ok1 || !ok2 {
		return listed(ctx, p.Cache)
	}
	var deliveries []*hooklinev1.WebhookDelivery
	for _, o := range ds.GetStore().List() {
		if d, ok := o.(*hooklinev1.WebhookDelivery); ok {
			deliveries = append(deliveries, d)
		}
	}
	var events []*hooklinev1.WebhookEvent
	for _, o := range es.GetStore().List() {
		if e, ok := o.(*hooklinev1.WebhookEvent); ok {
			events = append(events, e)
		}
	}
	return deliveries, events, nil
}

// listed lists the cache without deep copies.
func listed(ctx context.Context, r client.Reader) ([]*hooklinev1.WebhookDelivery, []*hooklinev1.WebhookEvent, error) {
	var ds hooklinev1.WebhookDeliveryList
	var es hooklinev1.WebhookEventList
	if err := r.List(ctx, &ds, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, err
	}
	if err := r.List(ctx, &es, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, err
	}
	deliveries := make([]*hooklinev1.WebhookDelivery, len(ds.Items))
	for i := range ds.Items {
		deliveries[i] = &ds.Items[i]
	}
	events := make([]*hooklinev1.WebhookEvent, len(es.Items))
	for i := range es.Items {
		events[i] = &es.Items[i]
	}
	return deliveries, events, nil
}
