// Package postgres is the delivery queue in PostgreSQL, for the users who outgrow etcd:
// an event and its fan-out in one transaction (the payload stored once), due
// deliveries claimed with FOR UPDATE SKIP LOCKED and a lease, outcomes written in
// group commits, LISTEN/NOTIFY wake-ups. Finished rows stay as the history, in
// partitions by the event's day that retention drops whole.
//
// Why not River: hookline's queue rows are the delivery history users read by
// namespace, endpoint and phase, with the payload stored once per event and fanned out
// to many rows; River's jobs are opaque JSON args, one payload per job, and its job
// table is not a history to query. The machinery needed here is small: one claim
// query, one batched update, one LISTEN.
package postgres

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookline/hookline/internal/pgbatch"
	"github.com/hookline/hookline/internal/pgdays"
	"github.com/hookline/hookline/internal/pgmigrate"
)

//go:embed migrations/*.sql
var migrations embed.FS

// wakeChannel is the NOTIFY channel of new due work.
const wakeChannel = "hookline_due"

// The queue's tables, partitioned by the event's day.
const (
	eventsTable     = "hookline_queue_events"
	deliveriesTable = "hookline_queue_deliveries"
)

// States of a queued delivery: the WebhookDelivery phases.
const (
	StatePending   = "Pending"
	StateRetrying  = "Retrying"
	StateSucceeded = "Succeeded"
	StateFailed    = "Failed"
	StateExhausted = "Exhausted"
)

// Event is a published event and the endpoints it fans out to.
type Event struct {
	Namespace, Name string
	UID             string // of the WebhookEvent, or one the publisher chose: the message id derives from it
	Type            string
	Payload         []byte // the exact bytes every attempt sends
	MessageID       string
	Endpoints       []string
	CreatedAt       time.Time // when it was published: the body's timestamp (now when zero)
}

// Ref names a queued delivery: its id, and its event's day (the row's partition).
type Ref struct {
	ID  int64
	Day time.Time
}

// Claim is a due delivery a worker holds until its lease ends.
type Claim struct {
	Ref
	Namespace, EventName string
	Endpoint             string
	EventType            string
	MessageID            string
	Payload              []byte
	Attempts             int32
	CreatedAt            time.Time
}

// Attempt is one attempt as the history keeps it.
type Attempt struct {
	Time       time.Time `json:"time"`
	DurationMs int64     `json:"durationMs,omitempty"`
	StatusCode int32     `json:"statusCode,omitempty"`
	Error      string    `json:"error,omitempty"`
	Response   string    `json:"response,omitempty"`
}

// Outcome is what became of a claim: its new state, and the attempt if one was made.
type Outcome struct {
	Ref      // the claim's
	State    string
	Attempts int32
	DueAt    time.Time // the next attempt (unfinished states)
	Reason   string
	Attempt  *Attempt // nil: no request was sent (a wait, a refusal)
}

// Queue is the delivery queue.
type Queue struct {
	pool *pgxpool.Pool
	// relaxed commits without waiting for the WAL to reach the disk: claims and
	// heartbeats, on every delivery's path. A PostgreSQL crash may lose the last of
	// them; a lost claim is simply claimed again. Publishing and outcomes wait for the
	// disk (outcomes in group commits, off the delivery's path): an acknowledged event
	// is never lost, and a recorded outcome stays recorded.
	relaxed *pgxpool.Pool
	dsn     string
	days    *pgdays.Partitions
}

// Open connects and applies the queue's migrations.
func Open(ctx context.Context, dsn string) (*Queue, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("delivery queue: the DSN does not parse (%s)", pgmigrate.Redact(err, dsn))
	}
	cfg.MaxConns = max(cfg.MaxConns, 8)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("delivery queue: %w", pgmigrate.Redact(err, dsn))
	}
	if err := pgmigrate.Apply(ctx, pool, migrations, "migrations/*.sql", "queue_"); err != nil {
		pool.Close()
		return nil, fmt.Errorf("delivery queue migrations: %w", pgmigrate.Redact(err, dsn))
	}
	relaxedCfg := cfg.Copy()
	relaxedCfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	relaxed, err := pgxpool.NewWithConfig(ctx, relaxedCfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("delivery queue: %w", pgmigrate.Redact(err, dsn))
	}
	return &Queue{pool: pool, relaxed: relaxed, dsn: dsn, days: pgdays.New(pool)}, nil
}

