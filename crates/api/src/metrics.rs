//! Run metric series: the names a run reported, and series downsampled on the server.
//!
//! Downsampling splits the requested step range into `points / 2` buckets of equal width and
//! returns, for each bucket, the point with the smallest and the point with the largest value, so
//! spikes survive at any zoom. The work happens in SQL. Wide buckets read the precomputed
//! `metric_rollups` (blocks of 64 or 4096 steps holding their extremes, kept by a trigger; see
//! `migrations/0002_metric_rollups.sql`) instead of every point, and only the partial blocks at
//! the two ends of the range are read point by point. A series of a million points downsampled to
//! a thousand thus reads about 16 000 block rows.

use axum::Json;
use axum::extract::{Path, Query, State};
use futures::future::try_join_all;
use mpl_protocol::FieldError;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::runs::{ensure_run_exists, parse_param};

/// Points returned per series when `points` is not given.
const DEFAULT_POINTS: i64 = 1_000;
/// Most points one series may ask for.
const MAX_POINTS: i64 = 20_000;
/// Most series one request may ask for.
const MAX_SERIES: usize = 50;
/// Rollup levels: blocks of `1 << level` steps, coarsest first.
const ROLLUP_LEVELS: [u32; 2] = [12, 6];

/// The metric routes, to be nested under `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_metrics))
}

/// What `GET /v1/runs/{id}/metrics` returns.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// Comma-separated series names; without it, the names the run has.
    pub names: Option<String>,
    /// About how many points per series (2 to 20000, default 1000).
    pub points: Option<String>,
    /// First step of the range (inclusive).
    pub from_step: Option<String>,
    /// Last step of the range (inclusive).
    pub to_step: Option<String>,
}

/// Either the series names of a run or the series asked for.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MetricsResponse {
    /// Without `names`: every series name, sorted.
    Names { names: Vec<String> },
    /// With `names`: the series, in the order asked.
    Series { series: Vec<Series> },
}

/// One downsampled series.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Series {
    pub name: String,
    /// `[step, value]` pairs in step order.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub points: Vec<(i64, f64)>,
    /// How many points the series holds in the requested range.
    pub total_points: i64,
}

/// Reads a run's metric names, or some of its series downsampled to about `points` points.
#[utoipa::path(get, path = "/runs/{id}/metrics", tag = "runs",
    params(("id" = Uuid, Path, description = "Run id"), SeriesQuery),
    responses(
        (status = 200, description = "Names, or series", body = MetricsResponse),
        (status = 404, description = "No such run"),
        (status = 422, description = "A parameter is invalid"),
    ))]
async fn get_metrics(
    State(state): State<AppState>,
    _caller: Caller,
    Path(run_id): Path<Uuid>,
    Query(query): Query<SeriesQuery>,
) -> ApiResult<Json<MetricsResponse>> {
    let request = SeriesRequest::parse(query)?;
    ensure_run_exists(&state.db, run_id).await?;

    let Some(names) = request.names else {
        let names = series_names(&state.db, run_id).await?;
        return Ok(Json(MetricsResponse::Names { names }));
    };
    let range = request.range;
    let buckets = request.buckets;
    let series = try_join_all(
        names
            .into_iter()
            .map(|name| downsample(&state.db, run_id, name, range, buckets)),
    )
    .await?;
    Ok(Json(MetricsResponse::Series { series }))
}

/// A validated [`SeriesQuery`].
struct SeriesRequest {
    names: Option<Vec<String>>,
    buckets: i64,
    range: (i64, i64),
}

impl SeriesRequest {
    fn parse(query: SeriesQuery) -> ApiResult<SeriesRequest> {
        let points = parse_param::<i64>("points", query.points.as_deref(), |n| {
            (2..=MAX_POINTS).contains(n)
        })?
        .unwrap_or(DEFAULT_POINTS);
        let from = parse_param::<i64>("from_step", query.from_step.as_deref(), |_| true)?;
        let to = parse_param::<i64>("to_step", query.to_step.as_deref(), |_| true)?;
        let names = match query.names {
            None => None,
            Some(list) => Some(parse_names(&list)?),
        };
        Ok(SeriesRequest {
            names,
            buckets: points / 2,
            range: (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX)),
        })
    }
}

