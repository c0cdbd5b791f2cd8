-- The replicas delivering from the queue, by heartbeat: each divides an endpoint's
-- limits (maxInFlight, perSecond) by how many are live, so that the limits hold
-- across replicas.
CREATE TABLE hookline_queue_replicas (
    owner   text        PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