// Close closes the connections.
func (q *Queue) Close() {
	q.relaxed.Close()
	q.pool.Close()
}

// Ping reports whether the database answers.
func (q *Queue) Ping(ctx context.Context) error { return q.redact(q.pool.Ping(ctx)) }

func (q *Queue) redact(err error) error { return pgmigrate.Redact(err, q.dsn) }

// Publish stores events and their deliveries in one transaction, and wakes idle
// workers when it commits. An event whose (namespace, name) is stored already is left
// as it is, deliveries and all: publishing is idempotent by name while retention keeps
// the name's day. It returns how many deliveries were queued.
func (q *Queue) Publish(ctx context.Context, events []Event) (int, error) {
	if len(events) == 0 {
		return 0, nil
	}
	queued, err := q.publish(ctx, events)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23514" { // check_violation
		// No partition for a row: another replica's retention dropped its day.
		q.days.Forget()
		queued, err = q.publish(ctx, events)
	}
	if err != nil {
		return 0, q.redact(err)
	}
	return queued, nil
}

func (q *Queue) publish(ctx context.Context, events []Event) (int, error) {
	for i := range events {
		events[i].CreatedAt = publishedAt(events[i].CreatedAt)
		for _, table := range []string{eventsTable, deliveriesTable} {
			if err := q.days.Ensure(ctx, table, events[i].CreatedAt); err != nil {
				return 0, err
			}
		}
	}
	queued := 0
	err := pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		queued = 0
		b := &pgx.Batch{}
		for _, e := range events {
			// The key makes a name unique within its day; NOT EXISTS, across days.
			b.Queue(`WITH ev AS (
				INSERT INTO hookline_queue_events (namespace, name, uid, event_type, payload, created_at, day)
				SELECT $1, $2, $3, $4, $5, $8, $9
				WHERE NOT EXISTS (SELECT 1 FROM hookline_queue_events WHERE namespace = $1 AND name = $2)
				ON CONFLICT DO NOTHING RETURNING namespace, name, day)
				INSERT INTO hookline_queue_deliveries (namespace, event_name, day, endpoint, message_id)
				SELECT ev.namespace, ev.name, ev.day, ep, $6 FROM ev, unnest($7::text[]) AS ep`,
				e.Namespace, e.Name, e.UID, e.Type, e.Payload, e.MessageID, e.Endpoints, e.CreatedAt, pgdays.Day(e.CreatedAt))
		}
		affected, err := pgbatch.Exec(ctx, tx, b)
		if err != nil {
			return err
		}
		for _, n := range affected {
			queued += int(n)
		}
		if queued > 0 {
			_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, wakeChannel)
			return err
		}
		return nil
	})
	return queued, err
}

func publishedAt(t time.Time) time.Time {
	if t.IsZero() {
		return time.Now()
	}
	return t
}

// Claim leases up to limit due deliveries to owner for lease. A delivery whose lease
// ended unrecorded (its holder died) is due again, with the same message id and body.
func (q *Queue) Claim(ctx context.Context, owner string, limit int, lease time.Duration) ([]Claim, error) {
	rows, err := q.relaxed.Query(ctx, `WITH due AS (
			SELECT id, day FROM hookline_queue_deliveries
			WHERE finished_at IS NULL AND due_at <= now() AND (lease_until IS NULL OR lease_until < now())
			ORDER BY due_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
		UPDATE hookline_queue_deliveries d SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
		FROM due, hookline_queue_events e
		WHERE d.id = due.id AND d.day = due.day AND e.namespace = d.namespace AND e.name = d.event_name AND e.day = d.day
		RETURNING d.id, d.namespace, d.event_name, d.endpoint, e.event_type, d.message_id, e.payload, d.attempts, e.created_at, d.day`,
		limit, owner, lease.Seconds())
	if err != nil {
		return nil, q.redact(err)
	}
	claims, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Claim, error) {
		var c Claim
		err := row.Scan(&c.ID, &c.Namespace, &c.EventName, &c.Endpoint, &c.EventType, &c.MessageID, &c.Payload, &c.Attempts, &c.CreatedAt, &c.Day)
		return c, err
	})
	return claims, q.redact(err)
}

// ErrLeaseLost: the outcome was not written because the claim's lease had ended and
// another worker claimed the delivery (the attempt may be made twice: at least once).
var ErrLeaseLost = errors.New("the claim's lease ended before its outcome was written")

