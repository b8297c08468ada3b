//! Supervised learning: one network, label-smoothed cross entropy on the labeled batch.
//!
//! The baseline that shows what the unlabeled data adds. Unlabeled views in the batch, if any,
//! are ignored.

use anyhow::{Context, Result};

use super::{Core, Metrics, StepBatch};
use crate::{losses, schedule::warmup_cosine};

/// The supervised learner.
pub struct Supervised {
    pub(super) core: Core,
}

impl Supervised {
    pub(super) fn new(core: Core) -> Supervised {
        Supervised { core }
    }

    /// One step: forward in train mode, `CE_eps(y_l, S(x_l))`, backward, clip, step, EMA.
    pub fn train_step(&mut self, step: u64, batch: &StepBatch) -> Result<Metrics> {
        let spec = &self.core.spec;
        let settings = &spec.teacher_optimizer;
        let lr = warmup_cosine(
            step,
            0,
            settings.warmup_steps,
            spec.total_steps,
            settings.lr,
        );
        let eps = spec.label_smoothing;

        let logits = self.core.student.model.forward_t(&batch.x_l, true);
        let loss = losses::cross_entropy(&logits, &batch.y_l, eps).context("supervised loss")?;

        let grad_norm = self.core.step_student(&loss, lr);

        let value = loss.double_value(&[]);
        let mut metrics = Metrics::from([
            ("student/loss".into(), value),
            ("student/sup".into(), value),
            ("lr/student".into(), lr),
        ]);
        if let Some(norm) = grad_norm {
            metrics.insert("student/grad_norm".into(), norm);
        }
        Ok(metrics)
    }
}
