//! Measures how fast the scheduler ingests metric points from a trainer that emits them as
//! fast as it can.
//!
//! `cargo run -p mpl-scheduler --release --example ingest_bench [POINTS]` creates a scratch
//! database next to `MPL_TEST_DATABASE_URL`, claims one run, then feeds the scheduler's batching
//! writer `POINTS` (default 1 000 000) metric points as JSON lines of `metrics` events (ten series
//! per event), exactly as they arrive from a trainer's stdout: each line is parsed, batched and
//! written with one multi-row insert per batch. It prints points per second and drops the
//! database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use mpl_protocol::Event;
use mpl_scheduler::ingest::EventSink;
use mpl_scheduler::{MIGRATOR, queue};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

const SERIES_PER_EVENT: u64 = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let points: u64 = match std::env::args().nth(1) {
        Some(text) => text.parse().context("POINTS must be a whole number")?,
        None => 1_000_000,
    };
    let admin_url = std::env::var("MPL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("bench_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    let pool = PgPool::connect(&format!("{base}/{name}")).await?;

    let result = bench(&pool, points).await;

    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    result
}

async fn bench(pool: &PgPool, points: u64) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    let (run_id, attempt) = claimed_run(pool).await?;
    let lines = trainer_output(points);

    let mut sink = EventSink::new(pool.clone(), run_id, attempt, None);
    let started = Instant::now();
    for line in &lines {
        let event: Event = serde_json::from_str(line)?;
        sink.push_event(&event);
        sink.flush_if_due().await?;
    }
    sink.flush().await?;
    let elapsed = started.elapsed();

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM metrics WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        stored as u64 == points,
        "stored {stored} points, expected {points}"
    );
    report(points, elapsed);
    Ok(())
}

/// Inserts a run and claims it, as a scheduler would before starting its trainer.
async fn claimed_run(pool: &PgPool) -> anyhow::Result<(Uuid, i32)> {
    let worker_id = Uuid::now_v7();
    sqlx::query("INSERT INTO workers (id, hostname, slots) VALUES ($1, 'bench', 1)")
        .bind(worker_id)
        .execute(pool)
        .await?;
    let spec = json!({"data": {"labeled": {"path": "bench", "format": "canonical"}}});
    sqlx::query(
        "INSERT INTO runs (id, algorithm, spec, total_steps) VALUES ($1, 'mpl', $2, 1000000)",
    )
    .bind(Uuid::now_v7())
    .bind(spec)
    .execute(pool)
    .await?;
    let claimed = queue::claim_next(pool, worker_id, Duration::from_secs(600))
        .await?
        .context("the run was not claimed")?;
    Ok((claimed.run_id, claimed.attempt))
}

/// The stdout of a fast trainer: `points / 10` metrics events of ten series each.
fn trainer_output(points: u64) -> Vec<String> {
    let names: Vec<String> = (0..SERIES_PER_EVENT)
        .map(|i| format!("train/series_{i}"))
        .collect();
    (0..points / SERIES_PER_EVENT)
        .map(|step| {
            let values: BTreeMap<String, f64> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), (step as f64 + i as f64).sin()))
                .collect();
            Event::Metrics { step, values }.to_line()
        })
        .collect()
}

fn report(points: u64, elapsed: Duration) {
    let per_sec = points as f64 / elapsed.as_secs_f64();
    println!(
        "ingested {points} metric points in {:.2} s: {per_sec:.0} points/s",
        elapsed.as_secs_f64()
    );
}
