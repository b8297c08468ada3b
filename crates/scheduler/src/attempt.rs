//! One attempt at a run: preparing its inputs, supervising the trainer process, and deciding
//! how the attempt ended.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use mpl_protocol::{Event, RunSpec, exit_code};
use mpl_storage::Storage;
use nix::sys::signal::Signal;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;
use uuid::Uuid;

use crate::checkpoints::{CheckpointRecorder, fetch_resume_point, is_stale};
use crate::config::Config;
use crate::datasets::{UnusableDataset, resolve_sources};
use crate::ingest::{EventSink, FLUSH_INTERVAL};
use crate::process::{ProcessGroup, TrainerProcess, exit_code_of};
use crate::queue::{ClaimedRun, Outcome, StaleAttempt, close_attempt};

/// Longest log line kept; longer lines are cut (a runaway line must not fill the database).
const MAX_LOG_LINE_BYTES: usize = 8 * 1024;

/// Requests the scheduler sends to a running attempt.
#[derive(Debug, Default)]
pub struct AttemptControl {
    cancel: AtomicBool,
    shutdown: AtomicBool,
    lease_lost: AtomicBool,
    wake: Notify,
}

impl AttemptControl {
    /// A cancel was requested: stop the trainer (SIGTERM, then SIGKILL after the grace period).
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The scheduler is stopping: stop the trainer and release the run to the queue.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The attempt is no longer the run's current one: kill the trainer and drop its output.
    pub fn lose_lease(&self) {
        self.lease_lost.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn wants_stop(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || self.shutdown.load(Ordering::SeqCst)
    }
}

/// What an attempt needs from its scheduler.
#[derive(Clone)]
pub struct AttemptEnv {
    /// Database.
    pub pool: PgPool,
    /// Object storage.
    pub storage: Storage,
    /// Configuration.
    pub config: Arc<Config>,
}

/// How the trainer process ended, before it is turned into an [`Outcome`].
struct Ended {
    outcome: Outcome,
    last_step: Option<i64>,
    exit_code: Option<i32>,
}

/// Runs attempt `claim.attempt` of `claim.run_id` on `device` to its end and records how it
/// ended. Never fails: every error becomes the attempt's outcome, or (when the attempt turned
/// out stale) is logged and its output dropped.
pub async fn run(env: AttemptEnv, claim: ClaimedRun, device: String, control: Arc<AttemptControl>) {
    let span = tracing::info_span!("attempt", run_id = %claim.run_id, attempt = claim.attempt);
    async move {
        tracing::info!(%device, "attempt started");
        let work_dir = work_dir_of(&env.config, claim.run_id, claim.attempt);

        let ended = match execute(&env, &claim, &device, &control, &work_dir).await {
            Ok(ended) => ended,
            Err(err) if is_stale(&err) => {
                tracing::warn!("attempt is stale; its trainer was stopped and its output dropped");
                remove_dir(&work_dir).await;
                return;
            }
            Err(err) => setup_failure(err),
        };

        let closed = close_attempt(
            &env.pool,
            claim.run_id,
            claim.attempt,
            &ended.outcome,
            ended.last_step,
            ended.exit_code,
        )
        .await;
        match closed {
            Ok(status) => tracing::info!(status, outcome = ?ended.outcome, "attempt ended"),
            Err(err) if is_stale(&err) => tracing::warn!("attempt was stale when it ended"),
            Err(err) => tracing::error!(
                error = format!("{err:#}"),
                "recording the end of the attempt failed; the lease will expire instead"
            ),
        }
        remove_dir(&work_dir).await;
    }
    .instrument(span)
    .await
}

fn setup_failure(err: anyhow::Error) -> Ended {
    let retryable = !(err.is::<UnusableDataset>() || err.is::<mpl_protocol::SpecError>());
    tracing::warn!(
        error = format!("{err:#}"),
        retryable,
        "attempt could not start"
    );
    Ended {
        outcome: Outcome::Failed {
            exit_reason: "spawn_failed".into(),
            reason: format!("{err:#}"),
            retryable,
        },
        last_step: None,
        exit_code: None,
    }
}

async fn remove_dir(dir: &Path) {
    if let Err(err) = tokio::fs::remove_dir_all(dir).await
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %err, "cannot remove the work directory");
    }
}

