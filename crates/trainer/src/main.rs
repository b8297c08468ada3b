//! `trainer`: the command-line entry point (see [`mpl_trainer::cli`]).

use clap::Parser;
use mpl_trainer::cli::{self, Cli};
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

fn main() {
    keep_freed_memory();
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

/// Tells glibc's allocator to keep the memory a training step frees for the next step.
///
/// Every step allocates and frees the same activations, each up to tens of megabytes. By
/// default glibc serves blocks that large with fresh `mmap`s and hands freed heap memory back
/// to the system, so each step pays page faults on all of it again: about 5 % of a WRN-28-2
/// MPL step on the CPU (docs/benchmarks.md). Blocks up to 32 MiB (the largest threshold
/// glibc accepts) now come from the heap, and freed memory stays there. The peak memory of a
/// step is reached every step anyway, so this keeps the resident size at that peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 32 << 20;
    const TOP_PAD_BYTES: libc::c_int = 256 << 20;
    // SAFETY: `mallopt` only changes allocator parameters and takes plain integers. It runs
    // first thing in `main`, before this process starts any thread, and glibc serialises
    // parameter changes with allocations under its own lock in any case.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD_BYTES);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

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