fn parse_names(list: &str) -> ApiResult<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    if names.is_empty() || names.len() > MAX_SERIES {
        return Err(ApiError::Validation(vec![FieldError {
            field: "names".into(),
            message: format!("give 1 to {MAX_SERIES} comma-separated series names"),
        }]));
    }
    Ok(names)
}

/// Every series name of a run, sorted, found by skipping through the primary key index from one
/// name to the next rather than reading every point.
pub async fn series_names(db: &PgPool, run_id: Uuid) -> ApiResult<Vec<String>> {
    let names = sqlx::query_scalar::<_, String>(
        "WITH RECURSIVE names AS ( \
             (SELECT name FROM metrics WHERE run_id = $1 ORDER BY name LIMIT 1) \
             UNION ALL \
             SELECT (SELECT m.name FROM metrics m \
                     WHERE m.run_id = $1 AND m.name > names.name ORDER BY m.name LIMIT 1) \
             FROM names WHERE names.name IS NOT NULL) \
         SELECT name FROM names WHERE name IS NOT NULL",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    Ok(names)
}

/// Which rows one downsampling query reads: points one by one in two step ranges (the partial
/// blocks at the ends, or everything when buckets are narrow), and whole rollup blocks between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadPlan {
    /// First step of the range: bucket 0 starts here.
    lo: i64,
    /// Steps per bucket.
    width: i64,
    /// Points read one by one: `raw_head.0..=raw_head.1` and `raw_tail.0..=raw_tail.1`
    /// (an empty range has its start after its end).
    raw_head: (i64, i64),
    raw_tail: (i64, i64),
    /// Rollup level and the inclusive range of its blocks read whole.
    level: i16,
    blocks: (i64, i64),
}

