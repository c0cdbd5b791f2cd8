-- Finished deliveries, one row per delivery and completion, partitioned by day so
-- that retention drops whole partitions.
CREATE TABLE hookline_deliveries (
	uid              uuid        NOT NULL,
	finished_at      timestamptz NOT NULL,
	namespace        text        NOT NULL,
	name             text        NOT NULL,
	endpoint         text        NOT NULL,
	event_type       text        NOT NULL,
	message_id       text        NOT NULL,
	event_uid        uuid,                 -- the event fanned out from; NULL for a direct delivery
	event_name       text,
	phase            text        NOT NULL, -- Succeeded, Failed, Exhausted
	attempts         integer     NOT NULL,
	signature_scheme text        NOT NULL, -- never a secret
	created_at       timestamptz NOT NULL,
	history          jsonb       NOT NULL, -- [{time, durationMs, statusCode, error, response}]
	payload          jsonb,                -- direct deliveries only; fanned-out ones share hookline_payloads
	PRIMARY KEY (uid, finished_at)
) PARTITION BY RANGE (finished_at);

CREATE INDEX hookline_deliveries_namespace ON hookline_deliveries (namespace, finished_at DESC);
CREATE INDEX hookline_deliveries_endpoint ON hookline_deliveries (namespace, endpoint, finished_at DESC);
CREATE INDEX hookline_deliveries_message ON hookline_deliveries (namespace, message_id);

-- Each event's payload once, however many endpoints it went to.
CREATE TABLE hookline_payloads (
	event_uid  uuid        NOT NULL,
	created_at timestamptz NOT NULL,
	namespace  text        NOT NULL,
	event_name text        NOT NULL,
	payload    jsonb       NOT NULL,
	PRIMARY KEY (event_uid, created_at)
) PARTITION BY RANGE (created_at);
