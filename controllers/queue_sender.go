package controllers

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/backoff"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/deliverystate"
	wire "github.com/hookline/hookline/internal/message"
	"github.com/hookline/hookline/internal/signing"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
	"github.com/hookline/hookline/internal/throttle"
)

// QueueSender delivers from the PostgreSQL queue (--delivery-store=postgres). Every
// replica runs one: claims are leased rows, so replicas share the work without a
// leader. Signing, the address guard, the outcome state machine, the retry schedule,
// the per-endpoint limits and the health record are the etcd store's own code.
type QueueSender struct {
	Client  client.Client // the manager's cache: endpoints and keyrings
	Secrets SecretReader
	Sender  delivery.Sender
	Queue   *pgstore.Queue
	// Owner names this replica's claims (unique per process).
	Owner               string
	MaxConcurrent       int
	EndpointMaxInFlight int
	Clock               clock.Clock
	Metrics             *Metrics
	// Lease is how long a claim is held before another replica may take it.
	Lease time.Duration

	health   *endpointHealth
	throttle *throttle.Throttle
	recorder *pgstore.Recorder
	// waiters are the claims waiting in this process for their endpoint's limits,
	// by throttle caller: the throttle wakes one when a slot frees.
	waiters sync.Map // string -> chan struct{}
	// replicas is how many replicas deliver from the queue (by heartbeat): an
	// endpoint's limits are divided among them.
	replicas atomic.Int64
	// recent holds each endpoint and its signing keys as read within recentFor: at
	// thousands of deliveries a second, reading and decoding them for every attempt
	// was a fifth of the sender's CPU.
	recent sync.Map // "namespace/name" -> recentEndpoint
}

// recentFor bounds how stale an endpoint or its keys may be when an attempt uses them:
// a rotation, a pause or a disable takes effect within it.
const recentFor = time.Second

type recentEndpoint struct {
	ep   *hooklinev1.WebhookEndpoint // nil: it does not exist
	keys []signing.Key
	err  error // the keys' problem, if any
	at   time.Time
}

// heartbeatEvery is how often a replica says it delivers.
const heartbeatEvery = 5 * time.Second

// DefaultDeliveryLease is how long a claim is held before another replica may take it:
// longer than any attempt (timeoutSeconds is at most 60).
const DefaultDeliveryLease = 2 * time.Minute

// Queue timings: how often due retries are looked for when no wakeup comes, and how
// soon a delivery refused by its endpoint's limits is tried again.
const (
	queuePoll       = 250 * time.Millisecond
	queueDeferral   = 200 * time.Millisecond
	queueWaitSecret = time.Minute
	queueWaitReady  = 5 * time.Second
	// queueAdmitWait is how long a claim waits in process for its endpoint's limits
	// (an in-flight slot frees in milliseconds) before it is put back with a due time.
	queueAdmitWait = time.Second
)

func newQueueSender(c client.Client, secrets SecretReader, health *endpointHealth, clk clock.Clock, cfg Config, owner string) *QueueSender {
	s := &QueueSender{Client: c, Secrets: secrets, Sender: cfg.Sender, Queue: cfg.Queue, Owner: owner,
		MaxConcurrent: max(cfg.MaxConcurrentDeliveries, 1), EndpointMaxInFlight: endpointShare(cfg), Clock: clk, Metrics: cfg.Metrics,
		Lease: cfg.DeliveryLease, health: health}
	s.throttle = throttle.New(s.wakeWaiter)
	if s.Lease <= 0 {
		s.Lease = DefaultDeliveryLease
	}
	// Group commit: up to 64 outcomes, or what 2 ms gathers, per transaction.
	s.recorder = pgstore.NewRecorder(cfg.Queue, owner, 64, 2*time.Millisecond)
	return s
}

// NeedLeaderElection: every replica delivers.
func (s *QueueSender) NeedLeaderElection() bool { return false }

// Start claims due deliveries while there are free workers, until ctx ends; it waits
// for the attempts in flight to be recorded before it returns.
func (s *QueueSender) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("queue")
	go s.recorder.Run(ctx)
	defer s.recorder.Close() // after the workers: what they submitted is committed
	s.heartbeat(ctx)
	go func() {
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				leave, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				_ = s.Queue.Leave(leave, s.Owner)
				cancel()
				return
			case <-t.C:
				s.heartbeat(ctx)
			}
		}
	}()
	wake := s.Queue.Wakeups(ctx)
	workers := make(chan struct{}, s.MaxConcurrent)
	freed := make(chan struct{}, 1)
	poll := time.NewTicker(queuePoll)
	defer poll.Stop()
	failing := false
	for {
		// Claim in batches: a quarter of the workers at least, unless woken.
		if free := cap(workers) - len(workers); free > 0 {
			claims, err := s.Queue.Claim(ctx, s.Owner, free, s.Lease)
			switch {
			case err != nil && ctx.Err() == nil:
				if !failing {
					log.Error(err, "claiming deliveries failed; retrying")
				}
				failing = true
			case err == nil && failing:
				log.Info("claiming deliveries works again")
				failing = false
			}
			for _, c := range claims {
				workers <- struct{}{}
				go func() {
					defer func() {
						<-workers
						select {
						case freed <- struct{}{}:
						default:
						}
					}()
					s.deliver(ctx, c)
				}()
			}
			if len(claims) == free && free > 0 {
				continue // there may be more due
			}
		}
		select {
		case <-ctx.Done():
			for range cap(workers) { // the attempts in flight are recorded first
				workers <- struct{}{}
			}
			return nil
		case <-wake:
		case <-poll.C:
		case <-freed:
			if cap(workers)-len(workers) < max(cap(workers)/4, 1) {
				continue
			}
		}
	}
}

