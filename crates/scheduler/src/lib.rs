//! The scheduler: the run queue and the supervisor of trainer processes.
//!
//! A scheduler registers itself as a worker, claims queued runs with `FOR UPDATE SKIP LOCKED`
//! into its slots, holds them with leases its heartbeat renews, and runs one `trainer` child
//! process per claimed run. It streams the trainer's events into Postgres in fenced batches,
//! stores its checkpoints in object storage, and maps the way the trainer exits to the run's
//! next status. Several schedulers may share one database; each also reaps runs whose lease
//! expired, so a lost machine's runs are queued again and resume from their last checkpoint.
//!
//! Every write on behalf of an attempt carries the attempt number (the fencing token), so an
//! attempt that lost its lease cannot change a run another scheduler now owns.

pub mod attempt;
pub mod checkpoints;
pub mod config;
pub mod datasets;
pub mod ingest;
pub mod process;
pub mod queue;
pub mod scheduler;
pub mod worker;

pub use config::Config;
pub use scheduler::{Scheduler, SchedulerHandle};

/// The platform's migrations, for binaries and tests that prepare a database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");