// Record writes outcomes of owner's claims in one transaction (a group commit). It
// returns, per outcome, nil or ErrLeaseLost.
func (q *Queue) Record(ctx context.Context, owner string, outcomes []Outcome) ([]error, error) {
	results := make([]error, len(outcomes))
	err := pgx.BeginFunc(ctx, q.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, o := range outcomes {
			var attempt []byte
			if o.Attempt != nil {
				raw, err := json.Marshal([]Attempt{*o.Attempt})
				if err != nil {
					return err
				}
				attempt = raw
			}
			var finished any
			if o.State == StateSucceeded || o.State == StateFailed || o.State == StateExhausted {
				finished = time.Now()
			}
			var status int32
			if o.Attempt != nil {
				status = o.Attempt.StatusCode
			}
			// The history keeps the last ten attempts.
			b.Queue(`UPDATE hookline_queue_deliveries SET state = $3, attempts = $4, due_at = $5, reason = $6,
					lease_owner = NULL, lease_until = NULL, finished_at = $7,
					response_status = CASE WHEN $8::jsonb IS NULL THEN response_status ELSE $9 END,
					history = CASE WHEN $8::jsonb IS NULL THEN history
						WHEN jsonb_array_length(history) >= 10 THEN (history - 0) || $8::jsonb
						ELSE history || $8::jsonb END
				WHERE id = $1 AND day = $10 AND lease_owner = $2`,
				o.ID, owner, o.State, o.Attempts, o.DueAt, o.Reason, finished, attempt, status, o.Day)
		}
		affected, err := pgbatch.Exec(ctx, tx, b)
		if err != nil {
			return err
		}
		for i, n := range affected {
			results[i] = nil
			if n == 0 {
				results[i] = ErrLeaseLost
			}
		}
		return nil
	})
	if err != nil {
		return nil, q.redact(err)
	}
	return results, nil
}

