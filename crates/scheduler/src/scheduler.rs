//! The scheduler's main loop: claiming runs into free slots, heartbeats, the reaper, cancel
//! notifications and graceful shutdown.

use std::collections::HashMap;
use std::sync::Arc;

use mpl_storage::Storage;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::attempt::{self, AttemptControl, AttemptEnv};
use crate::config::Config;
use crate::queue::{claim_next, reap_expired};
use crate::worker::{self, LeaseState};

/// Entry point: starts schedulers.
pub struct Scheduler;

/// A running scheduler. Dropping it leaves the scheduler running; call
/// [`SchedulerHandle::shutdown`] to stop it cleanly.
pub struct SchedulerHandle {
    worker_id: Uuid,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SchedulerHandle {
    /// The id of this scheduler's `workers` row.
    pub fn worker_id(&self) -> Uuid {
        self.worker_id
    }

    /// Stops claiming, asks every trainer to stop (SIGTERM; SIGKILL after the grace period),
    /// waits until their last checkpoints are stored, releases their runs to the queue and
    /// marks the worker stopped.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?;
        Ok(())
    }

    /// Stops the scheduler's tasks at once, as if its machine vanished: nothing is released,
    /// and the leases of its runs are left to expire. The trainers it started are killed.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// What the notification listener forwards to the main loop.
enum Wakeup {
    /// A run was queued (or re-queued).
    Queue,
    /// A cancel was requested for a run.
    Cancel(Uuid),
}

/// A run this scheduler is executing.
struct Active {
    attempt: i32,
    slot: usize,
    control: Arc<AttemptControl>,
}

impl Scheduler {
    /// Connects to the database and the object store named by `config`, applies pending
    /// migrations, registers the worker and starts the scheduler.
    pub async fn start(config: Config) -> anyhow::Result<SchedulerHandle> {
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(config.slots * 2 + 4).unwrap_or(32))
            .connect(&config.database_url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to MPL_DATABASE_URL: {e}"))?;
        crate::MIGRATOR.run(&pool).await?;
        let storage = Storage::from_url(&config.storage_url)?;
        Self::start_with(pool, storage, config).await
    }

    /// Starts a scheduler on an existing pool and store (the api shares its own).
    pub async fn start_with(
        pool: PgPool,
        storage: Storage,
        config: Config,
    ) -> anyhow::Result<SchedulerHandle> {
        let worker_id = worker::register(&pool, &config).await?;
        let wakeups = listen(&config.database_url).await?;
        let (stop, stopped) = watch::channel(false);
        let env = AttemptEnv {
            pool,
            storage,
            config: Arc::new(config),
        };
        let task = tokio::spawn(main_loop(env, worker_id, wakeups, stopped));
        Ok(SchedulerHandle {
            worker_id,
            stop,
            task,
        })
    }
}

/// Listens for `mpl_queue` and `mpl_cancel` on a dedicated connection and forwards them.
async fn listen(database_url: &str) -> anyhow::Result<mpsc::UnboundedReceiver<Wakeup>> {
    let mut listener = PgListener::connect(database_url).await?;
    listener.listen_all(["mpl_queue", "mpl_cancel"]).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let wakeup = match listener.recv().await {
                Ok(note) if note.channel() == "mpl_cancel" => match note.payload().parse() {
                    Ok(run_id) => Wakeup::Cancel(run_id),
                    Err(_) => continue,
                },
                Ok(_) => Wakeup::Queue,
                Err(err) => {
                    // The listener reconnects by itself; notifications sent meanwhile are
                    // caught by the slow poll and the heartbeat's cancel check.
                    tracing::warn!(error = %err, "notification listener lost its connection");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    Wakeup::Queue
                }
            };
            if tx.send(wakeup).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

async fn main_loop(
    env: AttemptEnv,
    worker_id: Uuid,
    mut wakeups: mpsc::UnboundedReceiver<Wakeup>,
    mut stopped: watch::Receiver<bool>,
) {
    let config = env.config.clone();
    let mut active: HashMap<Uuid, Active> = HashMap::new();
    let mut free_slots: Vec<usize> = (0..config.slots).rev().collect();
    let mut attempts: JoinSet<Uuid> = JoinSet::new();
    let mut tasks: HashMap<tokio::task::Id, Uuid> = HashMap::new();
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    let mut poll = tokio::time::interval(config.poll_interval);

    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = heartbeat.tick() => {
                beat(&env.pool, worker_id, &config, &active).await;
                reap(&env.pool).await;
            }
            _ = poll.tick() => {}
            wakeup = wakeups.recv() => match wakeup {
                Some(Wakeup::Cancel(run_id)) => {
                    if let Some(run) = active.get(&run_id) {
                        tracing::info!(%run_id, "cancel requested");
                        run.control.request_cancel();
                    }
                    continue;
                }
                Some(Wakeup::Queue) => {}
                None => tracing::warn!("notification listener ended; polling only"),
            },
            Some(done) = attempts.join_next_with_id() => {
                finish(done, &mut tasks, &mut active, &mut free_slots)
            }
        }
        let slots = Slots {
            active: &mut active,
            free: &mut free_slots,
            tasks: &mut tasks,
        };
        fill_slots(&env, worker_id, slots, &mut attempts).await;
    }

