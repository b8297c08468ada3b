//! The trainer: Meta Pseudo Labels, UDA and supervised training on libtorch.
//!
//! One run, one process. It reads a [`mpl_protocol::RunSpec`] and local data files, writes
//! JSON-lines events on stdout, logs on stderr and checkpoints to a local directory. It knows
//! nothing of Postgres or HTTP, so the ML can be developed, tested and benchmarked on its own.

pub mod algorithms;
pub mod checkpoint;
pub mod cli;
pub mod device;
pub mod ema;
pub mod evaluate;
pub mod export;
pub mod losses;
pub mod models;
pub mod optim;
pub mod pipeline;
pub mod runner;
pub mod schedule;

/// An error caused by the user's input (spec, command line, data files) rather than by
/// training itself; the process exits with `mpl_protocol::exit_code::INVALID_INPUT`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    /// Wraps a message as an input error inside an [`anyhow::Error`].
    pub fn error(message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(InvalidInput(message.into()))
    }
}

/// Whether an error (or any error it wraps) is an [`InvalidInput`].
pub fn is_invalid_input(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<InvalidInput>())
}
