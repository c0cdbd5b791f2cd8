-- The delivery queue: an event's payload once, one row per (event, endpoint). Finished
-- rows stay as the history; workers claim due rows with FOR UPDATE SKIP LOCKED and a
-- lease, so a claim whose holder died is claimed again when its lease ends.
CREATE TABLE hookline_queue_events (
    namespace  text        NOT NULL,
    name       text        NOT NULL,
    uid        text        NOT NULL,
    event_type text        NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);

CREATE TABLE hookline_queue_deliveries (
    id              bigserial   PRIMARY KEY,
    namespace       text        NOT NULL,
    event_name      text        NOT NULL,
    endpoint        text        NOT NULL,
    message_id      text        NOT NULL,
    state           text        NOT NULL DEFAULT 'Pending',
    due_at          timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    lease_owner     text,
    lease_until     timestamptz,
    response_status integer     NOT NULL DEFAULT 0,
    reason          text        NOT NULL DEFAULT '',
    history         jsonb       NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (namespace, event_name, endpoint),
    FOREIGN KEY (namespace, event_name) REFERENCES hookline_queue_events (namespace, name) ON DELETE CASCADE
);

-- What a claim scans: unfinished rows by due time.
CREATE INDEX hookline_queue_due ON hookline_queue_deliveries (due_at, id) WHERE finished_at IS NULL;
-- What users read: an endpoint's history, newest first.
CREATE INDEX hookline_queue_by_endpoint ON hookline_queue_deliveries (namespace, endpoint, created_at DESC);
