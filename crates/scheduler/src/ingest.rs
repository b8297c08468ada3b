//! Batching of a trainer's events into Postgres.
//!
//! Events and log lines are gathered in memory and written together: one multi-row insert per
//! table per batch, inside a transaction that first checks (under a share lock) that the run is
//! still at the writer's attempt. A batch from a stale attempt is refused as a whole.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use mpl_protocol::Event;
use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::queue::{StaleAttempt, notify};

/// How long items may wait in memory before they are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// A batch is written as soon as it holds this many items, whatever its age.
pub const MAX_BATCH_ITEMS: usize = 20_000;

/// The latest progress report of a batch.
#[derive(Debug, Clone, PartialEq)]
struct Progress {
    step: i64,
    total_steps: i64,
    phase: String,
    images_per_sec: f64,
    eta_secs: f64,
}

/// Collects one attempt's events and writes them in fenced batches.
pub struct EventSink {
    pool: PgPool,
    run_id: Uuid,
    attempt: i32,
    /// Metric points keyed by (name, step): a point re-sent within a batch replaces the older.
    points: HashMap<(String, i64), f64>,
    /// Rows for `run_events`, in arrival order: (kind, payload).
    events: Vec<(&'static str, Value)>,
    /// Newest value of each metric in this batch, for the batch's single `metrics` event.
    latest_values: BTreeMap<String, f64>,
    latest_metrics_step: i64,
    progress: Option<Progress>,
    first_step: Option<i64>,
    best_metrics: Map<String, Value>,
    best_changed: bool,
    final_metrics: Option<Value>,
    last_step: Option<i64>,
    last_failure: Option<String>,
    stopped: bool,
    items: usize,
    last_flush: Instant,
    points_written: u64,
}

impl EventSink {
    /// A sink for attempt `attempt` of `run_id`; `best_metrics` are those of earlier attempts.
    pub fn new(pool: PgPool, run_id: Uuid, attempt: i32, best_metrics: Option<Value>) -> Self {
        let best_metrics = match best_metrics {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        EventSink {
            pool,
            run_id,
            attempt,
            points: HashMap::new(),
            events: Vec::new(),
            latest_values: BTreeMap::new(),
            latest_metrics_step: 0,
            progress: None,
            first_step: None,
            best_metrics,
            best_changed: false,
            final_metrics: None,
            last_step: None,
            last_failure: None,
            stopped: false,
            items: 0,
            last_flush: Instant::now(),
            points_written: 0,
        }
    }

    /// The highest step any event of this attempt reported.
    pub fn last_step(&self) -> Option<i64> {
        self.last_step
    }

    /// The reason of the last `failed` event, if any.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Whether the trainer announced that it stopped on SIGTERM.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Metric points written so far.
    pub fn points_written(&self) -> u64 {
        self.points_written
    }

    /// True when the batch is old or large enough to be written.
    pub fn is_due(&self) -> bool {
        self.items >= MAX_BATCH_ITEMS
            || (self.items > 0 && self.last_flush.elapsed() >= FLUSH_INTERVAL)
    }

    /// Adds one stderr line of the trainer.
    pub fn push_log(&mut self, line: &str) {
        self.push_row("log", json!({"stream": "stderr", "line": line}));
    }

    /// Adds one row to the event stream as is (e.g. a line of stdout that is not an event).
    pub fn push_row(&mut self, kind: &'static str, payload: Value) {
        self.events.push((kind, payload));
        self.items += 1;
    }

    /// Adds one trainer event. Checkpoint events are not handled here: they are recorded once
    /// their files are stored (see `checkpoints`).
    pub fn push_event(&mut self, event: &Event) {
        match event {
            Event::Started {
                step,
                device,
                resumed_from,
                ..
            } => {
                let step = to_i64(*step);
                self.first_step = Some(step);
                self.see_step(step);
                let origin = resumed_from.as_deref().unwrap_or("the beginning");
                let line = format!("trainer started at step {step} on {device} from {origin}");
                self.push_row("log", json!({"stream": "scheduler", "line": line}));
            }
            Event::Progress {
                step,
                total_steps,
                phase,
                images_per_sec,
                eta_secs,
            } => {
                self.see_step(to_i64(*step));
                self.progress = Some(Progress {
                    step: to_i64(*step),
                    total_steps: to_i64(*total_steps),
                    phase: phase.clone(),
                    images_per_sec: *images_per_sec,
                    eta_secs: *eta_secs,
                });
                self.items += 1;
            }
            Event::Metrics { step, values } => {
                let step = to_i64(*step);
                self.see_step(step);
                for (name, value) in values {
                    self.add_point(name, step, *value);
                }
            }
            Event::Eval { .. } => self.push_eval(event),
            Event::Checkpoint { step, .. } => self.see_step(to_i64(*step)),
            Event::Finished { step, metrics } => {
                self.see_step(to_i64(*step));
                self.final_metrics = Some(json!(metrics));
                self.items += 1;
            }
            Event::Stopped { step, .. } => {
                self.see_step(to_i64(*step));
                self.stopped = true;
            }
            Event::Failed { reason } => {
                self.last_failure = Some(reason.clone());
                let line = format!("trainer failed: {reason}");
                self.push_row("log", json!({"stream": "scheduler", "line": line}));
            }
        }
    }

    fn push_eval(&mut self, event: &Event) {
        let Event::Eval {
            step,
            model,
            split,
            top1,
            top5,
            loss,
            ..
        } = event
        else {
            return;
        };
        let step = to_i64(*step);
        self.see_step(step);
        let model = serde_json::to_value(model)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        for (what, value, higher_is_better) in [
            ("top1", *top1, true),
            ("top5", *top5, true),
            ("loss", *loss, false),
        ] {
            let name = format!("{split}/{model}/{what}");
            self.add_point(&name, step, value);
            self.improve_best(name, value, higher_is_better);
        }
        let payload = serde_json::to_value(event).unwrap_or(Value::Null);
        self.push_row("eval", payload);
    }

    fn add_point(&mut self, name: &str, step: i64, value: f64) {
        if !value.is_finite() {
            // Postgres stores NaN, but JSON cannot carry it to clients; a diverged value is
            // visible in the logs and the failure reason instead.
            return;
        }
        self.points.insert((name.to_owned(), step), value);
        if step >= self.latest_metrics_step {
            self.latest_metrics_step = step;
            self.latest_values.insert(name.to_owned(), value);
        }
        self.items += 1;
    }

    fn improve_best(&mut self, name: String, value: f64, higher_is_better: bool) {
        let better = match self.best_metrics.get(&name).and_then(Value::as_f64) {
            None => true,
            Some(best) if higher_is_better => value > best,
            Some(best) => value < best,
        };
        if better && value.is_finite() {
            self.best_metrics.insert(name, json!(value));
            self.best_changed = true;
        }
    }

    fn see_step(&mut self, step: i64) {
        self.last_step = Some(self.last_step.map_or(step, |s| s.max(step)));
    }

    /// Writes the batch if it is due.
    pub async fn flush_if_due(&mut self) -> anyhow::Result<()> {
        if self.is_due() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes everything gathered so far in one fenced transaction. Fails with
    /// [`StaleAttempt`] (and drops the batch) when the attempt is no longer current.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.last_flush = Instant::now();
        if self.items == 0 && !self.best_changed && self.first_step.is_none() {
            return Ok(());
        }
        let result = self.write_batch().await;
        let stale = matches!(&result, Err(e) if e.is::<StaleAttempt>());
        if result.is_ok() || stale {
            // Other errors keep the batch, so the next flush retries it.
            self.clear();
        }
        result
    }

    fn clear(&mut self) {
        self.points.clear();
        self.events.clear();
        self.latest_values.clear();
        self.progress = None;
        self.first_step = None;
        self.best_changed = false;
        self.final_metrics = None;
        self.items = 0;
    }

    async fn write_batch(&mut self) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        check_fence(&mut tx, self.run_id, self.attempt).await?;

        let points = self.points.len() as u64;
        self.insert_points(&mut tx).await?;
        self.insert_events(&mut tx).await?;
        self.update_run(&mut tx).await?;
        if let Some(step) = self.first_step {
            sqlx::query("UPDATE attempts SET first_step = $3 WHERE run_id = $1 AND attempt = $2")
                .bind(self.run_id)
                .bind(self.attempt)
                .bind(step)
                .execute(&mut *tx)
                .await?;
        }
        notify(&mut tx, "mpl_events", &self.run_id.to_string()).await?;
        tx.commit().await?;

        self.points_written += points;
        Ok(())
    }

