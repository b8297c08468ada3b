-- Rollups of metric series, so that downsampling a long series reads a few thousand rows instead
-- of every point. For each run, name and block of steps they hold the smallest and the largest
-- value with the steps where they occur, and the number of points. Level 6 blocks cover 64
-- consecutive steps (`step >> 6`), level 12 blocks 4096 (`step >> 12`).
CREATE TABLE metric_rollups (
    run_id     uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name       text NOT NULL,
    level      smallint NOT NULL CHECK (level IN (6, 12)),
    block      bigint NOT NULL,
    min_step   bigint NOT NULL,
    min_value  double precision NOT NULL,
    max_step   bigint NOT NULL,
    max_value  double precision NOT NULL,
    points     bigint NOT NULL,
    PRIMARY KEY (run_id, name, level, block)
);

-- Recomputes every block a statement touched: level 6 blocks from the points themselves (at most
-- 64 rows each), then level 12 blocks from their level 6 blocks. Recomputing rather than merging
-- keeps the rollups right when a re-sent point (after a resume) overwrites an old extreme, and
-- makes the result independent of the order in which an upsert's insert and update triggers run.
CREATE FUNCTION metric_rollups_refresh() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_rollups AS r
        (run_id, name, level, block, min_step, min_value, max_step, max_value, points)
    SELECT run_id, name, 6, block, lo[2]::bigint, lo[1], hi[2]::bigint, hi[1], points
    FROM (
        SELECT t.run_id, t.name, t.block,
               min(ARRAY[m.value, m.step::double precision]) AS lo,
               max(ARRAY[m.value, m.step::double precision]) AS hi,
               count(*) AS points
        FROM (SELECT DISTINCT run_id, name, step >> 6 AS block FROM changed_points) t
        JOIN metrics m ON m.run_id = t.run_id AND m.name = t.name
            AND m.step >= t.block << 6 AND m.step < (t.block + 1) << 6
        GROUP BY 1, 2, 3
    ) fine
    ON CONFLICT (run_id, name, level, block) DO UPDATE SET
        min_step = EXCLUDED.min_step, min_value = EXCLUDED.min_value,
        max_step = EXCLUDED.max_step, max_value = EXCLUDED.max_value,
        points = EXCLUDED.points;

    INSERT INTO metric_rollups AS r
        (run_id, name, level, block, min_step, min_value, max_step, max_value, points)
    SELECT run_id, name, 12, block, lo[2]::bigint, lo[1], hi[2]::bigint, hi[1], points
    FROM (
        SELECT t.run_id, t.name, t.block,
               min(ARRAY[f.min_value, f.min_step::double precision]) AS lo,
               max(ARRAY[f.max_value, f.max_step::double precision]) AS hi,
               sum(f.points)::bigint AS points
        FROM (SELECT DISTINCT run_id, name, step >> 12 AS block FROM changed_points) t
        JOIN metric_rollups f ON f.run_id = t.run_id AND f.name = t.name AND f.level = 6
            AND f.block >= t.block << 6 AND f.block < (t.block + 1) << 6
        GROUP BY 1, 2, 3
    ) coarse
    ON CONFLICT (run_id, name, level, block) DO UPDATE SET
        min_step = EXCLUDED.min_step, min_value = EXCLUDED.min_value,
        max_step = EXCLUDED.max_step, max_value = EXCLUDED.max_value,
        points = EXCLUDED.points;
    RETURN NULL;
END $$;

-- Points are only ever inserted or overwritten; they disappear only with their run, whose
-- rollups go with it (ON DELETE CASCADE).
CREATE TRIGGER metric_rollups_insert AFTER INSERT ON metrics
    REFERENCING NEW TABLE AS changed_points
    FOR EACH STATEMENT EXECUTE FUNCTION metric_rollups_refresh();
CREATE TRIGGER metric_rollups_update AFTER UPDATE ON metrics
    REFERENCING NEW TABLE AS changed_points
    FOR EACH STATEMENT EXECUTE FUNCTION metric_rollups_refresh();
