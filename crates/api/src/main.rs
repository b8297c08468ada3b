//! `mpl-server`: the api (and, by default, an in-process scheduler) in one process.
//!
//! `mpl-server` or `mpl-server serve` serves; `mpl-server migrate` applies the database
//! migrations and exits; `mpl-server openapi` prints the OpenAPI document.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mpl_api::Config;
use tracing_subscriber::EnvFilter;

/// The MPL training platform's server.
#[derive(Debug, Parser)]
#[command(name = "mpl-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the api (the default).
    Serve {
        /// Do not run a scheduler in this process (same as MPL_SCHEDULER=0).
        #[arg(long)]
        no_scheduler: bool,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Print the OpenAPI document and exit.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve {
        no_scheduler: false,
    }) {
        Command::Openapi => {
            print!("{}", mpl_api::openapi::document_json());
            Ok(())
        }
        Command::Migrate => {
            init_tracing();
            let config = Config::from_env()?;
            mpl_api::app::migrate(&config.database_url).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve { no_scheduler } => {
            init_tracing();
            let mut config = Config::from_env()?;
            if no_scheduler {
                config.scheduler_enabled = false;
            }
            serve(config).await
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let scheduler_enabled = config.scheduler_enabled;
    let app = mpl_api::build(config)
        .await
        .context("starting the api failed")?;
    eprintln!("MPL platform listening on http://127.0.0.1:{}/", app.port());

    // The in-process scheduler: started after the api has applied the migrations (it shares
    // the api's pool and store), stopped after the api has drained its requests, so running
    // trainers checkpoint and their runs return to the queue for another scheduler.
    let scheduler = if scheduler_enabled {
        let state = app.state();
        let config = mpl_scheduler::Config::from_env().context("scheduler configuration")?;
        let handle = mpl_scheduler::Scheduler::start_with(state.db, state.storage, config)
            .await
            .context("starting the in-process scheduler failed")?;
        Some(handle)
    } else {
        None
    };

    let served = app.run_until_stopped().await;
    if let Some(handle) = scheduler {
        handle.shutdown().await.context("stopping the scheduler")?;
    }
    served
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("MPL_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