    async fn insert_points(&self, tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        if self.points.is_empty() {
            return Ok(());
        }
        let mut names = Vec::with_capacity(self.points.len());
        let mut steps = Vec::with_capacity(self.points.len());
        let mut values = Vec::with_capacity(self.points.len());
        for ((name, step), value) in &self.points {
            names.push(name.as_str());
            steps.push(*step);
            values.push(*value);
        }
        sqlx::query(
            "INSERT INTO metrics (run_id, name, step, value) \
             SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::float8[]) \
             ON CONFLICT (run_id, name, step) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(self.run_id)
        .bind(&names)
        .bind(&steps)
        .bind(&values)
        .execute(tx)
        .await?;
        Ok(())
    }

    async fn insert_events(&self, tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        let mut kinds: Vec<&str> = self.events.iter().map(|(kind, _)| *kind).collect();
        let mut payloads: Vec<Value> = self.events.iter().map(|(_, p)| p.clone()).collect();
        if !self.latest_values.is_empty() {
            kinds.push("metrics");
            payloads.push(json!({"step": self.latest_metrics_step, "values": self.latest_values}));
        }
        if let Some(p) = &self.progress {
            kinds.push("progress");
            payloads.push(json!({"step": p.step, "total_steps": p.total_steps,
                "phase": p.phase, "images_per_sec": p.images_per_sec, "eta_secs": p.eta_secs}));
        }
        if kinds.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO run_events (run_id, attempt, kind, payload) \
             SELECT $1, $2, kind, payload \
             FROM UNNEST($3::text[], $4::jsonb[]) WITH ORDINALITY AS e(kind, payload, n) \
             ORDER BY n",
        )
        .bind(self.run_id)
        .bind(self.attempt)
        .bind(&kinds)
        .bind(&payloads)
        .execute(tx)
        .await?;
        Ok(())
    }

