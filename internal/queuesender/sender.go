// Package queuesender delivers from the PostgreSQL queue (--delivery-store=postgres):
// every replica runs one and claims due deliveries as leased rows, so replicas share
// the work without a leader. Each claim is one engine.Job; its Result becomes the
// claim's outcome, written in the queue's group commits.
package queuesender

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
	"github.com/hookline/hookline/internal/engine"
	wire "github.com/hookline/hookline/internal/message"
	"github.com/hookline/hookline/internal/signing"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
	"github.com/hookline/hookline/internal/throttle"
)

// Metrics are what the sender reports beyond the engine's.
type Metrics interface {
	ObserveCompleted(hooklinev1.DeliveryPhase)
	SetReplicas(int)
}

// Sender delivers from the queue until its context ends.
type Sender struct {
	Engine  *engine.Engine
	Client  client.Reader // the manager's cache: endpoints and keyrings
	Queue   *pgstore.Queue
	Metrics Metrics
	// Owner names this replica's claims (unique per process).
	Owner         string
	MaxConcurrent int
	Clock         clock.Clock
	// Lease is how long a claim is held before another replica may take it.
	Lease time.Duration

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

// DefaultLease is how long a claim is held before another replica may take it: longer
// than any attempt (timeoutSeconds is at most 60).
const DefaultLease = 2 * time.Minute

// Queue timings: how often due retries are looked for when no wakeup comes, and how
// soon a delivery refused by its endpoint's limits is tried again.
const (
	queuePoll     = 250 * time.Millisecond
	queueDeferral = 200 * time.Millisecond
	// queueAdmitWait is how long a claim waits in process for its endpoint's limits
	// (an in-flight slot frees in milliseconds) before it is put back with a due time.
	queueAdmitWait = time.Second
)

// New returns a sender of owner's claims. eng is the engine's shared parts (secrets,
// sender, health, metrics, clock, share); the sender gives it a throttle of its own,
// its admission that waits in process, and the division by live replicas.
func New(eng engine.Engine, c client.Reader, queue *pgstore.Queue, metrics Metrics, owner string, maxConcurrent int, lease time.Duration) *Sender {
	s := &Sender{Client: c, Queue: queue, Metrics: metrics, Owner: owner, MaxConcurrent: max(maxConcurrent, 1), Clock: eng.Clock, Lease: lease}
	if s.Lease <= 0 {
		s.Lease = DefaultLease
	}
	eng.Throttle = throttle.New(s.wakeWaiter)
	eng.Admit = s.admit
	eng.Replicas = func() int { return int(s.replicas.Load()) }
	s.Engine = &eng
	// Group commit: up to 64 outcomes, or what 2 ms gathers, per transaction.
	s.recorder = pgstore.NewRecorder(queue, owner, 64, 2*time.Millisecond)
	return s
}

// NeedLeaderElection: every replica delivers.
func (s *Sender) NeedLeaderElection() bool { return false }

// Start claims due deliveries while there are free workers, until ctx ends; it waits
// for the attempts in flight to be recorded before it returns.
func (s *Sender) Start(ctx context.Context) error {
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
func (s *Sender) deliver(ctx context.Context, c pgstore.Claim) {
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

// attempt makes at most one attempt of a claim and returns the outcome to record.
func (s *Sender) attempt(ctx context.Context, c pgstore.Claim) pgstore.Outcome {
	now := s.Clock.Now()
	st := hooklinev1.WebhookDeliveryStatus{Attempts: c.Attempts, Phase: hooklinev1.PhasePending}
	if c.Attempts > 0 {
		st.Phase = hooklinev1.PhaseRetrying
	}
	later := func(after time.Duration) pgstore.Outcome {
		return pgstore.Outcome{Ref: c.Ref, State: string(st.Phase), Attempts: c.Attempts, DueAt: s.Clock.Now().Add(after), Reason: hooklinev1.ReasonWaiting}
	}
	recent, err := s.endpoint(ctx, c.Namespace, c.Endpoint, now)
	if err != nil {
		return later(engine.WaitReady)
	}
	res, err := s.Engine.Attempt(ctx, engine.Job{Status: st, Endpoint: recent.ep, EndpointName: c.Endpoint,
		Caller: strconv.FormatInt(c.ID, 10),
		Message: func(context.Context) (engine.Message, error) {
			body, err := wire.Body(c.EventType, c.CreatedAt, c.Payload)
			if err != nil {
				return engine.Message{}, &engine.BadPayload{Msg: err.Error()}
			}
			return engine.Message{ID: c.MessageID, Body: body, CreatedAt: c.CreatedAt}, nil
		},
		Keys: func(context.Context) ([]signing.Key, error) { return recent.keys, recent.err },
	})
	switch {
	case err != nil:
		return later(engine.WaitReady)
	case res.Deferred:
		return later(max(res.Retry, queueDeferral))
	case res.Sent == nil && !res.Status.Phase.Finished():
		return later(res.Retry)
	}
	if res.Sent != nil {
		if err := s.Engine.Recorded(ctx, recent.ep, res); err != nil {
			logf.FromContext(ctx).Error(err, "update endpoint health", "endpoint", c.Namespace+"/"+c.Endpoint)
		}
	}
	return s.finished(c, res)
}

// endpoint is the endpoint and its signing keys, read at most recentFor ago.
func (s *Sender) endpoint(ctx context.Context, namespace, name string, now time.Time) (recentEndpoint, error) {
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
			r.keys, r.err = engine.SigningKeys(ctx, s.Client, &ep, now)
		}
	}
	s.recent.Store(key, r)
	return r, nil
}

// admit asks the throttle for the endpoint's limits, waiting in process up to
// queueAdmitWait: woken when an in-flight slot frees, or when its rate slot comes.
// Not admitted by then, the claim goes back to the queue with a due time (a rate slot
// stays reserved for its return).
func (s *Sender) admit(ctx context.Context, key, caller string, lim throttle.Limits) throttle.Decision {
	woken := make(chan struct{}, 1)
	s.waiters.Store(caller, woken)
	defer s.waiters.Delete(caller)
	deadline := time.Now().Add(queueAdmitWait)
	for {
		d := s.Engine.Throttle.Acquire(key, caller, lim, s.Clock.Now())
		if d.Admitted() {
			return d
		}
		left := time.Until(deadline)
		if left <= 0 || d.RetryAfter > left {
			if d.RetryAfter == 0 {
				s.Engine.Throttle.Forget(key, caller)
			}
			return d
		}
		wait := left
		if d.RetryAfter > 0 {
			wait = d.RetryAfter
		}
		select {
		case <-ctx.Done():
			s.Engine.Throttle.Forget(key, caller)
			return throttle.Decision{}
		case <-woken:
		case <-time.After(wait):
		}
	}
}

func (s *Sender) wakeWaiter(caller string) {
	if ch, ok := s.waiters.Load(caller); ok {
		select {
		case ch.(chan struct{}) <- struct{}{}:
		default:
		}
	}
}

// finished turns the engine's result into the outcome to record.
func (s *Sender) finished(c pgstore.Claim, res engine.Result) pgstore.Outcome {
	st := res.Status
	out := pgstore.Outcome{Ref: c.Ref, State: string(st.Phase), Attempts: st.Attempts, DueAt: s.Clock.Now()}
	if st.NextAttemptTime != nil {
		out.DueAt = st.NextAttemptTime.Time
	}
	if cond := meta.FindStatusCondition(st.Conditions, hooklinev1.ConditionSucceeded); cond != nil {
		out.Reason = cond.Reason
	}
	if res.Sent != nil {
		last := st.History[len(st.History)-1]
		out.Attempt = &pgstore.Attempt{Time: res.At, DurationMs: last.DurationMs, StatusCode: last.StatusCode, Error: last.Error, Response: last.Response}
	}
	if st.Phase.Finished() {
		s.Metrics.ObserveCompleted(st.Phase)
	}
	return out
}

// heartbeat says this replica delivers and learns how many do.
func (s *Sender) heartbeat(ctx context.Context) {
	live, err := s.Queue.Heartbeat(ctx, s.Owner)
	if err != nil {
		return // the last count stands; claims fail too and say so
	}
	s.replicas.Store(int64(live))
	s.Metrics.SetReplicas(live)
}

// Owner is a name for this process's claims.
func Owner(hostname string) string {
	return fmt.Sprintf("%s-%d", hostname, time.Now().UnixNano())
}
