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