async fn execute(
    env: &AttemptEnv,
    claim: &ClaimedRun,
    device: &str,
    control: &Arc<AttemptControl>,
    work_dir: &Path,
) -> anyhow::Result<Ended> {
    tokio::fs::create_dir_all(work_dir)
        .await
        .with_context(|| format!("cannot create the work directory {}", work_dir.display()))?;

    let mut spec = RunSpec::from_value(claim.spec.clone())?;
    resolve_sources(&env.pool, &env.storage, &env.config.cache_dir(), &mut spec).await?;
    assign_device(&mut spec, device);
    let spec_path = work_dir.join("spec.json");
    let spec_text = serde_json::to_vec_pretty(&spec)?;
    tokio::fs::write(&spec_path, spec_text)
        .await
        .with_context(|| format!("cannot write {}", spec_path.display()))?;

    let resume = fetch_resume_point(
        &env.pool,
        &env.storage,
        claim.run_id,
        &work_dir.join("resume"),
    )
    .await?;
    if let Some(point) = &resume {
        sqlx::query("UPDATE attempts SET resumed_from = $3 WHERE run_id = $1 AND attempt = $2")
            .bind(claim.run_id)
            .bind(claim.attempt)
            .bind(point.checkpoint_id)
            .execute(&env.pool)
            .await?;
        tracing::info!(checkpoint_id = %point.checkpoint_id, step = point.step, "resuming");
    }

    let out_dir = work_dir.join("out");
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("run"),
        OsStr::new("--spec"),
        spec_path.as_os_str(),
        OsStr::new("--out"),
        out_dir.as_os_str(),
    ];
    if let Some(point) = &resume {
        args.push(OsStr::new("--resume"));
        args.push(point.dir.as_os_str());
    }
    let trainer = TrainerProcess::spawn(&env.config.trainer_bin, &args)?;

    let recorder = CheckpointRecorder {
        pool: env.pool.clone(),
        storage: env.storage.clone(),
        trainer_bin: env.config.trainer_bin.clone(),
        run_id: claim.run_id,
        attempt: claim.attempt,
        keep_latest: i64::try_from(spec.checkpoint.keep_latest).unwrap_or(i64::MAX),
        scratch_dir: work_dir.to_path_buf(),
    };
    let sink = EventSink::new(
        env.pool.clone(),
        claim.run_id,
        claim.attempt,
        claim.best_metrics.clone(),
    );
    supervise(env, claim, control, trainer, sink, recorder).await
}

/// Points a spec that asks for "any" accelerator at the slot's device; a spec that asks for
/// the CPU keeps it.
fn assign_device(spec: &mut RunSpec, device: &str) {
    let requested = spec.device.device.as_str();
    if requested != "cpu" {
        spec.device.device = device.to_owned();
    }
}

/// Reads the trainer's output until it exits, then decides the outcome.
async fn supervise(
    env: &AttemptEnv,
    claim: &ClaimedRun,
    control: &Arc<AttemptControl>,
    trainer: TrainerProcess,
    mut sink: EventSink,
    recorder: CheckpointRecorder,
) -> anyhow::Result<Ended> {
    let TrainerProcess {
        mut child,
        stdout,
        stderr,
        group,
    } = trainer;
    let mut stdout = BufReader::new(stdout).lines();
    let mut stderr = BufReader::new(stderr).lines();
    let (checkpoints, pending) = mpsc::unbounded_channel();
    let recording = tokio::spawn(record_checkpoints(recorder, pending, control.clone()));

    let grace = env.config.cancel_grace;
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    let mut kill_at: Option<Instant> = None;
    let (mut stdout_open, mut stderr_open) = (true, true);
    let mut stale = false;

    while (stdout_open || stderr_open) && !stale {
        tokio::select! {
            line = stdout.next_line(), if stdout_open => match line {
                Ok(Some(line)) => handle_stdout(&line, &mut sink, &checkpoints),
                _ => stdout_open = false,
            },
            line = stderr.next_line(), if stderr_open => match line {
                Ok(Some(line)) => sink.push_log(clip(&line)),
                _ => stderr_open = false,
            },
            _ = tick.tick() => {
                if let Err(err) = sink.flush_if_due().await {
                    stale = is_stale(&err);
                    if !stale {
                        tracing::warn!(error = format!("{err:#}"), "writing events failed");
                    }
                }
            }
            _ = control.wake.notified() => {
                if control.lease_lost.load(Ordering::SeqCst) {
                    stale = true;
                } else if control.wants_stop() && kill_at.is_none() {
                    tracing::info!("stopping the trainer (SIGTERM)");
                    group.signal(Signal::SIGTERM);
                    kill_at = Some(Instant::now() + grace);
                }
            }
            _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                tracing::warn!("the trainer outlived its grace period (SIGKILL)");
                group.signal(Signal::SIGKILL);
                kill_at = None;
            }
        }
    }

    if stale {
        group.signal(Signal::SIGKILL);
        let _ = child.wait().await;
        recording.abort();
        return Err(StaleAttempt {
            run_id: claim.run_id,
            attempt: claim.attempt,
        }
        .into());
    }

    let status = wait_with_deadline(&mut child, group, kill_at).await?;
    sink.flush().await?;
    drop(checkpoints);
    match recording.await {
        Ok(Err(err)) if is_stale(&err) => return Err(err),
        Ok(_) => {}
        Err(join_err) => tracing::error!(error = %join_err, "checkpoint recording panicked"),
    }

    let cancel_requested = control.cancel.load(Ordering::SeqCst)
        || cancel_requested_in_db(&env.pool, claim.run_id).await;
    let outcome = classify(
        &status,
        cancel_requested,
        control.shutdown.load(Ordering::SeqCst),
        sink.last_failure(),
    );
    Ok(Ended {
        outcome,
        last_step: sink.last_step(),
        exit_code: exit_code_of(&status),
    })
}

