//! The trainer as a child process: spawning it in its own process group and signalling it.

use std::path::Path;
use std::process::{ExitStatus, Stdio};

use anyhow::Context;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A running trainer and its output pipes.
pub struct TrainerProcess {
    /// The child; waited on by the supervisor.
    pub child: Child,
    /// JSON-lines events.
    pub stdout: ChildStdout,
    /// Log lines.
    pub stderr: ChildStderr,
    /// The trainer's process group, for signals.
    pub group: ProcessGroup,
}

/// The process group a trainer leads (its id is the trainer's pid).
#[derive(Debug, Clone, Copy)]
pub struct ProcessGroup(Option<i32>);

impl TrainerProcess {
    /// Starts `trainer_bin args...` in a new process group, with piped stdout and stderr.
    pub fn spawn(trainer_bin: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<Self> {
        let mut child = Command::new(trainer_bin)
            .args(args)
            // The trainer stops (with a checkpoint) if this process dies without stopping it.
            .env("MPL_STOP_WITH_PARENT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the trainer {}", trainer_bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the trainer's stdout was not piped")?;
        let stderr = child
            .stderr
            .take()
            .context("the trainer's stderr was not piped")?;
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
        Ok(TrainerProcess {
            child,
            stdout,
            stderr,
            group: ProcessGroup(pid),
        })
    }
}

impl ProcessGroup {
    /// Sends `signal` to the trainer's whole process group (it and anything it started).
    pub fn signal(&self, signal: Signal) {
        let Some(pid) = self.0 else { return };
        if let Err(err) = killpg(Pid::from_raw(pid), signal) {
            // ESRCH: the group is already gone, which is what the signal wanted anyway.
            if err != nix::errno::Errno::ESRCH {
                tracing::warn!(pid, ?signal, error = %err, "signalling the trainer failed");
            }
        }
    }
}

/// The exit code recorded for an exit status: the code, or 128 + the signal number.
pub fn exit_code_of(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
}