// deliver makes at most one attempt of a claimed delivery and submits what became of
// it to the next group commit; the worker is free at once.
func (s *QueueSender) deliver(ctx context.Context, c pgstore.Claim) {
	out := s.attempt(ctx, c)
	log := logf.FromContext(ctx)
	s.recorder.Submit(out, func(err error) {
		switch {
		case err == nil:
		case errors.Is(err, pgstore.ErrLeaseLost):
			log.Info("a delivery's lease ended before its outcome was recorded; another replica tries it again",
				"namespace", c.Namespace, "event", c.EventName, "endpoint", c.Endpoint)
		default:
			log.Error(err, "recording a delivery's outcome failed; it is claimed again when its lease ends",
				"namespace", c.Namespace, "event", c.EventName, "endpoint", c.Endpoint)
		}
	})
}

// attempt decides and, when it may, sends; it returns the outcome to record.
func (s *QueueSender) attempt(ctx context.Context, c pgstore.Claim) pgstore.Outcome {
	now := s.Clock.Now()
	st := hooklinev1.WebhookDeliveryStatus{Attempts: c.Attempts, Phase: hooklinev1.PhasePending}
	if c.Attempts > 0 {
		st.Phase = hooklinev1.PhaseRetrying
	}
	later := func(after time.Duration, reason string) pgstore.Outcome {
		return pgstore.Outcome{Ref: c.Ref, State: string(st.Phase), Attempts: c.Attempts, DueAt: now.Add(after), Reason: reason}
	}
	recent, err := s.endpoint(ctx, c.Namespace, c.Endpoint, now)
	var ep hooklinev1.WebhookEndpoint
	if recent.ep != nil {
		ep = *recent.ep
	}
	switch {
	case err == nil && (recent.ep == nil || ep.DeletionTimestamp != nil):
		return s.finished(c, deliverystate.Fail(st, 0, hooklinev1.ReasonEndpointDeleted, fmt.Sprintf("WebhookEndpoint %s does not exist", c.Endpoint), now), nil)
	case err != nil:
		return later(queueWaitReady, hooklinev1.ReasonWaiting)
	case ep.Disabled():
		return s.finished(c, deliverystate.Fail(st, 0, hooklinev1.ReasonEndpointDisabled, fmt.Sprintf("WebhookEndpoint %s is disabled (%s)", ep.Name, ep.Status.DisabledReason), now), nil)
	case !ep.AcceptsDeliveries():
		return later(queueWaitReady, hooklinev1.ReasonWaiting)
	}
	key := ep.Namespace + "/" + ep.Name
	caller := strconv.FormatInt(c.ID, 10)
	admission := s.admit(ctx, key, caller, s.limits(&ep))
	if !admission.Admitted() {
		return later(max(admission.RetryAfter, queueDeferral), hooklinev1.ReasonWaiting)
	}
	now = s.Clock.Now() // the attempt's time, after any wait
	body, err := wire.Body(c.EventType, c.CreatedAt, c.Payload)
	if err != nil {
		admission.Release()
		return s.finished(c, deliverystate.Fail(st, 0, hooklinev1.ReasonBadPayload, err.Error(), now), nil)
	}
	msg := message{id: c.MessageID, body: body, createdAt: c.CreatedAt}
	var res delivery.Result
	var signature string
	err = recent.err
	if err == nil {
		res, signature, err = sendSigned(ctx, s.Secrets, s.Sender, &ep, msg, recent.keys, now, admission.Release)
	}
	admission.Release()
	var wait *errWait
	switch {
	case errors.As(err, &wait):
		return later(queueWaitSecret, hooklinev1.ReasonWaiting)
	case err != nil:
		return later(queueWaitReady, hooklinev1.ReasonWaiting)
	}
	s.Metrics.observeAttempt(res)
	next := deliverystate.Next(st, 0, deliverystate.Attempt{At: now, Result: res, MessageID: c.MessageID, Signature: signature},
		deliverystate.Policy{Retry: backoff.NewPolicy(ep.RetrySchedule(), ep.MaxAttempts())}, s.Clock.Now())
	if next.Phase == hooklinev1.PhaseSucceeded {
		s.Metrics.observeLatency(s.Clock.Since(c.CreatedAt))
	}
	if s.health.record(&ep, res.Outcome, now) {
		if err := s.health.flush(ctx, &ep); err != nil {
			logf.FromContext(ctx).Error(err, "update endpoint health", "endpoint", key)
		}
	}
	last := next.History[len(next.History)-1]
	return s.finished(c, next, &pgstore.Attempt{Time: now, DurationMs: last.DurationMs, StatusCode: last.StatusCode,
		Error: last.Error, Response: last.Response})
}

