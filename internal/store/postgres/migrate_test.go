package postgres

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookline/hookline/internal/pgmigrate"
	"github.com/hookline/hookline/internal/testenv"
)

// A queue made before the history was partitioned by day keeps what it held: its
// events, deliveries (live ones claimable with the same message) and history move over.
func TestRowsQueuedBeforeThePartitionsMoveOver(t *testing.T) {
	t.Parallel()
	testenv.Needs(t)
	ctx := context.Background()
	dsn, err := pg.Database(ctx, strings.ToLower(t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := pgmigrate.Apply(ctx, pool, migrations, "migrations/000[12]_*.sql", "queue_"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO hookline_queue_events (namespace, name, uid, event_type, payload, created_at) VALUES
			('ns', 'old', 'u1', 'order.created', '{"a":1}', now() - interval '3 days'),
			('ns', 'new', 'u2', 'order.created', '{"a":2}', now());
		INSERT INTO hookline_queue_deliveries (namespace, event_name, endpoint, message_id, state, finished_at, history) VALUES
			('ns', 'old', 'acme', 'msg_old', 'Succeeded', now(), '[{"time": "2026-12-01T00:00:00Z", "statusCode": 200}]'),
			('ns', 'new', 'acme', 'msg_new', 'Pending', NULL, '[]')`); err != nil {
		t.Fatal(err)
	}
	q, err := Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ds, err := q.Deliveries(ctx, "ns", 10)
	if err != nil || len(ds) != 2 {
		t.Fatalf("%d deliveries after the migration (%v), want 2", len(ds), err)
	}
	for _, d := range ds {
		if d.EventName == "old" && (d.State != StateSucceeded || len(d.History) != 1 || d.History[0].StatusCode != 200) {
			t.Fatalf("the finished delivery moved as %+v", d)
		}
	}
	claims, err := q.Claim(ctx, "w", 10, time.Minute)
	if err != nil || len(claims) != 1 || claims[0].MessageID != "msg_new" || string(claims[0].Payload) != `{"a":2}` {
		t.Fatalf("claimed %+v (%v), want the live delivery with its message", claims, err)
	}
	if n, err := q.Publish(ctx, []Event{event("ns", "old", "acme")}); err != nil || n != 0 {
		t.Fatalf("republishing a moved name queued %d (%v), want 0", n, err)
	}
	if n, err := q.Publish(ctx, []Event{event("ns", "third", "acme")}); err != nil || n != 1 {
		t.Fatalf("publishing after the migration queued %d (%v), want 1", n, err)
	}
	if dropped, err := q.DropBefore(ctx, time.Now().Add(-24*time.Hour)); err != nil || len(dropped) != 2 {
		t.Fatalf("retention after the migration dropped %v (%v), want the old day's two partitions", dropped, err)
	}
}