impl ReadPlan {
    /// Plans the read of the points in `lo..=hi` into `buckets` buckets.
    fn new(lo: i64, hi: i64, buckets: i64) -> ReadPlan {
        let span = i128::from(hi) - i128::from(lo) + 1;
        let buckets = i128::from(buckets.max(1));
        let width = i64::try_from((span + buckets - 1) / buckets).unwrap_or(i64::MAX);
        let everything_raw = ReadPlan {
            lo,
            width,
            raw_head: (lo, hi),
            raw_tail: (1, 0),
            level: 6,
            blocks: (1, 0),
        };
        let Some(level) = ROLLUP_LEVELS.into_iter().find(|l| width >= 1 << l) else {
            return everything_raw;
        };
        let first_block = lo.div_euclid(1 << level) + i64::from(lo.rem_euclid(1 << level) != 0);
        let last_block = hi.saturating_add(1).div_euclid(1 << level) - 1;
        if first_block > last_block {
            return everything_raw;
        }
        ReadPlan {
            lo,
            width,
            raw_head: (lo, (first_block << level) - 1),
            raw_tail: ((last_block + 1) << level, hi),
            level: level as i16,
            blocks: (first_block, last_block),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Bounds {
    lo: Option<i64>,
    hi: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Point {
    step: i64,
    value: f64,
    total: i64,
}

/// One series over `range`, downsampled to `buckets` buckets of (min, max).
pub async fn downsample(
    db: &PgPool,
    run_id: Uuid,
    name: String,
    range: (i64, i64),
    buckets: i64,
) -> ApiResult<Series> {
    let bounds = sqlx::query_as::<_, Bounds>(
        "SELECT \
             (SELECT step FROM metrics WHERE run_id = $1 AND name = $2 AND step >= $3 \
              ORDER BY step LIMIT 1) AS lo, \
             (SELECT step FROM metrics WHERE run_id = $1 AND name = $2 AND step <= $4 \
              ORDER BY step DESC LIMIT 1) AS hi",
    )
    .bind(run_id)
    .bind(&name)
    .bind(range.0)
    .bind(range.1)
    .fetch_one(db)
    .await?;
    let (Some(lo), Some(hi)) = (bounds.lo, bounds.hi) else {
        return Ok(empty_series(name));
    };
    if lo > hi {
        return Ok(empty_series(name));
    }

    let plan = ReadPlan::new(lo, hi, buckets);
    let rows = sqlx::query_as::<_, Point>(DOWNSAMPLE_SQL)
        .bind(run_id)
        .bind(&name)
        .bind(plan.raw_head.0)
        .bind(plan.raw_head.1)
        .bind(plan.raw_tail.0)
        .bind(plan.raw_tail.1)
        .bind(plan.level)
        .bind(plan.blocks.0)
        .bind(plan.blocks.1)
        .bind(plan.lo)
        .bind(plan.width)
        .fetch_all(db)
        .await?;

    let total_points = rows.first().map_or(0, |p| p.total);
    let points = rows.into_iter().map(|p| (p.step, p.value)).collect();
    Ok(Series {
        name,
        points,
        total_points,
    })
}

fn empty_series(name: String) -> Series {
    Series {
        name,
        points: Vec::new(),
        total_points: 0,
    }
}

/// Candidates are raw points (each its own minimum and maximum) and whole rollup blocks; each
/// bucket keeps its smallest minimum and its largest maximum, placed at their own steps. `min` and
/// `max` over `ARRAY[value, step]` pick the extreme value together with its step.
const DOWNSAMPLE_SQL: &str = "\
WITH candidates AS ( \
    SELECT step AS min_step, value AS min_value, step AS max_step, value AS max_value, \
           1::bigint AS points \
    FROM metrics WHERE run_id = $1 AND name = $2 AND step BETWEEN $3 AND $4 \
    UNION ALL \
    SELECT step, value, step, value, 1 \
    FROM metrics WHERE run_id = $1 AND name = $2 AND step BETWEEN $5 AND $6 \
    UNION ALL \
    SELECT min_step, min_value, max_step, max_value, points \
    FROM metric_rollups \
    WHERE run_id = $1 AND name = $2 AND level = $7 AND block BETWEEN $8 AND $9 \
), extremes AS ( \
    SELECT min(ARRAY[min_value, min_step::double precision]) AS point \
    FROM candidates GROUP BY (min_step - $10) / $11 \
    UNION \
    SELECT max(ARRAY[max_value, max_step::double precision]) \
    FROM candidates GROUP BY (max_step - $10) / $11 \
) \
SELECT point[2]::bigint AS step, point[1] AS value, \
       (SELECT sum(points) FROM candidates)::bigint AS total \
FROM extremes ORDER BY 1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_buckets_read_every_point() {
        let plan = ReadPlan::new(0, 9_999, 500);
        assert_eq!(plan.width, 20);
        assert_eq!(plan.raw_head, (0, 9_999));
        assert!(plan.blocks.0 > plan.blocks.1, "no blocks: {plan:?}");
    }

    #[test]
    fn wide_buckets_read_blocks_and_the_partial_ends() {
        let plan = ReadPlan::new(100, 1_000_000, 500);
        assert_eq!(plan.level, 6);
        // Blocks of 64 steps: the first whole one starts at 128, the last ends at 999_999.
        assert_eq!(plan.blocks, (2, 15_624));
        assert_eq!(plan.raw_head, (100, 127));
        assert_eq!(plan.raw_tail, (1_000_000, 1_000_000));
    }

    #[test]
    fn very_wide_buckets_use_the_coarse_level() {
        let plan = ReadPlan::new(0, 99_999_999, 500);
        assert_eq!(plan.level, 12);
        assert_eq!(plan.raw_head, (0, -1));
        assert_eq!(plan.blocks, (0, 100_000_000 / 4_096 - 1));
        assert_eq!(plan.raw_tail.0, (100_000_000 / 4_096) * 4_096);
    }

    #[test]
    fn a_range_inside_one_block_is_read_point_by_point() {
        // Buckets of 111 steps would use 64-step blocks, but no whole block lies in 70..=180.
        let plan = ReadPlan::new(70, 180, 1);
        assert_eq!(plan.raw_head, (70, 180));
        assert!(plan.raw_tail.0 > plan.raw_tail.1);
    }

    #[test]
    fn names_are_trimmed_deduplicated_and_bounded() {
        let names = parse_names(" a, b ,a,,c").unwrap();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(parse_names(" , ").is_err());
        let many = (0..=MAX_SERIES).map(|i| i.to_string()).collect::<Vec<_>>();
        assert!(parse_names(&many.join(",")).is_err());
    }
}