    async fn update_run(&self, tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
        if self.progress.is_none() && !self.best_changed && self.final_metrics.is_none() {
            return Ok(());
        }
        let p = self.progress.as_ref();
        let best = self
            .best_changed
            .then(|| Value::Object(self.best_metrics.clone()));
        sqlx::query(
            "UPDATE runs SET current_step = coalesce($3, current_step), \
                 total_steps = coalesce($4, total_steps), phase = coalesce($5, phase), \
                 images_per_sec = coalesce($6, images_per_sec), \
                 eta_secs = coalesce($7, eta_secs), best_metrics = coalesce($8, best_metrics), \
                 final_metrics = coalesce($9, final_metrics), updated_at = now() \
             WHERE id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(self.run_id)
        .bind(self.attempt)
        .bind(p.map(|p| p.step))
        .bind(p.map(|p| p.total_steps))
        .bind(p.map(|p| p.phase.as_str()))
        .bind(p.map(|p| p.images_per_sec).filter(|v| v.is_finite()))
        .bind(p.map(|p| p.eta_secs).filter(|v| v.is_finite()))
        .bind(best)
        .bind(&self.final_metrics)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// Locks the run row for share and checks that `attempt` is its current running attempt.
pub async fn check_fence(
    conn: &mut sqlx::PgConnection,
    run_id: Uuid,
    attempt: i32,
) -> anyhow::Result<()> {
    let current: Option<(i32, String)> =
        sqlx::query_as("SELECT attempt, status FROM runs WHERE id = $1 FOR SHARE")
            .bind(run_id)
            .fetch_optional(conn)
            .await?;
    match current {
        Some((current, status)) if current == attempt && status == "running" => Ok(()),
        _ => Err(StaleAttempt { run_id, attempt }.into()),
    }
}

fn to_i64(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}