async fn wait_with_deadline(
    child: &mut tokio::process::Child,
    group: ProcessGroup,
    kill_at: Option<Instant>,
) -> anyhow::Result<ExitStatus> {
    if let Some(deadline) = kill_at {
        tokio::select! {
            status = child.wait() => return Ok(status?),
            _ = sleep_until(deadline) => group.signal(Signal::SIGKILL),
        }
    }
    Ok(child.wait().await?)
}

async fn cancel_requested_in_db(pool: &PgPool, run_id: Uuid) -> bool {
    sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn handle_stdout(line: &str, sink: &mut EventSink, checkpoints: &mpsc::UnboundedSender<Event>) {
    if line.trim().is_empty() {
        return;
    }
    match serde_json::from_str::<Event>(line) {
        Ok(event) => {
            sink.push_event(&event);
            if matches!(event, Event::Checkpoint { .. }) {
                let _ = checkpoints.send(event);
            }
        }
        Err(_) => sink.push_row("log", json!({"stream": "stdout", "line": clip(line)})),
    }
}

/// Stores the attempt's checkpoints one after the other, in the order they were announced.
async fn record_checkpoints(
    recorder: CheckpointRecorder,
    mut pending: mpsc::UnboundedReceiver<Event>,
    control: Arc<AttemptControl>,
) -> anyhow::Result<()> {
    while let Some(event) = pending.recv().await {
        if let Err(err) = recorder.record(&event).await {
            if is_stale(&err) {
                control.lose_lease();
                return Err(err);
            }
            tracing::warn!(
                error = format!("{err:#}"),
                "a checkpoint could not be stored"
            );
        }
    }
    Ok(())
}

/// Maps the trainer's exit to the attempt's outcome.
fn classify(
    status: &ExitStatus,
    cancel_requested: bool,
    shutting_down: bool,
    last_failure: Option<&str>,
) -> Outcome {
    let code = status.code();
    if code == Some(exit_code::FINISHED) {
        return Outcome::Succeeded;
    }
    if cancel_requested {
        return Outcome::Cancelled;
    }
    if shutting_down {
        return Outcome::Released;
    }
    let why = |default: String| last_failure.map_or(default, str::to_owned);
    match code {
        Some(exit_code::INVALID_INPUT) => Outcome::Failed {
            exit_reason: "failed".into(),
            reason: why("the trainer rejected its input (exit code 2)".into()),
            retryable: false,
        },
        Some(code) => Outcome::Failed {
            exit_reason: "failed".into(),
            reason: why(format!("the trainer exited with code {code}")),
            retryable: true,
        },
        None => Outcome::Failed {
            exit_reason: "killed".into(),
            reason: why(format!(
                "the trainer was killed ({})",
                exit_code_of(status)
                    .map_or("unknown signal".into(), |c| format!("signal {}", c - 128))
            )),
            retryable: true,
        },
    }
}

fn clip(line: &str) -> &str {
    if line.len() <= MAX_LOG_LINE_BYTES {
        return line;
    }
    let mut end = MAX_LOG_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// The local path of the attempt work directory (for tests and operators).
pub fn work_dir_of(config: &Config, run_id: Uuid, attempt: i32) -> PathBuf {
    config
        .work_dir()
        .join(run_id.to_string())
        .join(format!("attempt-{attempt}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(classify(&exited(0), true, true, None), Outcome::Succeeded);
        assert_eq!(classify(&exited(3), true, false, None), Outcome::Cancelled);
        assert_eq!(classify(&exited(3), false, true, None), Outcome::Released);
        let Outcome::Failed {
            retryable, reason, ..
        } = classify(&exited(2), false, false, Some("no such file"))
        else {
            panic!("exit code 2 must fail the attempt");
        };
        assert!(!retryable);
        assert_eq!(reason, "no such file");
        let killed = classify(&ExitStatus::from_raw(9), false, false, None);
        let Outcome::Failed {
            exit_reason,
            reason,
            retryable,
        } = killed
        else {
            panic!("a killed trainer must fail the attempt");
        };
        assert_eq!(exit_reason, "killed");
        assert!(retryable);
        assert!(reason.contains("signal 9"), "{reason}");
    }

    #[test]
    fn long_lines_are_clipped_on_a_character_boundary() {
        let line = "é".repeat(MAX_LOG_LINE_BYTES);
        let clipped = clip(&line);
        assert!(clipped.len() <= MAX_LOG_LINE_BYTES);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
