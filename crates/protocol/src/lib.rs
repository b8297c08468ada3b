//! The contract between the api, the scheduler and the trainer.
//!
//! Everything that crosses a process boundary lives here, with serde and utoipa schemas, so the
//! three components cannot drift apart: the run spec ([`spec::RunSpec`]) a user submits and the
//! trainer reads, the JSON-lines [`events::Event`]s the trainer writes on stdout, and the exit
//! codes the scheduler interprets.

pub mod events;
pub mod spec;

pub use events::{CheckpointFile, CheckpointKind, Event, ModelRole};
pub use spec::{FieldError, RunSpec, SpecError};

/// Exit codes of the `trainer` process.
pub mod exit_code {
    /// The run finished all its steps (including fine-tuning).
    pub const FINISHED: i32 = 0;
    /// Training failed; the last `failed` event says why.
    pub const FAILED: i32 = 1;
    /// The spec, the command line or an input file was invalid; retrying will not help.
    pub const INVALID_INPUT: i32 = 2;
    /// SIGTERM (or SIGINT) was received: a checkpoint was written and `stopped` emitted.
    pub const STOPPED: i32 = 3;
}
