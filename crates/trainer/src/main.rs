//! `trainer`: the command-line entry point (see [`mpl_trainer::cli`]).

use clap::Parser;
use mpl_trainer::cli::{self, Cli};
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

fn main() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    if std::env::var_os("MPL_STOP_WITH_PARENT").is_some_and(|v| v == "1") {
        stop_when_orphaned();
    }
    let cli = Cli::parse();
    std::process::exit(cli::execute(cli));
}

/// Stops the run (as SIGTERM would: finish the step, checkpoint, exit) once the process that
/// started the trainer is gone. A scheduler killed with SIGKILL cannot stop its trainers, and a
/// trainer left running would keep a CPU or GPU busy for a run that another scheduler resumes.
fn stop_when_orphaned() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if std::os::unix::process::parent_id() != parent {
                tracing::warn!("the trainer's parent process is gone; stopping the run");
                let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
                return;
            }
        }
    });
}
