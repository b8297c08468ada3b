//! Meta Pseudo Labels: MPL.md's six steps, in order.
//!
//! 1. Teacher forward (train mode) on `[x_l, u_w, u_s]`: supervised and UDA terms.
//! 2. Hard pseudo labels: the argmax of the teacher on the strong view (or, with
//!    `pseudo_label_view = "weak"`, the student learns the weak view's argmax while the teacher
//!    is rewarded for the strong view's).
//! 3. Student step on `[x_l, u_s]` with `CE_eps(y_hat, S(u_s))`; keep its (clipped) gradient
//!    `g_u`; update the EMA.
//! 4. Feedback `h`: `eta_S * <g_l', g_u>` with `g_l'` the labeled gradient of the *updated*
//!    student (`gradient`), or `loss_l_old - loss_l_new` (`loss_delta`); optionally minus a
//!    moving baseline.
//! 5. Teacher step on `L_sup + w_uda L_uda + h_used * CE(y_hat, t_s)`, `h_used` a constant, so
//!    the MPL gradient is `h_used * grad CE(y_hat, t_s)`.
//! 6. Metrics.
//!
//! The teacher's graph from step 1 stays alive across the student step, so the teacher runs one
//! forward per step. The feedback forward of the student (step 4) runs in train mode like the
//! first, but the student's batch-norm running statistics are restored afterwards: measuring
//! the feedback must not change the student.
//!
//! Student wait: before `student_wait_steps` the student does not train at all (no forward,
//! no step, no EMA update, so no momentum builds up from steps whose rate is 0), `h` is 0 and
//! the teacher learns from its supervised and UDA terms alone. The student's metrics are
//! absent from those steps.
//!
//! Note on `gradient` feedback with momentum: `h = eta_S <g_l', g_u>` follows the paper's
//! derivation for plain SGD. With (Nesterov) momentum the student actually moves along its
//! momentum direction, so `loss_delta` and `gradient` agree to first order only without
//! momentum and weight decay.

use anyhow::{Context, Result, bail};
use mpl_protocol::spec::{Feedback, PseudoLabelView};
use tch::{Kind, Tensor, nn::VarStore};

use super::{
    Core, Metrics, Network, StepBatch, agreement, label_accuracy, rows, split_rows, uda_term,
};
use crate::{losses, schedule::warmup_cosine};

/// The Meta Pseudo Labels learner: a teacher, a student and the moving baseline of `h`.
pub struct Mpl {
    pub(super) core: Core,
    pub(super) teacher: Network,
    h_baseline: f64,
}

/// The teacher's forward of step 1 and what steps 2 and 5 need from it.
struct TeacherPass {
    sup: Tensor,
    uda_loss: Tensor,
    uda_weight: f64,
    mask_rate: f64,
    /// Teacher logits on the strong view (with their graph, for the MPL term).
    logits_strong: Tensor,
    /// Argmax of the strong view: the action the teacher is rewarded for.
    labels_strong: Tensor,
    /// The pseudo labels the student learns from (strong or weak view's argmax).
    student_labels: Tensor,
    confidence_mean: f64,
    agreement_with_weak: f64,
    /// How often the student's pseudo labels are the true class (when that is known).
    accuracy: Option<f64>,
}

/// The student's step 3 and the feedback of step 4.
struct StudentPass {
    loss: f64,
    loss_l_old: f64,
    loss_l_new: f64,
    h: f64,
    grad_norm: Option<f64>,
}

impl Mpl {
    pub(super) fn new(core: Core, teacher: Network) -> Mpl {
        Mpl {
            core,
            teacher,
            h_baseline: 0.0,
        }
    }

