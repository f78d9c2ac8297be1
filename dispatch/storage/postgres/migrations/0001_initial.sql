-- The dispatch server's tables. Times are Unix seconds (microsecond precision), as in
-- the state file; each row keeps its full record (the state file's form) beside the
-- columns the queries filter and sort on.

CREATE SEQUENCE job_seq MINVALUE 0 START 0;

CREATE TABLE jobs (
    job_id          text PRIMARY KEY,
    seq             bigint NOT NULL UNIQUE,          -- creation order
    status          text NOT NULL,
    target_codec    text NOT NULL,
    codec_family    text NOT NULL,                   -- codecs.family(target_codec)
    priority        integer NOT NULL,
    job_size        double precision NOT NULL,
    created_at      double precision NOT NULL,
    retry_at        double precision,
    assigned_at     double precision,
    completed_at    double precision,
    assigned_engine text,
    record          jsonb NOT NULL,                  -- Job.to_record()
    events          bytea                            -- the history, encoded
);

-- Assignment: each (family, priority) bucket of pending jobs in creation order, and
-- every priority bucket for engines that take any codec.
-- They carry what assignment and queue positions read, so both are index-only scans.
CREATE INDEX jobs_pending_family ON jobs (codec_family, priority, seq)
    INCLUDE (job_id, target_codec, job_size, created_at, retry_at) WHERE status = 'pending';
CREATE INDEX jobs_pending_priority ON jobs (priority, seq)
    INCLUDE (job_id, target_codec, job_size, created_at, retry_at) WHERE status = 'pending';
-- Paging by status, the oldest pending job.
CREATE INDEX jobs_status_seq ON jobs (status, seq);
-- The jobs an engine holds.
CREATE INDEX jobs_held ON jobs (assigned_engine, seq)
    WHERE status IN ('assigned', 'processing');
-- Retention: finished jobs by when they finished.
CREATE INDEX jobs_finished ON jobs ((coalesce(completed_at, 0)), seq)
    WHERE status IN ('completed', 'failed', 'cancelled');
-- Queue positions: pending jobs in backoff, by codec family.
CREATE INDEX jobs_backoff ON jobs (codec_family, retry_at)
    WHERE status = 'pending' AND retry_at IS NOT NULL;
-- Throughput: completions by time.
CREATE INDEX jobs_completed_at ON jobs (completed_at) WHERE status = 'completed';

-- Job counts by status as deltas a trigger appends (no row is ever updated, so no two
-- transactions wait on a counter); the lease holder folds them together now and then.
CREATE TABLE job_counts (
    status        text NOT NULL,
    n             bigint NOT NULL,
    time_sum      double precision NOT NULL DEFAULT 0,  -- completed: completed_at - assigned_at
    time_n        bigint NOT NULL DEFAULT 0,
    codec_family  text,                                 -- pending jobs: by family and priority
    priority      integer
);
CREATE INDEX job_counts_status ON job_counts (status);

CREATE FUNCTION job_counts_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO job_counts (status, n, time_sum, time_n, codec_family, priority)
        VALUES (OLD.status, -1,
            CASE WHEN OLD.status = 'completed' AND OLD.completed_at IS NOT NULL
                      AND OLD.assigned_at IS NOT NULL
                 THEN -(OLD.completed_at - OLD.assigned_at) ELSE 0 END,
            CASE WHEN OLD.status = 'completed' AND OLD.completed_at IS NOT NULL
                      AND OLD.assigned_at IS NOT NULL THEN -1 ELSE 0 END,
            CASE WHEN OLD.status = 'pending' THEN OLD.codec_family END,
            CASE WHEN OLD.status = 'pending' THEN OLD.priority END);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO job_counts (status, n, time_sum, time_n, codec_family, priority)
        VALUES (NEW.status, 1,
            CASE WHEN NEW.status = 'completed' AND NEW.completed_at IS NOT NULL
                      AND NEW.assigned_at IS NOT NULL
                 THEN NEW.completed_at - NEW.assigned_at ELSE 0 END,
            CASE WHEN NEW.status = 'completed' AND NEW.completed_at IS NOT NULL
                      AND NEW.assigned_at IS NOT NULL THEN 1 ELSE 0 END,
            CASE WHEN NEW.status = 'pending' THEN NEW.codec_family END,
            CASE WHEN NEW.status = 'pending' THEN NEW.priority END);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_counted AFTER INSERT OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION job_counts_delta();
CREATE TRIGGER jobs_recounted AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.completed_at IS DISTINCT FROM NEW.completed_at
          OR OLD.assigned_at IS DISTINCT FROM NEW.assigned_at
          OR OLD.codec_family IS DISTINCT FROM NEW.codec_family
          OR OLD.priority IS DISTINCT FROM NEW.priority)
    EXECUTE FUNCTION job_counts_delta();

CREATE TABLE engines (
    engine_id  text PRIMARY KEY,
    ord        bigserial,                            -- registration order
    record     jsonb NOT NULL                        -- Engine.to_record()
);

CREATE TABLE idempotency (
    key     text PRIMARY KEY,
    hash    text,                                    -- NULL while a unit holds the key
    job_id  text,
    at      double precision NOT NULL
);
CREATE INDEX idempotency_at ON idempotency (at, key);

CREATE TABLE deliveries (
    job_id         text PRIMARY KEY,
    state          text NOT NULL,
    next_at        double precision NOT NULL,
    claimed_by     text,                             -- the instance sending it
    claimed_until  double precision,                 -- until then
    record         jsonb NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'pending';

-- Which instance runs the background work, and which instances are alive.
CREATE TABLE leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    expires_at  timestamptz NOT NULL
);

CREATE TABLE instances (
    instance_id  text PRIMARY KEY,
    started_at   double precision NOT NULL,
    seen_at      timestamptz NOT NULL
);

-- Farm-wide values: the start of the restart grace (grace_start).
CREATE TABLE meta (
    key    text PRIMARY KEY,
    value  double precision NOT NULL
);
