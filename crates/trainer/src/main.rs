//! `trainer`: the command-line entry point (see [`mpl_trainer::cli`]).

use clap::Parser;
use mpl_trainer::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let cli = Cli::parse();
    std::process::exit(cli::execute(cli));
}