    /// One MPL step at global step `step`.
    pub fn train_step(&mut self, step: u64, batch: &StepBatch) -> Result<Metrics> {
        let (u_w, u_s) = batch.unlabeled("mpl")?;
        let spec = &self.core.spec;
        let lr_teacher = warmup_cosine(
            step,
            0,
            spec.teacher_optimizer.warmup_steps,
            spec.total_steps,
            spec.teacher_optimizer.lr,
        );
        let lr_student = warmup_cosine(
            step,
            spec.student_wait_steps,
            spec.student_optimizer.warmup_steps,
            spec.total_steps,
            spec.student_optimizer.lr,
        );
        let student_trains = step >= spec.student_wait_steps;

        let teacher = self.teacher_forward(step, batch, u_w, u_s)?;

        let student = if student_trains {
            Some(self.student_step(batch, u_s, &teacher.student_labels, lr_student)?)
        } else {
            None
        };

        let h = student.as_ref().map_or(0.0, |s| s.h);
        let h_used = match student {
            Some(_) => self.apply_baseline(h),
            None => 0.0,
        };

        let (teacher_loss, teacher_mpl, teacher_norm) =
            self.teacher_step(&teacher, h_used, lr_teacher)?;

        let mut metrics = Metrics::from([
            ("teacher/loss".into(), teacher_loss),
            ("teacher/sup".into(), teacher.sup.double_value(&[])),
            ("teacher/uda".into(), teacher.uda_loss.double_value(&[])),
            ("teacher/mpl".into(), teacher_mpl),
            ("h".into(), h),
            ("h_used".into(), h_used),
            ("h_baseline".into(), self.h_baseline),
            ("uda/weight".into(), teacher.uda_weight),
            ("uda/mask_rate".into(), teacher.mask_rate),
            ("pseudo/confidence_mean".into(), teacher.confidence_mean),
            (
                "pseudo/agreement_with_weak".into(),
                teacher.agreement_with_weak,
            ),
            ("lr/teacher".into(), lr_teacher),
            ("lr/student".into(), lr_student),
        ]);
        if let Some(norm) = teacher_norm {
            metrics.insert("teacher/grad_norm".into(), norm);
        }
        if let Some(accuracy) = teacher.accuracy {
            metrics.insert("pseudo/accuracy".into(), accuracy);
        }
        if let Some(s) = student {
            metrics.insert("student/loss".into(), s.loss);
            metrics.insert("student/loss_l_old".into(), s.loss_l_old);
            metrics.insert("student/loss_l_new".into(), s.loss_l_new);
            if let Some(norm) = s.grad_norm {
                metrics.insert("student/grad_norm".into(), norm);
            }
        }
        Ok(metrics)
    }

    /// Steps 1 and 2: one teacher forward on `[x_l, u_w, u_s]`, its losses and pseudo labels.
    fn teacher_forward(
        &self,
        step: u64,
        batch: &StepBatch,
        u_w: &Tensor,
        u_s: &Tensor,
    ) -> Result<TeacherPass> {
        let spec = &self.core.spec;
        let inputs = Tensor::cat(&[&batch.x_l, u_w, u_s], 0);
        let logits = self.teacher.model.forward_t(&inputs, true);
        let parts = split_rows(&logits, &[rows(&batch.x_l), rows(u_w), rows(u_s)]);
        let (logits_l, logits_w, logits_s) = (&parts[0], &parts[1], &parts[2]);

        let sup = losses::cross_entropy(logits_l, &batch.y_l, spec.label_smoothing)
            .context("teacher's supervised term")?;
        let uda = uda_term(logits_w, logits_s, &spec.uda, step)?;

        let (probs_strong, labels_strong) = confident_labels(logits_s);
        let (probs_weak, labels_weak) = confident_labels(logits_w);
        let (student_labels, confidence) = match spec.mpl.pseudo_label_view {
            PseudoLabelView::Strong => (labels_strong.shallow_clone(), probs_strong),
            PseudoLabelView::Weak => (labels_weak.shallow_clone(), probs_weak),
        };
        let agreement_with_weak = agreement(&labels_strong, &labels_weak);
        let accuracy = label_accuracy(&student_labels, batch.y_u.as_ref());

        Ok(TeacherPass {
            sup,
            uda_loss: uda.loss,
            uda_weight: uda.weight,
            mask_rate: uda.mask_rate,
            logits_strong: logits_s.shallow_clone(),
            labels_strong,
            student_labels,
            confidence_mean: confidence.mean(Kind::Double).double_value(&[]),
            agreement_with_weak,
            accuracy,
        })
    }

    /// Steps 3 and 4: the student learns the pseudo labels, then the feedback is measured.
    fn student_step(
        &mut self,
        batch: &StepBatch,
        u_s: &Tensor,
        pseudo_labels: &Tensor,
        lr: f64,
    ) -> Result<StudentPass> {
        let core = &mut self.core;
        let eps = core.spec.label_smoothing;
        let num_labeled = rows(&batch.x_l);
        let inputs = Tensor::cat(&[&batch.x_l, u_s], 0);
        let logits = core.student.model.forward_t(&inputs, true);
        let parts = split_rows(&logits, &[num_labeled, rows(u_s)]);
        let (logits_l, logits_s) = (&parts[0], &parts[1]);

        let loss = losses::cross_entropy(logits_s, pseudo_labels, eps)
            .context("student's pseudo-label loss")?;
        let loss_l_old = tch::no_grad(|| losses::cross_entropy(logits_l, &batch.y_l, 0.0))
            .context("student's labeled loss")?
            .double_value(&[]);

        let optimizer = &mut core.student.optimizer;
        optimizer.zero_grad();
        loss.backward();
        let grad_norm = core
            .spec
            .grad_clip
            .map(|clip| optimizer.clip_grad_norm(clip));
        let gradient_feedback = core.spec.mpl.feedback == Feedback::Gradient;
        let g_u = gradient_feedback.then(|| optimizer.gradients());
        optimizer.step(lr);
        if let Some(ema) = &mut core.ema {
            ema.update(&core.student.vs);
        }

        let (loss_l_new, h) = self.feedback(batch, g_u.as_deref(), lr, loss_l_old)?;
        Ok(StudentPass {
            loss: loss.double_value(&[]),
            loss_l_old,
            loss_l_new,
            h,
            grad_norm,
        })
    }

