//! Unsupervised Data Augmentation: one network trained on labeled data plus a consistency
//! loss that makes its prediction on the strong view match its sharpened prediction on the
//! weak view, for images where that prediction is confident.
//!
//! This is the teacher of MPL without the feedback term, on its own.

use anyhow::{Context, Result};
use tch::Tensor;

use super::{Core, Metrics, StepBatch, label_accuracy, rows, split_rows, uda_term};
use crate::{losses, schedule::warmup_cosine};

/// The UDA learner.
pub struct Uda {
    pub(super) core: Core,
}

impl Uda {
    pub(super) fn new(core: Core) -> Uda {
        Uda { core }
    }

    /// One step: a single train-mode forward on `[x_l, u_w, u_s]`, then
    /// `CE_eps(y_l, l) + w_uda * L_uda`, backward, clip, step, EMA.
    pub fn train_step(&mut self, step: u64, batch: &StepBatch) -> Result<Metrics> {
        let (u_w, u_s) = batch.unlabeled("uda")?;
        let spec = &self.core.spec;
        let settings = &spec.teacher_optimizer;
        let lr = warmup_cosine(
            step,
            0,
            settings.warmup_steps,
            spec.total_steps,
            settings.lr,
        );

        let inputs = Tensor::cat(&[&batch.x_l, u_w, u_s], 0);
        let logits = self.core.student.model.forward_t(&inputs, true);
        let parts = split_rows(&logits, &[rows(&batch.x_l), rows(u_w), rows(u_s)]);
        let (logits_l, logits_w, logits_s) = (&parts[0], &parts[1], &parts[2]);

        let sup = losses::cross_entropy(logits_l, &batch.y_l, spec.label_smoothing)
            .context("supervised term of uda")?;
        let uda = uda_term(logits_w, logits_s, &spec.uda, step)?;
        let loss = &sup + &uda.loss * uda.weight;

        let grad_norm = self.core.step_student(&loss, lr);

        let mut metrics = Metrics::from([
            ("student/loss".into(), loss.double_value(&[])),
            ("student/sup".into(), sup.double_value(&[])),
            ("student/uda".into(), uda.loss.double_value(&[])),
            ("uda/weight".into(), uda.weight),
            ("uda/mask_rate".into(), uda.mask_rate),
            ("lr/student".into(), lr),
        ]);
        if let Some(norm) = grad_norm {
            metrics.insert("student/grad_norm".into(), norm);
        }
        // How often the weak view's argmax, the class UDA's target favours, is the true class.
        let targets = tch::no_grad(|| logits_w.argmax(-1, false));
        if let Some(accuracy) = label_accuracy(&targets, batch.y_u.as_ref()) {
            metrics.insert("pseudo/accuracy".into(), accuracy);
        }
        Ok(metrics)
    }
}
