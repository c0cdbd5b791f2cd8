package archive

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"
)

// Filter selects archived deliveries of one namespace.
type Filter struct {
	Namespace string
	Name      string // one delivery: each of its archived completions
	Endpoint  string
	EventType string
	Phase     string
	MessageID string
	Since     time.Time
	// Before continues a listing: deliveries finished before it.
	Before time.Time
	Limit  int
}

// List returns the deliveries matching f, newest first.
func (s *Store) List(ctx context.Context, f Filter) ([]Delivery, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	sql := `SELECT d.uid::text, d.finished_at, d.namespace, d.name, d.endpoint, d.event_type, d.message_id,
		coalesce(d.event_uid::text, ''), coalesce(d.event_name, ''), d.phase, d.attempts, d.signature_scheme, d.created_at,
		d.history, coalesce(d.payload, p.payload)
		FROM hookline_deliveries d LEFT JOIN hookline_payloads p ON p.event_uid = d.event_uid
		WHERE d.namespace = @namespace
		AND (@name = '' OR d.name = @name)
		AND (@endpoint = '' OR d.endpoint = @endpoint)
		AND (@event_type = '' OR d.event_type = @event_type)
		AND (@phase = '' OR d.phase = @phase)
		AND (@message_id = '' OR d.message_id = @message_id)
		AND (@since::timestamptz IS NULL OR d.finished_at >= @since)
		AND (@before::timestamptz IS NULL OR d.finished_at < @before)
		ORDER BY d.finished_at DESC, d.uid LIMIT @limit`
	args := pgx.NamedArgs{"namespace": f.Namespace, "name": f.Name, "endpoint": f.Endpoint, "event_type": f.EventType, "phase": f.Phase,
		"message_id": f.MessageID, "since": nullTime(f.Since), "before": nullTime(f.Before), "limit": f.Limit}
	rows, err := s.pool.Query(ctx, sql, args)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Delivery, error) {
		var d Delivery
		var history, payload []byte
		err := row.Scan(&d.UID, &d.FinishedAt, &d.Namespace, &d.Name, &d.Endpoint, &d.EventType, &d.MessageID,
			&d.EventUID, &d.EventName, &d.Phase, &d.Attempts, &d.SignatureScheme, &d.CreatedAt, &history, &payload)
		if err != nil {
			return d, err
		}
		d.Payload = payload
		return d, json.Unmarshal(history, &d.History)
	})
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// Size is what the archive holds: its delivery rows, and the bytes of both tables with
// their indexes and TOAST, as PostgreSQL counts them.
func (s *Store) Size(ctx context.Context) (rows, bytes int64, err error) {
	if err := s.ready(ctx); err != nil {
		return 0, 0, err
	}
	err = s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM hookline_deliveries),
		coalesce((SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
			WHERE p.relname IN ('hookline_deliveries', 'hookline_payloads')), 0)::bigint`).Scan(&rows, &bytes)
	return rows, bytes, err
}