    /// Step 4: `h` from the updated student's labeled loss. With `g_u` (gradient feedback)
    /// `h = lr * <g_l', g_u>`, without it `h = loss_l_old - loss_l_new`. Returns
    /// `(loss_l_new, h)`. The student's batch-norm statistics are left as they were.
    fn feedback(
        &mut self,
        batch: &StepBatch,
        g_u: Option<&[Tensor]>,
        lr: f64,
        loss_l_old: f64,
    ) -> Result<(f64, f64)> {
        let student = &mut self.core.student;
        let saved = snapshot_buffers(&student.vs);
        let result = match g_u {
            Some(g_u) => {
                let logits = student.model.forward_t(&batch.x_l, true);
                let loss = losses::cross_entropy(&logits, &batch.y_l, 0.0)
                    .context("student's labeled loss after its step")?;
                student.optimizer.zero_grad();
                loss.backward();
                let dot = student.optimizer.gradient_dot(g_u)?;
                (loss.double_value(&[]), lr * dot)
            }
            None => {
                let loss = tch::no_grad(|| {
                    let logits = student.model.forward_t(&batch.x_l, true);
                    losses::cross_entropy(&logits, &batch.y_l, 0.0)
                })
                .context("student's labeled loss after its step")?
                .double_value(&[]);
                (loss, loss_l_old - loss)
            }
        };
        restore_buffers(&student.vs, &saved);
        Ok(result)
    }

    /// The optional moving baseline: `b <- b + (1 - beta) (h - b)`, then `h - b`.
    fn apply_baseline(&mut self, h: f64) -> f64 {
        let mpl = &self.core.spec.mpl;
        if !mpl.h_baseline {
            return h;
        }
        self.h_baseline += (1.0 - mpl.baseline_decay) * (h - self.h_baseline);
        h - self.h_baseline
    }

    /// Step 5: `L_T = L_sup + w_uda L_uda + h_used CE(y_hat, t_s)`; backward, clip, step.
    /// Returns the teacher's loss, its MPL term and the gradient norm when clipping.
    fn teacher_step(
        &mut self,
        pass: &TeacherPass,
        h_used: f64,
        lr: f64,
    ) -> Result<(f64, f64, Option<f64>)> {
        let mpl_ce = losses::cross_entropy(&pass.logits_strong, &pass.labels_strong, 0.0)
            .context("teacher's MPL term")?;
        let mpl = mpl_ce * h_used;
        let loss = &pass.sup + &pass.uda_loss * pass.uda_weight + &mpl;

        let optimizer = &mut self.teacher.optimizer;
        optimizer.zero_grad();
        loss.backward();
        let norm = self
            .core
            .spec
            .grad_clip
            .map(|clip| optimizer.clip_grad_norm(clip));
        optimizer.step(lr);

        Ok((loss.double_value(&[]), mpl.double_value(&[]), norm))
    }

    pub(super) fn scalar_state(&self) -> serde_json::Value {
        serde_json::json!({ "h_baseline": self.h_baseline })
    }

    pub(super) fn load_scalar_state(&mut self, v: &serde_json::Value) -> Result<()> {
        match v.get("h_baseline") {
            None => self.h_baseline = 0.0,
            Some(value) => match value.as_f64() {
                Some(b) => self.h_baseline = b,
                None => bail!("learner state: h_baseline must be a number, got {value}"),
            },
        }
        Ok(())
    }
}

/// Softmax confidence and argmax of each row, without gradient.
fn confident_labels(logits: &Tensor) -> (Tensor, Tensor) {
    tch::no_grad(|| logits.softmax(-1, Kind::Float).max_dim(-1, false))
}

/// Copies of the variables that do not train (batch-norm running statistics), by name.
fn snapshot_buffers(vs: &VarStore) -> Vec<(String, Tensor)> {
    vs.variables()
        .into_iter()
        .filter(|(_, t)| !t.requires_grad())
        .map(|(name, t)| (name, t.copy()))
        .collect()
}

fn restore_buffers(vs: &VarStore, saved: &[(String, Tensor)]) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, value) in saved {
            if let Some(var) = vars.get(name) {
                let _ = var.shallow_clone().f_copy_(value);
            }
        }
    });
}
