-- Rollups are now merged from each inserted batch instead of recomputed from the stored points.
--
-- The first version recomputed every block an insert touched by joining the statement's new
-- rows with `metrics`; the planner has no statistics for transition tables, so that join could
-- scan the whole series and ingestion slowed down as a run grew. An insert only adds points, so
-- the new extremes of a block are the extremes of (old extremes, new points) and its count
-- grows by the number of new points: both come from the batch alone.
--
-- An update (a point re-sent after a resume with another value) can replace an old extreme, so
-- updates still recompute the extremes of their blocks from the stored points. They never touch
-- `points`: an update does not change how many points a block holds. Keeping each trigger to
-- its own columns makes the result independent of the order in which the statement triggers of
-- an `INSERT ... ON CONFLICT DO UPDATE` fire: extremes are recomputed from the table or merged
-- (both idempotent), and counts are only ever added by the insert trigger, once per new point.
--
-- Ties keep the rule of the recomputation: the smallest value at its earliest step, the largest
-- value at its latest step, which is what comparing (value, step) pairs gives.

CREATE FUNCTION metric_rollups_merge() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO metric_rollups AS r
        (run_id, name, level, block, min_step, min_value, max_step, max_value, points)
    SELECT run_id, name, level, block, lo[2]::bigint, lo[1], hi[2]::bigint, hi[1], points
    FROM (
        SELECT run_id, name, 6::smallint AS level, step >> 6 AS block,
               min(ARRAY[value, step::double precision]) AS lo,
               max(ARRAY[value, step::double precision]) AS hi,
               count(*) AS points
        FROM new_points GROUP BY run_id, name, step >> 6
        UNION ALL
        SELECT run_id, name, 12::smallint, step >> 12,
               min(ARRAY[value, step::double precision]),
               max(ARRAY[value, step::double precision]),
               count(*)
        FROM new_points GROUP BY run_id, name, step >> 12
    ) batch
    ON CONFLICT (run_id, name, level, block) DO UPDATE SET
        min_step = CASE WHEN (EXCLUDED.min_value, EXCLUDED.min_step) < (r.min_value, r.min_step)
                        THEN EXCLUDED.min_step ELSE r.min_step END,
        min_value = LEAST(EXCLUDED.min_value, r.min_value),
        max_step = CASE WHEN (EXCLUDED.max_value, EXCLUDED.max_step) > (r.max_value, r.max_step)
                        THEN EXCLUDED.max_step ELSE r.max_step END,
        max_value = GREATEST(EXCLUDED.max_value, r.max_value),
        points = r.points + EXCLUDED.points;
    RETURN NULL;
END $$;

-- Recomputes the extremes (not the counts) of the blocks an update touched: level 6 from the
-- points (at most 64 per block), then level 12 from the level 6 blocks.
CREATE OR REPLACE FUNCTION metric_rollups_refresh() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE metric_rollups r SET
        min_step = fine.lo[2]::bigint, min_value = fine.lo[1],
        max_step = fine.hi[2]::bigint, max_value = fine.hi[1]
    FROM (
        SELECT t.run_id, t.name, t.block,
               min(ARRAY[m.value, m.step::double precision]) AS lo,
               max(ARRAY[m.value, m.step::double precision]) AS hi
        FROM (SELECT DISTINCT run_id, name, step >> 6 AS block FROM changed_points) t
        JOIN metrics m ON m.run_id = t.run_id AND m.name = t.name
            AND m.step >= t.block << 6 AND m.step < (t.block + 1) << 6
        GROUP BY 1, 2, 3
    ) fine
    WHERE r.run_id = fine.run_id AND r.name = fine.name AND r.level = 6 AND r.block = fine.block;

    UPDATE metric_rollups r SET
        min_step = coarse.lo[2]::bigint, min_value = coarse.lo[1],
        max_step = coarse.hi[2]::bigint, max_value = coarse.hi[1]
    FROM (
        SELECT t.run_id, t.name, t.block,
               min(ARRAY[f.min_value, f.min_step::double precision]) AS lo,
               max(ARRAY[f.max_value, f.max_step::double precision]) AS hi
        FROM (SELECT DISTINCT run_id, name, step >> 12 AS block FROM changed_points) t
        JOIN metric_rollups f ON f.run_id = t.run_id AND f.name = t.name AND f.level = 6
            AND f.block >= t.block << 6 AND f.block < (t.block + 1) << 6
        GROUP BY 1, 2, 3
    ) coarse
    WHERE r.run_id = coarse.run_id AND r.name = coarse.name AND r.level = 12
        AND r.block = coarse.block;
    RETURN NULL;
END $$;

DROP TRIGGER metric_rollups_insert ON metrics;
CREATE TRIGGER metric_rollups_insert AFTER INSERT ON metrics
    REFERENCING NEW TABLE AS new_points
    FOR EACH STATEMENT EXECUTE FUNCTION metric_rollups_merge();
