-- Retention drops the queue's history a whole day at a time, with no deletes on the hot
-- path: events and their deliveries are partitioned by the event's day (UTC). A unique
-- key of a partitioned table must include the day: a name is unique within its day by
-- the key, and across days by the check Publish makes. Rows queued before this
-- migration move over.
ALTER TABLE hookline_queue_deliveries RENAME TO hookline_queue_deliveries_v1;
ALTER TABLE hookline_queue_events RENAME TO hookline_queue_events_v1;
ALTER INDEX hookline_queue_due RENAME TO hookline_queue_due_v1;
ALTER INDEX hookline_queue_by_endpoint RENAME TO hookline_queue_by_endpoint_v1;

CREATE TABLE hookline_queue_events (
    namespace  text        NOT NULL,
    name       text        NOT NULL,
    uid        text        NOT NULL,
    event_type text        NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL,
    day        date        NOT NULL, -- created_at's, in UTC
    PRIMARY KEY (namespace, name, day)
) PARTITION BY RANGE (day);

-- A delivery lives in its event's day, so that the two are dropped together.
CREATE TABLE hookline_queue_deliveries (
    id               bigserial   NOT NULL,
    namespace        text        NOT NULL,
    event_name       text        NOT NULL,
    day              date        NOT NULL, -- its event's
    endpoint         text        NOT NULL,
    message_id       text        NOT NULL,
    state            text        NOT NULL DEFAULT 'Pending',
    due_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_until      timestamptz,
    response_status  integer     NOT NULL DEFAULT 0,
    reason           text        NOT NULL DEFAULT '',
    history          jsonb       NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (id, day)
) PARTITION BY RANGE (day);

-- What a claim scans: unfinished rows by due time.
CREATE INDEX hookline_queue_due ON hookline_queue_deliveries (due_at, id) WHERE finished_at IS NULL;
-- What users read: an endpoint's history, newest first.
CREATE INDEX hookline_queue_by_endpoint ON hookline_queue_deliveries (namespace, endpoint, created_at DESC);
-- An event's deliveries, and a delivery by its name (retry, history show).
CREATE INDEX hookline_queue_by_event ON hookline_queue_deliveries (namespace, event_name);

DO $$
DECLARE
    d date;
BEGIN
    FOR d IN SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM hookline_queue_events_v1 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF hookline_queue_events FOR VALUES FROM (%L) TO (%L)',
            'hookline_queue_events_' || to_char(d, 'YYYYMMDD'), d, d + 1);
        EXECUTE format('CREATE TABLE %I PARTITION OF hookline_queue_deliveries FOR VALUES FROM (%L) TO (%L)',
            'hookline_queue_deliveries_' || to_char(d, 'YYYYMMDD'), d, d + 1);
    END LOOP;
END $$;

INSERT INTO hookline_queue_events (namespace, name, uid, event_type, payload, created_at, day)
    SELECT namespace, name, uid, event_type, payload, created_at, (created_at AT TIME ZONE 'UTC')::date FROM hookline_queue_events_v1;
INSERT INTO hookline_queue_deliveries (id, namespace, event_name, day, endpoint, message_id, state, due_at,
        attempts, lease_owner, lease_until, response_status, reason, history, created_at, finished_at)
    SELECT d.id, d.namespace, d.event_name, (e.created_at AT TIME ZONE 'UTC')::date, d.endpoint, d.message_id, d.state, d.due_at,
        d.attempts, d.lease_owner, d.lease_until, d.response_status, d.reason, d.history, d.created_at, d.finished_at
    FROM hookline_queue_deliveries_v1 d JOIN hookline_queue_events_v1 e ON e.namespace = d.namespace AND e.name = d.event_name;
SELECT setval(pg_get_serial_sequence('hookline_queue_deliveries', 'id'),
    coalesce((SELECT max(id) FROM hookline_queue_deliveries_v1), 0) + 1, false);

DROP TABLE hookline_queue_deliveries_v1;
DROP TABLE hookline_queue_events_v1;