// endpoint is the endpoint and its signing keys, read at most recentFor ago.
func (s *QueueSender) endpoint(ctx context.Context, namespace, name string, now time.Time) (recentEndpoint, error) {
	key := namespace + "/" + name
	if r, ok := s.recent.Load(key); ok && now.Sub(r.(recentEndpoint).at) < recentFor {
		return r.(recentEndpoint), nil
	}
	r := recentEndpoint{at: now}
	var ep hooklinev1.WebhookEndpoint
	err := s.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &ep)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return r, err
	default:
		r.ep = &ep
		if ep.AcceptsDeliveries() {
			r.keys, r.err = signingKeys(ctx, s.Client, &ep, now)
		}
	}
	s.recent.Store(key, r)
	return r, nil
}

// admit asks the throttle for the endpoint's limits, waiting in process up to
// queueAdmitWait: woken when an in-flight slot frees, or when its rate slot comes.
// Not admitted by then, the claim goes back to the queue with a due time (a rate slot
// stays reserved for its return).
func (s *QueueSender) admit(ctx context.Context, key, caller string, lim throttle.Limits) throttle.Decision {
	woken := make(chan struct{}, 1)
	s.waiters.Store(caller, woken)
	defer s.waiters.Delete(caller)
	deadline := time.Now().Add(queueAdmitWait)
	for {
		d := s.throttle.Acquire(key, caller, lim, s.Clock.Now())
		if d.Admitted() {
			return d
		}
		left := time.Until(deadline)
		if left <= 0 || d.RetryAfter > left {
			if d.RetryAfter == 0 {
				s.throttle.Forget(key, caller)
			}
			return d
		}
		wait := left
		if d.RetryAfter > 0 {
			wait = d.RetryAfter
		}
		select {
		case <-ctx.Done():
			s.throttle.Forget(key, caller)
			return throttle.Decision{}
		case <-woken:
		case <-time.After(wait):
		}
	}
}

func (s *QueueSender) wakeWaiter(caller string) {
	if ch, ok := s.waiters.Load(caller); ok {
		select {
		case ch.(chan struct{}) <- struct{}{}:
		default:
		}
	}
}

// finished turns the state machine's status into the outcome to record.
func (s *QueueSender) finished(c pgstore.Claim, st hooklinev1.WebhookDeliveryStatus, a *pgstore.Attempt) pgstore.Outcome {
	out := pgstore.Outcome{Ref: c.Ref, State: string(st.Phase), Attempts: st.Attempts, Attempt: a, DueAt: s.Clock.Now()}
	if st.NextAttemptTime != nil {
		out.DueAt = st.NextAttemptTime.Time
	}
	if cond := meta.FindStatusCondition(st.Conditions, hooklinev1.ConditionSucceeded); cond != nil {
		out.Reason = cond.Reason
	}
	if st.Phase.Finished() {
		s.Metrics.observeCompleted(st.Phase)
	}
	return out
}

// limits are the endpoint's rateLimit divided among the live replicas (at least one
// each), so that a receiver sees at most its limits whatever the number of replicas
// (unless a limit is below it); with the default share, this replica's own, when it
// sets no maxInFlight.
func (s *QueueSender) limits(ep *hooklinev1.WebhookEndpoint) throttle.Limits {
	lim := rateLimits(ep)
	n := int(max(s.replicas.Load(), 1))
	if lim.MaxInFlight > 0 {
		lim.MaxInFlight = max(lim.MaxInFlight/n, 1)
	} else {
		lim.MaxInFlight = s.EndpointMaxInFlight
	}
	if lim.PerSecond > 0 {
		lim.PerSecond = max(lim.PerSecond/n, 1)
	}
	return lim
}

// heartbeat says this replica delivers and learns how many do.
func (s *QueueSender) heartbeat(ctx context.Context) {
	live, err := s.Queue.Heartbeat(ctx, s.Owner)
	if err != nil {
		return // the last count stands; claims fail too and say so
	}
	s.replicas.Store(int64(live))
	s.Metrics.replicas.Set(float64(live))
}

// queueOwner is a name for this process's claims.
func queueOwner(hostname string) string {
	return fmt.Sprintf("%s-%d", hostname, time.Now().UnixNano())
}
