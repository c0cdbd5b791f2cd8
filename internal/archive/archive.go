// Package archive keeps finished deliveries in PostgreSQL, beyond what etcd keeps:
// embedded migrations, tables partitioned by day, idempotent batched writes and
// retention by dropping whole partitions.
package archive

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hookline/hookline/internal/pgbatch"
	"github.com/hookline/hookline/internal/pgdays"
	"github.com/hookline/hookline/internal/pgmigrate"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Delivery is one finished delivery as archived.
type Delivery struct {
	UID             string    `json:"uid"`
	FinishedAt      time.Time `json:"finishedAt"`
	Namespace       string    `json:"namespace"`
	Name            string    `json:"name"`
	Endpoint        string    `json:"endpoint"`
	EventType       string    `json:"eventType"`
	MessageID       string    `json:"messageId"`
	EventUID        string    `json:"eventUid,omitempty"` // empty for a direct delivery
	EventName       string    `json:"eventName,omitempty"`
	Phase           string    `json:"phase"`
	Attempts        int32     `json:"attempts"`
	SignatureScheme string    `json:"signatureScheme,omitempty"`
	CreatedAt       time.Time `json:"createdAt"`
	// NextAttemptTime is when a live delivery (the PostgreSQL store's) is due.
	NextAttemptTime *time.Time      `json:"nextAttemptTime,omitempty"`
	History         []Attempt       `json:"history"`
	Payload         json.RawMessage `json:"payload,omitempty"` // the event's, or the direct delivery's own
}

// Attempt is one attempt of a delivery.
type Attempt struct {
	Time       time.Time `json:"time"`
	DurationMs int64     `json:"durationMs,omitempty"`
	StatusCode int32     `json:"statusCode,omitempty"`
	Error      string    `json:"error,omitempty"`
	Response   string    `json:"response,omitempty"`
}

// Payload is an event's payload, stored once.
type Payload struct {
	EventUID  string
	CreatedAt time.Time
	Namespace string
	EventName string
	Payload   json.RawMessage
}

// Store is an archive in PostgreSQL.
type Store struct {
	pool *pgxpool.Pool

	dsn        string
	mu         sync.Mutex
	migrated   bool
	partitions *pgdays.Partitions
}

// New returns a store for dsn without connecting: the database may be down when the
// manager starts. The migrations are applied before the first read or write.
func New(dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("archive: the DSN does not parse (%s)", redact(err, dsn))
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", redact(err, dsn))
	}
	return &Store{pool: pool, dsn: dsn, partitions: pgdays.New(pool)}, nil
}

// Open returns a store with its migrations applied.
func Open(ctx context.Context, dsn string) (*Store, error) {
	s, err := New(dsn)
	if err != nil {
		return nil, err
	}
	if err := s.ready(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// ready applies the migrations once.
func (s *Store) ready(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.migrated {
		return nil
	}
	if err := s.migrate(ctx); err != nil {
		return fmt.Errorf("archive migrations: %w", redact(err, s.dsn))
	}
	s.migrated = true
	return nil
}

// Close closes the connections.
func (s *Store) Close() { s.pool.Close() }

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// migrate applies the embedded migrations (versions as named, without a prefix: the
// archive's came first).
func (s *Store) migrate(ctx context.Context) error {
	return pgmigrate.Apply(ctx, s.pool, migrations, "migrations/*.sql", "")
}

// Write stores deliveries and payloads in one transaction. A delivery already stored
// (same UID and completion) and a payload already stored are left as they are, so a
// write repeated after a crash duplicates nothing. It returns how many deliveries were
// new.
func (s *Store) Write(ctx context.Context, deliveries []Delivery, payloads []Payload) (int, error) {
	if len(deliveries) == 0 && len(payloads) == 0 {
		return 0, nil
	}
	if err := s.ready(ctx); err != nil {
		return 0, err
	}
	for _, d := range deliveries {
		if err := s.partitions.Ensure(ctx, deliveriesTable, d.FinishedAt); err != nil {
			return 0, redact(err, s.dsn)
		}
	}
	for _, p := range payloads {
		if err := s.partitions.Ensure(ctx, payloadsTable, p.CreatedAt); err != nil {
			return 0, redact(err, s.dsn)
		}
	}
	added := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		added = 0
		b := &pgx.Batch{}
		for _, p := range payloads {
			b.Queue(`INSERT INTO hookline_payloads (event_uid, created_at, namespace, event_name, payload)
				VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, p.EventUID, p.CreatedAt, p.Namespace, p.EventName, string(p.Payload))
		}
		for _, d := range deliveries {
			history, err := json.Marshal(d.History)
			if err != nil {
				return err
			}
			var payload, eventUID, eventName any
			if len(d.Payload) > 0 {
				payload = string(d.Payload)
			}
			if d.EventUID != "" {
				eventUID, eventName = d.EventUID, d.EventName
			}
			b.Queue(`INSERT INTO hookline_deliveries (uid, finished_at, namespace, name, endpoint, event_type, message_id,
				event_uid, event_name, phase, attempts, signature_scheme, created_at, history, payload)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT DO NOTHING`,
				d.UID, d.FinishedAt, d.Namespace, d.Name, d.Endpoint, d.EventType, d.MessageID,
				eventUID, eventName, d.Phase, d.Attempts, d.SignatureScheme, d.CreatedAt, string(history), payload)
		}
		affected, err := pgbatch.Exec(ctx, tx, b)
		if err != nil {
			return err
		}
		for _, n := range affected[len(payloads):] {
			added += int(n) // 0: archived before (a rewrite after an outage)
		}
		return nil
	})
	if err != nil {
		return 0, redact(err, s.dsn)
	}
	return added, nil
}

// The archive's tables, partitioned by day.
const (
	deliveriesTable = "hookline_deliveries"
	payloadsTable   = "hookline_payloads"
)

// DropBefore drops the daily partitions that end at or before cutoff and returns
// their names.
func (s *Store) DropBefore(ctx context.Context, cutoff time.Time) ([]string, error) {
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	days, err := s.partitions.Days(ctx, deliveriesTable, payloadsTable)
	if err != nil {
		return nil, redact(err, s.dsn)
	}
	var dropped []string
	for _, day := range days {
		if !pgdays.Ended(day, cutoff) {
			continue
		}
		names, err := s.partitions.Drop(ctx, day, nil, deliveriesTable, payloadsTable)
		dropped = append(dropped, names...)
		if err != nil {
			return dropped, redact(err, s.dsn)
		}
	}
	return dropped, nil
}

// redact keeps the DSN (and its password) out of an error message.
func redact(err error, dsn string) error { return pgmigrate.Redact(err, dsn) }