// Wakeups delivers a value when new work is published (LISTEN/NOTIFY), on a
// connection of its own, until ctx ends; after a lost connection it listens again,
// and sends a wakeup then, since a notification may have been missed.
func (q *Queue) Wakeups(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	wake := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	go func() {
		for ctx.Err() == nil {
			conn, err := q.pool.Acquire(ctx)
			if err == nil {
				if _, err = conn.Exec(ctx, "LISTEN "+wakeChannel); err == nil {
					wake()
					for {
						if _, err = conn.Conn().WaitForNotification(ctx); err != nil {
							break
						}
						wake()
					}
				}
				conn.Release()
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return out
}

// Delivery is a queued delivery as users read it.
type Delivery struct {
	ID             int64
	Namespace      string
	EventName      string
	Endpoint       string
	EventType      string
	MessageID      string
	State          string
	Attempts       int32
	ResponseStatus int32
	Reason         string
	DueAt          time.Time
	CreatedAt      time.Time
	FinishedAt     *time.Time
	History        []Attempt
}

// Deliveries lists a namespace's deliveries, newest first (at most limit).
func (q *Queue) Deliveries(ctx context.Context, namespace string, limit int) ([]Delivery, error) {
	rows, err := q.pool.Query(ctx, `SELECT d.id, d.namespace, d.event_name, d.endpoint, e.event_type, d.message_id, d.state,
			d.attempts, d.response_status, d.reason, d.due_at, d.created_at, d.finished_at, d.history
		FROM hookline_queue_deliveries d JOIN hookline_queue_events e ON e.namespace = d.namespace AND e.name = d.event_name AND e.day = d.day
		WHERE d.namespace = $1 ORDER BY d.created_at DESC, d.id DESC LIMIT $2`, namespace, limit)
	if err != nil {
		return nil, q.redact(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Delivery, error) {
		var d Delivery
		var history []byte
		if err := row.Scan(&d.ID, &d.Namespace, &d.EventName, &d.Endpoint, &d.EventType, &d.MessageID, &d.State,
			&d.Attempts, &d.ResponseStatus, &d.Reason, &d.DueAt, &d.CreatedAt, &d.FinishedAt, &history); err != nil {
			return d, err
		}
		return d, json.Unmarshal(history, &d.History)
	})
	return out, q.redact(err)
}

// Recorder batches outcomes into group commits: one commit carries up to maxBatch
// outcomes gathered for at most maxWait, so a busy queue pays one round trip per
// batch, and a worker that submits an outcome is free at once (the claim's lease
// covers the moment until the commit).
type Recorder struct {
	q        *Queue
	owner    string
	maxBatch int
	maxWait  time.Duration

	in      chan recordRequest
	commits atomic.Int64
	done    chan struct{}
}

type recordRequest struct {
	outcome Outcome
	then    func(error)
}

// NewRecorder returns a recorder of owner's outcomes; Run must be running.
func NewRecorder(q *Queue, owner string, maxBatch int, maxWait time.Duration) *Recorder {
	return &Recorder{q: q, owner: owner, maxBatch: maxBatch, maxWait: maxWait,
		in: make(chan recordRequest, maxBatch*4), done: make(chan struct{})}
}

// Commits is how many group commits the recorder made.
func (r *Recorder) Commits() int64 { return r.commits.Load() }

// Submit queues an outcome for the next group commit; then, if set, is called with its
// result. It blocks only while the recorder is that far behind (backpressure).
func (r *Recorder) Submit(o Outcome, then func(error)) {
	r.in <- recordRequest{outcome: o, then: then}
}

// Record writes an outcome in the next group commit and returns its result.
func (r *Recorder) Record(ctx context.Context, o Outcome) error {
	result := make(chan error, 1)
	r.Submit(o, func(err error) { result <- err })
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close ends Run once what was submitted is committed; nothing may be submitted after.
func (r *Recorder) Close() {
	close(r.in)
	<-r.done
}

// Run commits batches until Close.
func (r *Recorder) Run(ctx context.Context) {
	defer close(r.done)
	for {
		req, open := <-r.in
		if !open {
			return
		}
		batch := []recordRequest{req}
		timer := time.NewTimer(r.maxWait)
	gather:
		for len(batch) < r.maxBatch {
			select {
			case req, open := <-r.in:
				if !open {
					break gather
				}
				batch = append(batch, req)
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		r.commit(ctx, batch)
	}
}

func (r *Recorder) commit(ctx context.Context, batch []recordRequest) {
	outcomes := make([]Outcome, len(batch))
	for i, req := range batch {
		outcomes[i] = req.outcome
	}
	// The commit outlives a cancelled manager for a moment: an attempt that was made
	// is worth recording.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	results, err := r.q.Record(wctx, r.owner, outcomes)
	r.commits.Add(1)
	for i, req := range batch {
		if req.then == nil {
			continue
		}
		if err != nil {
			req.then(err)
		} else {
			req.then(results[i])
		}
	}
}

// DropBefore drops the history of the days that ended before cutoff, a whole day (its
// events and their deliveries) at a time, off the hot path. A day with a delivery still
// unfinished stays until that delivery finishes. A name published again after its day
// was dropped is a new event.
func (q *Queue) DropBefore(ctx context.Context, cutoff time.Time) ([]string, error) {
	days, err := q.days.Days(ctx, deliveriesTable, eventsTable)
	if err != nil {
		return nil, q.redact(err)
	}
	var dropped []string
	for _, day := range days {
		if !pgdays.Ended(day, cutoff) {
			continue
		}
		names, err := q.days.Drop(ctx, day, func(ctx context.Context, tx pgx.Tx) (bool, error) {
			var live bool
			err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM hookline_queue_deliveries WHERE day = $1 AND finished_at IS NULL)`, day).Scan(&live)
			return live, err
		}, deliveriesTable, eventsTable)
		dropped = append(dropped, names...)
		if err != nil {
			return dropped, q.redact(err)
		}
	}
	return dropped, nil
}

// replicaTTL is how long a replica counts as live after its last heartbeat.
const replicaTTL = 15 * time.Second

// Heartbeat records that owner delivers, forgets replicas silent for replicaTTL, and
// returns how many are live (owner included).
func (q *Queue) Heartbeat(ctx context.Context, owner string) (int, error) {
	var live int
	err := pgx.BeginFunc(ctx, q.relaxed, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO hookline_queue_replicas (owner, seen_at) VALUES ($1, now())
			ON CONFLICT (owner) DO UPDATE SET seen_at = now()`, owner); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM hookline_queue_replicas WHERE seen_at < now() - make_interval(secs => $1)`, replicaTTL.Seconds()); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT count(*) FROM hookline_queue_replicas`).Scan(&live)
	})
	return live, q.redact(err)
}

// Leave forgets owner at once (a replica that stops cleanly).
func (q *Queue) Leave(ctx context.Context, owner string) error {
	_, err := q.pool.Exec(ctx, `DELETE FROM hookline_queue_replicas WHERE owner = $1`, owner)
	return q.redact(err)
}
