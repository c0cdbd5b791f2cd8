package postgres

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/archive"
)

// List reads the queue as the history API reads the archive: a namespace's
// deliveries, live and finished, newest first, with the archive's filters and record
// type, so that kubectl hookline history shows either store the same way. A delivery
// is named as a fan-out's WebhookDelivery would be; a live one's time is when it was
// queued.
func (q *Queue) List(ctx context.Context, f archive.Filter) ([]archive.Delivery, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	rows, err := q.pool.Query(ctx, `SELECT d.id, coalesce(d.finished_at, d.created_at) AS at, d.namespace, d.event_name, d.endpoint,
			e.event_type, d.message_id, e.uid, d.state, d.attempts, d.created_at, d.history, e.payload,
			CASE WHEN d.finished_at IS NULL THEN d.due_at END
		FROM hookline_queue_deliveries d JOIN hookline_queue_events e ON e.namespace = d.namespace AND e.name = d.event_name AND e.day = d.day
		WHERE d.namespace = @namespace
		AND (@name = '' OR starts_with(@name, d.event_name || '-'))
		AND (@endpoint = '' OR d.endpoint = @endpoint)
		AND (@event_type = '' OR e.event_type = @event_type)
		AND (@phase = '' OR d.state = @phase)
		AND (@message_id = '' OR d.message_id = @message_id)
		AND (@since::timestamptz IS NULL OR coalesce(d.finished_at, d.created_at) >= @since)
		AND (@before::timestamptz IS NULL OR coalesce(d.finished_at, d.created_at) < @before)
		ORDER BY at DESC, d.id LIMIT @limit`,
		pgx.NamedArgs{"namespace": f.Namespace, "name": f.Name, "endpoint": f.Endpoint, "event_type": f.EventType, "phase": f.Phase,
			"message_id": f.MessageID, "since": nullTime(f.Since), "before": nullTime(f.Before), "limit": f.Limit})
	if err != nil {
		return nil, q.redact(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (archive.Delivery, error) {
		var d archive.Delivery
		var id int64
		var history, payload []byte
		if err := row.Scan(&id, &d.FinishedAt, &d.Namespace, &d.EventName, &d.Endpoint, &d.EventType, &d.MessageID, &d.EventUID,
			&d.Phase, &d.Attempts, &d.CreatedAt, &history, &payload, &d.NextAttemptTime); err != nil {
			return d, err
		}
		d.UID = d.EventUID + "/" + d.Endpoint
		d.Name = hooklinev1.DeliveryName(d.EventName, d.Endpoint)
		d.Payload = payload
		if err := json.Unmarshal(history, &d.History); err != nil {
			return d, err
		}
		return d, nil
	})
	if err != nil {
		return nil, q.redact(err)
	}
	if f.Name != "" { // one delivery, by its name
		kept := out[:0]
		for _, d := range out {
			if d.Name == f.Name {
				kept = append(kept, d)
			}
		}
		out = kept
	}
	return out, nil
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// Retry starts a Failed or Exhausted delivery again, as the hookline.dev/retry
// annotation does for a WebhookDelivery: its attempts count anew, due now, with the
// same message id and body. It reports whether the delivery exists and whether it was
// started again (not when it is still live or succeeded).
func (q *Queue) Retry(ctx context.Context, namespace, name string) (found, retried bool, err error) {
	rows, err := q.pool.Query(ctx, `SELECT id, event_name, endpoint FROM hookline_queue_deliveries
		WHERE namespace = $1 AND starts_with($2, event_name || '-')`, namespace, name)
	if err != nil {
		return false, false, q.redact(err)
	}
	type candidate struct {
		id              int64
		event, endpoint string
	}
	candidates, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (candidate, error) {
		var c candidate
		return c, row.Scan(&c.id, &c.event, &c.endpoint)
	})
	if err != nil {
		return false, false, q.redact(err)
	}
	for _, c := range candidates {
		if hooklinev1.DeliveryName(c.event, c.endpoint) != name {
			continue
		}
		tag, err := q.pool.Exec(ctx, `WITH started AS (
				UPDATE hookline_queue_deliveries SET state = 'Pending', attempts = 0, due_at = now(), finished_at = NULL, reason = ''
				WHERE id = $1 AND state IN ('Failed', 'Exhausted') RETURNING id)
			SELECT pg_notify($2, '') FROM started`, c.id, wakeChannel)
		if err != nil {
			return true, false, q.redact(err)
		}
		return true, tag.RowsAffected() == 1, nil
	}
	return false, false, nil
}
