//! `mpl-scheduler`: a scheduler on its own, for machines that only run trainers.
//!
//! Configured by the same environment variables as the api (see `docs/operations.md`). Stops
//! cleanly on SIGTERM or SIGINT: running trainers are asked to checkpoint and their runs go
//! back to the queue for another scheduler.

use anyhow::Context;
use mpl_scheduler::{Config, Scheduler};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let config = Config::from_env()?;
    tracing::info!(
        slots = config.slots,
        devices = ?config.devices,
        trainer = %config.trainer_bin.display(),
        "starting the scheduler"
    );
    let handle = Scheduler::start(config).await?;

    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    handle.shutdown().await
}
