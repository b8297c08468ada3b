//! The trainer's event protocol: one JSON object per line on stdout, tagged by `event`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One line of the trainer's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Training began (or resumed) at `step`.
    Started {
        step: u64,
        total_steps: u64,
        /// The device actually used, e.g. `cpu` or `cuda:0`.
        device: String,
        /// Checkpoint directory this attempt resumed from, if any.
        resumed_from: Option<String>,
        /// Sizes of the data actually used.
        num_labeled: u64,
        num_unlabeled: u64,
        num_eval: u64,
        num_classes: u64,
        /// How batch-norm statistics are kept usable on this budget (see docs/training.md).
        batch_norm_policy: String,
    },
    /// Where training stands; emitted every few steps.
    Progress {
        step: u64,
        total_steps: u64,
        /// `mpl`, `uda`, `supervised` or `finetune`.
        phase: String,
        images_per_sec: f64,
        eta_secs: f64,
    },
    /// Scalar training metrics at `step`, named as in MPL.md (`teacher/loss`, `h`, ...).
    Metrics {
        step: u64,
        values: BTreeMap<String, f64>,
    },
    /// An evaluation of one model on one split.
    Eval {
        step: u64,
        model: ModelRole,
        /// `eval` (the held-out test source) or `validation`.
        split: String,
        top1: f64,
        top5: f64,
        loss: f64,
        per_class_accuracy: Vec<f64>,
        /// Rows are true classes, columns predictions; present on the final evaluation.
        confusion_matrix: Option<Vec<Vec<u64>>>,
    },
    /// A checkpoint directory was written atomically.
    Checkpoint {
        step: u64,
        /// Absolute path of the checkpoint directory.
        path: String,
        kind: CheckpointKind,
        files: Vec<CheckpointFile>,
    },
    /// The run completed; final metrics (e.g. `student/top1`, `finetuned/top1`).
    Finished {
        step: u64,
        metrics: BTreeMap<String, f64>,
    },
    /// SIGTERM was honoured: the last checkpoint is at `checkpoint`.
    Stopped {
        step: u64,
        checkpoint: Option<String>,
    },
    /// The run cannot continue.
    Failed { reason: String },
}

/// Which network an evaluation or export refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    Teacher,
    Student,
    Ema,
    Finetuned,
}

/// Why a checkpoint was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// The most recent periodic checkpoint (resume point).
    Latest,
    /// Best student on the validation split (or eval split when no validation is held out).
    Best,
    /// Written when the run finished.
    Final,
}

/// One file of a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointFile {
    /// File name relative to the checkpoint directory.
    pub name: String,
    pub size_bytes: u64,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

impl Event {
    /// Serialises the event as one line (without the trailing newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("events always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_by_event_field() {
        let line = Event::Failed {
            reason: "boom".into(),
        }
        .to_line();
        assert_eq!(line, r#"{"event":"failed","reason":"boom"}"#);
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(
            back,
            Event::Failed {
                reason: "boom".into()
            }
        );
    }
}