    tracing::info!(
        running = active.len(),
        "scheduler stopping; releasing its runs"
    );
    for run in active.values() {
        run.control.request_shutdown();
    }
    while !attempts.is_empty() {
        tokio::select! {
            _ = heartbeat.tick() => beat(&env.pool, worker_id, &config, &active).await,
            Some(done) = attempts.join_next_with_id() => {
                finish(done, &mut tasks, &mut active, &mut free_slots)
            }
        }
    }
    if let Err(err) = worker::mark_stopped(&env.pool, worker_id).await {
        tracing::warn!(error = %err, "marking the worker stopped failed");
    }
    tracing::info!("scheduler stopped");
}

fn finish(
    done: Result<(tokio::task::Id, Uuid), tokio::task::JoinError>,
    tasks: &mut HashMap<tokio::task::Id, Uuid>,
    active: &mut HashMap<Uuid, Active>,
    free_slots: &mut Vec<usize>,
) {
    let task_id = match &done {
        Ok((task_id, _)) => *task_id,
        Err(err) => {
            // The run's lease is no longer renewed, so the reaper takes it back.
            tracing::error!(error = %err, "an attempt task failed");
            err.id()
        }
    };
    let Some(run_id) = tasks.remove(&task_id) else {
        return;
    };
    if let Some(run) = active.remove(&run_id) {
        free_slots.push(run.slot);
    }
}

/// The bookkeeping of slots: which runs hold which slot, under which task.
struct Slots<'a> {
    active: &'a mut HashMap<Uuid, Active>,
    free: &'a mut Vec<usize>,
    tasks: &'a mut HashMap<tokio::task::Id, Uuid>,
}

async fn fill_slots(
    env: &AttemptEnv,
    worker_id: Uuid,
    slots: Slots<'_>,
    attempts: &mut JoinSet<Uuid>,
) {
    while let Some(&slot) = slots.free.last() {
        let claimed = match claim_next(&env.pool, worker_id, env.config.lease_ttl).await {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "claiming a run failed");
                return;
            }
        };
        slots.free.pop();
        let control = Arc::new(AttemptControl::default());
        let run_id = claimed.run_id;
        tracing::info!(%run_id, attempt = claimed.attempt, slot, "run claimed");
        let active = Active {
            attempt: claimed.attempt,
            slot,
            control: control.clone(),
        };
        slots.active.insert(run_id, active);
        let device = env.config.device_for_slot(slot).to_owned();
        let env = env.clone();
        let handle = attempts.spawn(async move {
            attempt::run(env, claimed, device, control).await;
            run_id
        });
        slots.tasks.insert(handle.id(), run_id);
    }
}

/// Renews the worker row and the lease of every active run; forwards cancels seen in the run
/// rows and tells attempts that lost their lease to stop.
async fn beat(pool: &PgPool, worker_id: Uuid, config: &Config, active: &HashMap<Uuid, Active>) {
    if let Err(err) = worker::beat(pool, worker_id).await {
        tracing::warn!(error = %err, "worker heartbeat failed");
    }
    for (run_id, run) in active {
        match worker::renew_lease(pool, *run_id, run.attempt, config.lease_ttl).await {
            Ok(LeaseState::Held { cancel_requested }) => {
                if cancel_requested {
                    run.control.request_cancel();
                }
            }
            Ok(LeaseState::Lost) => {
                tracing::warn!(%run_id, attempt = run.attempt, "lease lost");
                run.control.lose_lease();
            }
            Err(err) => tracing::warn!(%run_id, error = %err, "renewing a lease failed"),
        }
    }
}

async fn reap(pool: &PgPool) {
    if let Err(err) = reap_expired(pool).await {
        tracing::warn!(error = format!("{err:#}"), "reaping expired leases failed");
    }
}
