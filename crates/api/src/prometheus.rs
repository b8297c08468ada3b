//! Prometheus metrics at `/metrics`, in the text exposition format.
//!
//! Platform gauges and counters (queue depth, runs by status, lease expiries, live workers,
//! ingested dataset bytes) are read from Postgres at scrape time, so every api process reports
//! the same figures however many there are. HTTP responses by status class are counted by this
//! process, through the [`count_responses`] middleware.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

use crate::app::AppState;
use crate::runs::RunStatus;

/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Responses sent by this process, by status class (index 0 is 1xx, 4 is 5xx).
static HTTP_RESPONSES: [AtomicU64; 5] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// The open `/metrics` route, to be merged at the root (not under `/v1`).
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(render))
}

/// Middleware counting every response by status class; layer it over the whole app with
/// `axum::middleware::from_fn(count_responses)`.
pub async fn count_responses(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    record_response(response.status());
    response
}

/// Counts one response.
pub fn record_response(status: StatusCode) {
    let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
    HTTP_RESPONSES[class].fetch_add(1, Ordering::Relaxed);
}

/// Figures read from Postgres for one scrape.
#[derive(Debug, Default)]
struct PlatformFigures {
    runs_by_status: Vec<(String, i64)>,
    lease_expiries: i64,
    workers_alive: i64,
    datasets_by_status: Vec<(String, i64)>,
    ingested_bytes: i64,
}

async fn read_figures(db: &PgPool, lease_ttl_secs: f64) -> Result<PlatformFigures, sqlx::Error> {
    let runs_by_status =
        sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM runs GROUP BY status")
            .fetch_all(db)
            .await?;
    let lease_expiries = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM attempts WHERE exit_reason = 'lease_expired'",
    )
    .fetch_one(db)
    .await?;
    let workers_alive = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM workers WHERE stopped_at IS NULL \
         AND last_heartbeat_at > now() - make_interval(secs => $1)",
    )
    .bind(lease_ttl_secs)
    .fetch_one(db)
    .await?;
    let datasets_by_status =
        sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM datasets GROUP BY status")
            .fetch_all(db)
            .await?;
    let ingested_bytes = sqlx::query_scalar::<_, i64>(
        "SELECT coalesce(sum((part->>'size_bytes')::bigint), 0)::bigint \
         FROM datasets d, jsonb_array_elements(d.parts) part \
         WHERE d.status = 'ready' AND jsonb_typeof(part->'size_bytes') = 'number'",
    )
    .fetch_one(db)
    .await?;
    Ok(PlatformFigures {
        runs_by_status,
        lease_expiries,
        workers_alive,
        datasets_by_status,
        ingested_bytes,
    })
}

/// Renders every metric.
async fn render(State(state): State<AppState>) -> Response {
    let figures = read_figures(&state.db, state.config.lease_ttl_secs as f64).await;
    let mut text = String::new();
    match &figures {
        Ok(figures) => write_platform(&mut text, figures),
        Err(e) => tracing::warn!(error = %e, "cannot read platform figures for /metrics"),
    }
    gauge(
        &mut text,
        "mpl_database_up",
        "1 when Postgres answered this scrape.",
    );
    sample(&mut text, "mpl_database_up", "", i64::from(figures.is_ok()));
    write_http(&mut text);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

fn write_platform(text: &mut String, f: &PlatformFigures) {
    let runs = |status: &str| {
        f.runs_by_status
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n)
    };

    gauge(text, "mpl_queue_depth", "Runs waiting in the queue.");
    sample(text, "mpl_queue_depth", "", runs("queued"));
    gauge(
        text,
        "mpl_running_runs",
        "Runs being executed by a scheduler.",
    );
    sample(text, "mpl_running_runs", "", runs("running"));
    gauge(text, "mpl_runs", "Runs by status.");
    for status in RunStatus::ALL {
        let label = format!("{{status=\"{}\"}}", status.as_str());
        sample(text, "mpl_runs", &label, runs(status.as_str()));
    }

    counter(
        text,
        "mpl_lease_expiries_total",
        "Attempts ended because their scheduler stopped renewing the lease.",
    );
    sample(text, "mpl_lease_expiries_total", "", f.lease_expiries);
    gauge(
        text,
        "mpl_workers_alive",
        "Schedulers heard from within one lease period.",
    );
    sample(text, "mpl_workers_alive", "", f.workers_alive);

    gauge(text, "mpl_datasets", "Datasets by status.");
    for (status, n) in &f.datasets_by_status {
        sample(
            text,
            "mpl_datasets",
            &format!("{{status=\"{status}\"}}"),
            *n,
        );
    }
    counter(
        text,
        "mpl_dataset_ingested_bytes_total",
        "Uploaded bytes of the datasets ingested and ready (falls when a dataset is deleted).",
    );
    sample(
        text,
        "mpl_dataset_ingested_bytes_total",
        "",
        f.ingested_bytes,
    );
}

fn write_http(text: &mut String) {
    counter(
        text,
        "mpl_http_responses_total",
        "HTTP responses sent by this process, by status class.",
    );
    for (i, count) in HTTP_RESPONSES.iter().enumerate() {
        let label = format!("{{class=\"{}xx\"}}", i + 1);
        let n = i64::try_from(count.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        sample(text, "mpl_http_responses_total", &label, n);
    }
}

fn gauge(text: &mut String, name: &str, help: &str) {
    header_lines(text, name, help, "gauge");
}

fn counter(text: &mut String, name: &str, help: &str) {
    header_lines(text, name, help, "counter");
}

fn header_lines(text: &mut String, name: &str, help: &str, kind: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(text, "# HELP {name} {help}");
    let _ = writeln!(text, "# TYPE {name} {kind}");
}

fn sample(text: &mut String, name: &str, labels: &str, value: i64) {
    let _ = writeln!(text, "{name}{labels} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_class() {
        let before = HTTP_RESPONSES[3].load(Ordering::Relaxed);
        record_response(StatusCode::NOT_FOUND);
        record_response(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(HTTP_RESPONSES[3].load(Ordering::Relaxed) >= before + 2);
    }

    #[test]
    fn platform_figures_render_as_exposition_text() {
        let figures = PlatformFigures {
            runs_by_status: vec![("queued".into(), 3), ("running".into(), 1)],
            lease_expiries: 2,
            workers_alive: 1,
            datasets_by_status: vec![("ready".into(), 4)],
            ingested_bytes: 1_000,
        };
        let mut text = String::new();
        write_platform(&mut text, &figures);
        assert!(text.contains("\nmpl_queue_depth 3\n"), "{text}");
        assert!(text.contains("\nmpl_running_runs 1\n"), "{text}");
        assert!(
            text.contains("mpl_runs{status=\"succeeded\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mpl_lease_expiries_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nmpl_lease_expiries_total 2\n"), "{text}");
        assert!(
            text.contains("mpl_datasets{status=\"ready\"} 4\n"),
            "{text}"
        );
    }
}
