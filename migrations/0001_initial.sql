-- The platform's state. Bytes (dataset content, checkpoint files) live in object storage;
-- Postgres holds what they are, where they are, and everything about runs.

-- API tokens. Only a sha256 of the secret is stored; the secret is shown once, at creation.
CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    token_hash    bytea NOT NULL UNIQUE,
    scope         text NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- A dataset moves created -> uploaded -> ingesting -> ready | failed. Raw uploads are kept under
-- `raw_key`; ingestion writes the trainer's canonical form under `canonical_key`.
CREATE TABLE datasets (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('labeled', 'unlabeled')),
    format          text NOT NULL,
    status          text NOT NULL DEFAULT 'created'
                    CHECK (status IN ('created', 'uploaded', 'ingesting', 'ready', 'failed')),
    failure_reason  text,
    -- Uploaded parts (e.g. IDX images and labels): [{part, key, size_bytes, sha256}].
    parts           jsonb NOT NULL DEFAULT '[]',
    canonical_key   text,
    canonical_sha256 text,
    stats           jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- A named group of runs.
CREATE TABLE experiments (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    description  text NOT NULL DEFAULT '',
    tags         text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Schedulers seen by the platform.
CREATE TABLE workers (
    id                 uuid PRIMARY KEY,
    hostname           text NOT NULL,
    slots              integer NOT NULL CHECK (slots >= 0),
    devices            jsonb NOT NULL DEFAULT '[]',
    started_at         timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at         timestamptz
);

-- A run: queued -> running -> succeeded | failed | cancelled, and running -> queued when an
-- attempt is lost while attempts remain. `attempt` is the fencing token: every scheduler write
-- names the attempt it belongs to and is refused when it is not the current one.
CREATE TABLE runs (
    id                uuid PRIMARY KEY,
    experiment_id     uuid REFERENCES experiments (id) ON DELETE RESTRICT,
    name              text NOT NULL DEFAULT '',
    algorithm         text NOT NULL,
    spec              jsonb NOT NULL,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    attempt           integer NOT NULL DEFAULT 0,
    idempotency_key   text UNIQUE,
    worker_id         uuid REFERENCES workers (id),
    lease_expires_at  timestamptz,
    cancel_requested  boolean NOT NULL DEFAULT false,
    phase             text,
    current_step      bigint NOT NULL DEFAULT 0,
    total_steps       bigint NOT NULL,
    images_per_sec    double precision,
    eta_secs          double precision,
    best_metrics      jsonb,
    final_metrics     jsonb,
    failure_reason    text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The queue is read in this order: highest priority first, then oldest.
CREATE INDEX runs_queue ON runs (priority DESC, created_at) WHERE status = 'queued';
CREATE INDEX runs_by_experiment ON runs (experiment_id, created_at DESC);
CREATE INDEX runs_by_created ON runs (created_at DESC, id DESC);

-- One row per attempt at a run.
CREATE TABLE attempts (
    run_id       uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    worker_id    uuid REFERENCES workers (id),
    started_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz,
    -- finished | failed | stopped | cancelled | lease_expired | killed | spawn_failed
    exit_reason  text,
    exit_code    integer,
    first_step   bigint NOT NULL DEFAULT 0,
    last_step    bigint NOT NULL DEFAULT 0,
    resumed_from uuid,
    PRIMARY KEY (run_id, attempt)
);

-- Scalar series. The primary key makes a re-sent point (after a resume) overwrite, never
-- duplicate, and serves the range scans of downsampling.
CREATE TABLE metrics (
    run_id   uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name     text NOT NULL,
    step     bigint NOT NULL,
    value    double precision NOT NULL,
    PRIMARY KEY (run_id, name, step)
);

-- Everything a run's event stream shows (status, progress, eval, checkpoint, log lines), in
-- order; `id` is the SSE event id, so a client resumes with Last-Event-ID.
CREATE TABLE run_events (
    id          bigserial PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_events_by_run ON run_events (run_id, id);

-- A checkpoint is recorded only after its files are stored and their sha256 verified.
CREATE TABLE checkpoints (
    id              uuid PRIMARY KEY,
    run_id          uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    step            bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('latest', 'best', 'final')),
    -- [{name, size_bytes, sha256}]; bytes under `storage_prefix/name`.
    files           jsonb NOT NULL,
    storage_prefix  text NOT NULL,
    size_bytes      bigint NOT NULL,
    metrics         jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX checkpoints_by_run ON checkpoints (run_id, step DESC);
