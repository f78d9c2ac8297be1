-- Chunked encoding (issue 23): a chunked job is a parent whose work is done by tasks,
-- jobs of their own. The queries tell them apart by two columns: ``kind`` ('job', a
-- chunked job's 'parent', or a task's kind: 'plan', 'chunk', 'audio', 'stitch') and
-- ``parent_id`` (a task's parent).

ALTER TABLE jobs ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'job';
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS parent_id text;

-- A parent's tasks.
CREATE INDEX IF NOT EXISTS jobs_children ON jobs (parent_id, seq) WHERE parent_id IS NOT NULL;
-- Assignment: the pending buckets of each kind, so an engine that runs no tasks reads
-- whole jobs only, however many tasks wait (and no engine ever reads a parent).
CREATE INDEX IF NOT EXISTS jobs_pending_kind_family ON jobs (kind, codec_family, priority, seq)
    INCLUDE (job_id, target_codec, job_size, created_at, retry_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS jobs_pending_kind_priority ON jobs (kind, priority, seq)
    INCLUDE (job_id, target_codec, job_size, created_at, retry_at) WHERE status = 'pending';

-- Counts by status are of jobs ('job' and 'parent'); tasks are counted apart ('task'),
-- for the concurrency limit only (a parent is never held, a task is).
ALTER TABLE job_counts ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'job';

CREATE OR REPLACE FUNCTION job_counts_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO job_counts (status, n, time_sum, time_n, codec_family, priority, kind)
        VALUES (OLD.status, -1,
            CASE WHEN OLD.status = 'completed' AND OLD.completed_at IS NOT NULL
                      AND OLD.assigned_at IS NOT NULL
                 THEN -(OLD.completed_at - OLD.assigned_at) ELSE 0 END,
            CASE WHEN OLD.status = 'completed' AND OLD.completed_at IS NOT NULL
                      AND OLD.assigned_at IS NOT NULL THEN -1 ELSE 0 END,
            CASE WHEN OLD.status = 'pending' AND OLD.parent_id IS NULL
                 THEN OLD.codec_family END,
            CASE WHEN OLD.status = 'pending' AND OLD.parent_id IS NULL THEN OLD.priority END,
            CASE WHEN OLD.parent_id IS NOT NULL THEN 'task' ELSE OLD.kind END);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO job_counts (status, n, time_sum, time_n, codec_family, priority, kind)
        VALUES (NEW.status, 1,
            CASE WHEN NEW.status = 'completed' AND NEW.completed_at IS NOT NULL
                      AND NEW.assigned_at IS NOT NULL
                 THEN NEW.completed_at - NEW.assigned_at ELSE 0 END,
            CASE WHEN NEW.status = 'completed' AND NEW.completed_at IS NOT NULL
                      AND NEW.assigned_at IS NOT NULL THEN 1 ELSE 0 END,
            CASE WHEN NEW.status = 'pending' AND NEW.parent_id IS NULL
                 THEN NEW.codec_family END,
            CASE WHEN NEW.status = 'pending' AND NEW.parent_id IS NULL THEN NEW.priority END,
            CASE WHEN NEW.parent_id IS NOT NULL THEN 'task' ELSE NEW.kind END);
    END IF;
    RETURN NULL;
END $$;
