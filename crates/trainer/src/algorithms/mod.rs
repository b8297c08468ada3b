//! The training algorithms: Meta Pseudo Labels, UDA and plain supervised learning.
//!
//! A [`Learner`] owns the networks of one run and knows how to take one training step from a
//! [`StepBatch`]. It computes its own learning rates from the run spec, so the caller only
//! supplies the global step and the data. Everything random inside a step is dropout, drawn
//! from libtorch's generator, which the caller re-seeds before each step.
//!
//! Which network is which:
//! - `mpl`: a teacher and a student (the student is what users export);
//! - `uda` and `supervised`: a single network, called the student, trained with the
//!   *teacher's* optimizer settings (the spec's `teacher_optimizer`) on the schedule that
//!   starts at step 0.
//!
//! Metric names follow MPL.md. The single-network algorithms report `student/loss`,
//! `student/sup`, `student/uda` (uda only), `uda/mask_rate` (uda only) and `lr/student`.
//! Fine-tuning reports `finetune/loss`, `finetune/accuracy` and `lr/finetune`.
//!
//! Fine-tuning runs the student with `forward_t(.., train = true)`: batch norm normalises with
//! the batch's statistics as in the reference, but dropout stays active because a [`Model`]
//! has a single train switch. With the paper's tiny fine-tuning rate the difference is small;
//! evaluating in train mode instead would be worse on short budgets (see MPL.md's pitfall).

pub mod mpl;
pub mod supervised;
pub mod uda;

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use mpl_protocol::{
    ModelRole, RunSpec,
    spec::{Algorithm, OptimizerSpec, UdaSpec},
};
use tch::{Kind, Tensor, nn::ModuleT, nn::VarStore};

use crate::{ema::Ema, losses, models::Model, optim::Sgd};

/// Metrics of one step, by name.
pub type Metrics = BTreeMap<String, f64>;

/// A network with its variables and its optimizer.
pub struct Network {
    /// The network's variables (what checkpoints save).
    pub vs: VarStore,
    /// The network built on `vs`.
    pub model: Model,
    /// The optimizer over `vs`'s trainable variables.
    pub optimizer: Sgd,
}

impl Network {
    /// Wraps a freshly built model with an optimizer configured from `settings`.
    pub fn new(vs: VarStore, model: Model, settings: &OptimizerSpec) -> Network {
        let optimizer = sgd_from(&vs, settings);
        Network {
            vs,
            model,
            optimizer,
        }
    }
}

/// One training step's inputs, already on the device, normalised f32 NCHW; labels i64.
pub struct StepBatch {
    /// Labeled images `[B, C, H, W]`.
    pub x_l: Tensor,
    /// Their labels `[B]`.
    pub y_l: Tensor,
    /// Weak views of the unlabeled images `[mu B, C, H, W]` (None for supervised).
    pub u_w: Option<Tensor>,
    /// Strong views of the same unlabeled images, in the same order (None for supervised).
    pub u_s: Option<Tensor>,
    /// The true classes of the unlabeled images `[mu B]`, when their source has labels (the
    /// rest of a labeled source, for example). No loss reads them: they only measure how often
    /// the pseudo labels are right (`pseudo/accuracy`).
    pub y_u: Option<Tensor>,
}

impl StepBatch {
    /// The weak and strong unlabeled views, or an error naming the algorithm that needs them.
    fn unlabeled(&self, algorithm: &str) -> Result<(&Tensor, &Tensor)> {
        match (&self.u_w, &self.u_s) {
            (Some(w), Some(s)) if w.size() == s.size() => Ok((w, s)),
            (Some(w), Some(s)) => bail!(
                "{algorithm}: weak views {:?} and strong views {:?} differ in shape",
                w.size(),
                s.size()
            ),
            _ => bail!("{algorithm} needs unlabeled images (weak and strong views) in every step"),
        }
    }
}

/// The networks of a run and the algorithm that trains them.
pub enum Learner {
    /// One network on labeled data.
    Supervised(supervised::Supervised),
    /// One network with the UDA consistency loss.
    Uda(uda::Uda),
    /// Teacher and student (Meta Pseudo Labels).
    Mpl(mpl::Mpl),
}

/// What every algorithm has: the spec, the student, its EMA and the fine-tuning optimizer.
pub struct Core {
    spec: RunSpec,
    student: Network,
    ema: Option<Ema>,
    finetune: Option<Sgd>,
}

impl Learner {
    /// `build_network(role)` builds a fresh Network ("teacher" or "student") on the device;
    /// `build_ema()` builds the EMA copy of the student (None when spec.ema_decay == 0).
    /// For `supervised` and `uda` the single network is the "student" (it is what users export).
    ///
    /// The optimizers are (re)configured here from the spec whatever the builder chose, the
    /// EMA starts as an exact copy of the student and its decay is the spec's `ema_decay`.
    pub fn new(
        spec: &RunSpec,
        build_network: &mut dyn FnMut(&str) -> Result<Network>,
        build_ema: &mut dyn FnMut() -> Result<Option<Ema>>,
    ) -> Result<Learner> {
        let teacher = match spec.algorithm {
            Algorithm::Mpl => Some(build_role(
                build_network,
                "teacher",
                &spec.teacher_optimizer,
            )?),
            Algorithm::Uda | Algorithm::Supervised => None,
        };
        let student_settings = match spec.algorithm {
            Algorithm::Mpl => &spec.student_optimizer,
            Algorithm::Uda | Algorithm::Supervised => &spec.teacher_optimizer,
        };
        let student = build_role(build_network, "student", student_settings)?;
        let ema = build_ema()?;
        let core = Core::new(spec, student, ema)?;
        Ok(match (spec.algorithm, teacher) {
            (Algorithm::Mpl, Some(teacher)) => Learner::Mpl(mpl::Mpl::new(core, teacher)),
            (Algorithm::Uda, _) => Learner::Uda(uda::Uda::new(core)),
            _ => Learner::Supervised(supervised::Supervised::new(core)),
        })
    }

    /// One step at global step `step` (0-based); returns metrics named as in MPL.md
    /// (`teacher/loss`, `teacher/sup`, `teacher/uda`, `teacher/mpl`, `student/loss`, `h`,
    /// `h_baseline`, `uda/mask_rate`, `pseudo/confidence_mean`, `pseudo/agreement_with_weak`,
    /// `lr/teacher`, `lr/student`), plus `pseudo/accuracy` when the unlabeled images' classes
    /// are known. Learning rates are computed inside from the spec.
    pub fn train_step(&mut self, step: u64, batch: &StepBatch) -> Result<Metrics> {
        match self {
            Learner::Supervised(s) => s.train_step(step, batch),
            Learner::Uda(u) => u.train_step(step, batch),
            Learner::Mpl(m) => m.train_step(step, batch),
        }
    }

    /// One fine-tuning step of the student alone (`finetune_step` counts from 0), dropout off;
    /// uses its own Sgd created on first call (spec.finetune), whose state is in optimizer_state.
    ///
    /// The rate is the constant `spec.finetune.lr`; the loss is the label-smoothed cross
    /// entropy of the main phase. See the module documentation about dropout.
    /// The step index is accepted for symmetry with `train_step`; the constant rate does not
    /// depend on it.
    pub fn finetune_step(
        &mut self,
        _finetune_step: u64,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Metrics> {
        self.core_mut().finetune_step(x, y)
    }

    /// Models to evaluate: (Teacher, ..) for mpl only, (Student, ..), (Ema, ..) when enabled.
    pub fn eval_models(&self) -> Vec<(ModelRole, &dyn ModuleT)> {
        let mut models: Vec<(ModelRole, &dyn ModuleT)> = Vec::new();
        if let Learner::Mpl(m) = self {
            models.push((ModelRole::Teacher, &*m.teacher.model));
        }
        let core = self.core();
        models.push((ModelRole::Student, &*core.student.model));
        if let Some(ema) = &core.ema {
            models.push((ModelRole::Ema, &*ema.model));
        }
        models
    }

    /// Var stores to checkpoint by file stem: "teacher" (mpl only), "student", "ema".
    pub fn var_stores(&self) -> Vec<(&'static str, &VarStore)> {
        let mut stores: Vec<(&'static str, &VarStore)> = Vec::new();
        if let Learner::Mpl(m) = self {
            stores.push(("teacher", &m.teacher.vs));
        }
        let core = self.core();
        stores.push(("student", &core.student.vs));
        if let Some(ema) = &core.ema {
            stores.push(("ema", &ema.vs));
        }
        stores
    }

    /// The same var stores as [`Learner::var_stores`], mutably (to load a checkpoint).
    pub fn var_stores_mut(&mut self) -> Vec<(&'static str, &mut VarStore)> {
        let (teacher, core) = match self {
            Learner::Mpl(m) => (Some(&mut m.teacher), &mut m.core),
            Learner::Uda(u) => (None, &mut u.core),
            Learner::Supervised(s) => (None, &mut s.core),
        };
        let mut stores: Vec<(&'static str, &mut VarStore)> = Vec::new();
        if let Some(teacher) = teacher {
            stores.push(("teacher", &mut teacher.vs));
        }
        stores.push(("student", &mut core.student.vs));
        if let Some(ema) = &mut core.ema {
            stores.push(("ema", &mut ema.vs));
        }
        stores
    }

    /// Optimizer buffers, names prefixed "teacher." / "student." / "finetune.".
    pub fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        let mut named = Vec::new();
        if let Learner::Mpl(m) = self {
            named.extend(prefixed("teacher", &m.teacher.optimizer));
        }
        let core = self.core();
        named.extend(prefixed("student", &core.student.optimizer));
        if let Some(finetune) = &core.finetune {
            named.extend(prefixed("finetune", finetune));
        }
        named
    }

    /// Restores what [`Learner::optimizer_state`] saved. A name with an unknown prefix, or a
    /// teacher's state for an algorithm without a teacher, is an error.
    pub fn load_optimizer_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let mut groups: BTreeMap<&str, Vec<(String, Tensor)>> = BTreeMap::new();
        for (name, tensor) in named {
            let Some((owner, param)) = name.split_once('.') else {
                bail!("optimizer state {name:?} lacks a teacher./student./finetune. prefix");
            };
            groups
                .entry(owner)
                .or_default()
                .push((param.to_string(), tensor.shallow_clone()));
        }
        for owner in groups.keys() {
            if !["teacher", "student", "finetune"].contains(owner) {
                bail!("optimizer state has entries for {owner:?}, which is no network of a run");
            }
        }
        let teacher_state = groups.remove("teacher").unwrap_or_default();
        match self {
            Learner::Mpl(m) => m
                .teacher
                .optimizer
                .load_state(&teacher_state)
                .context("teacher")?,
            _ if !teacher_state.is_empty() => {
                bail!("optimizer state has a teacher, but this algorithm trains no teacher")
            }
            _ => {}
        }
        let core = self.core_mut();
        let student_state = groups.remove("student").unwrap_or_default();
        core.student
            .optimizer
            .load_state(&student_state)
            .context("student")?;
        if let Some(finetune_state) = groups.remove("finetune") {
            core.finetune_optimizer()
                .load_state(&finetune_state)
                .context("finetune")?;
        }
        Ok(())
    }

    /// Scalars that must survive a resume (e.g. the moving baseline of h).
    pub fn scalar_state(&self) -> serde_json::Value {
        match self {
            Learner::Mpl(m) => m.scalar_state(),
            Learner::Uda(_) | Learner::Supervised(_) => serde_json::json!({}),
        }
    }

    /// Restores what [`Learner::scalar_state`] saved.
    pub fn load_scalar_state(&mut self, v: &serde_json::Value) -> Result<()> {
        match self {
            Learner::Mpl(m) => m.load_scalar_state(v),
            Learner::Uda(_) | Learner::Supervised(_) => Ok(()),
        }
    }

    fn core(&self) -> &Core {
        match self {
            Learner::Supervised(s) => &s.core,
            Learner::Uda(u) => &u.core,
            Learner::Mpl(m) => &m.core,
        }
    }

    fn core_mut(&mut self) -> &mut Core {
        match self {
            Learner::Supervised(s) => &mut s.core,
            Learner::Uda(u) => &mut u.core,
            Learner::Mpl(m) => &mut m.core,
        }
    }
}

impl Core {
    fn new(spec: &RunSpec, student: Network, ema: Option<Ema>) -> Result<Core> {
        let mut ema = ema;
        if let Some(ema) = &mut ema {
            ema.decay = spec.ema_decay;
            ema.reset_to(&student.vs)?;
        }
        Ok(Core {
            spec: spec.clone(),
            student,
            ema,
            finetune: None,
        })
    }

    /// Backward of `loss`, optional clipping, an optimizer step of the student and the EMA
    /// update. Returns the gradient norm before clipping when clipping is on.
    fn step_student(&mut self, loss: &Tensor, lr: f64) -> Option<f64> {
        let optimizer = &mut self.student.optimizer;
        optimizer.zero_grad();
        loss.backward();
        let norm = self
            .spec
            .grad_clip
            .map(|clip| optimizer.clip_grad_norm(clip));
        optimizer.step(lr);
        if let Some(ema) = &mut self.ema {
            ema.update(&self.student.vs);
        }
        norm
    }

    fn finetune_optimizer(&mut self) -> &mut Sgd {
        let settings = &self.spec.finetune;
        let vs = &self.student.vs;
        self.finetune
            .get_or_insert_with(|| Sgd::new(vs, settings.momentum, true, settings.weight_decay))
    }

    fn finetune_step(&mut self, x: &Tensor, y: &Tensor) -> Result<Metrics> {
        let lr = self.spec.finetune.lr;
        let eps = self.spec.label_smoothing;
        let logits = self.student.model.forward_t(x, true);
        let loss = losses::cross_entropy(&logits, y, eps).context("fine-tuning loss")?;
        let accuracy = tch::no_grad(|| losses::accuracy(&logits, y))?;

        let optimizer = self.finetune_optimizer();
        optimizer.zero_grad();
        loss.backward();
        optimizer.step(lr);

        Ok(Metrics::from([
            ("finetune/loss".into(), loss.double_value(&[])),
            ("finetune/accuracy".into(), accuracy),
            ("lr/finetune".into(), lr),
        ]))
    }
}

/// The UDA consistency term of one step and what to log about it.
pub(crate) struct UdaTerm {
    /// `mean(m * CE(q, logits_strong))`, before weighting.
    pub loss: Tensor,
    /// `uda_weight * min(1, (step + 1) / ramp_steps)`.
    pub weight: f64,
    /// Fraction of unlabeled images whose sharpened weak-view confidence passed the threshold.
    pub mask_rate: f64,
}

/// UDA on the logits of the weak and strong views: the sharpened, detached weak-view
/// distribution is the target of the strong view, for confident images only.
pub(crate) fn uda_term(
    logits_weak: &Tensor,
    logits_strong: &Tensor,
    settings: &UdaSpec,
    step: u64,
) -> Result<UdaTerm> {
    let kind = losses::compute_kind(logits_weak);
    let target = (logits_weak.detach() / settings.temperature).softmax(-1, kind);
    let (confidence, _) = target.max_dim(-1, false);
    let mask = confidence.ge(settings.threshold).to_kind(kind);
    let per_sample = losses::soft_cross_entropy_per_sample(logits_strong, &target)?;
    let loss = (per_sample * &mask).mean(kind);
    let ramp = if settings.ramp_steps == 0 {
        1.0
    } else {
        ((step + 1) as f64 / settings.ramp_steps as f64).min(1.0)
    };
    Ok(UdaTerm {
        loss,
        weight: settings.weight * ramp,
        mask_rate: mask.mean(Kind::Double).double_value(&[]),
    })
}

/// The share of positions where two equally shaped class tensors agree.
pub(crate) fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    a.eq_tensor(b)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// The share of `predicted` classes equal to `truth`, when the truth is known.
pub(crate) fn label_accuracy(predicted: &Tensor, truth: Option<&Tensor>) -> Option<f64> {
    let truth = truth?;
    (truth.size() == predicted.size()).then(|| agreement(predicted, truth))
}

/// Splits logits of a concatenated batch into consecutive parts of the given sizes.
pub(crate) fn split_rows(logits: &Tensor, sizes: &[i64]) -> Vec<Tensor> {
    logits.split_with_sizes(sizes, 0)
}

/// Number of rows of a batch tensor.
pub(crate) fn rows(t: &Tensor) -> i64 {
    t.size().first().copied().unwrap_or(0)
}

fn sgd_from(vs: &VarStore, settings: &OptimizerSpec) -> Sgd {
    Sgd::new(
        vs,
        settings.momentum,
        settings.nesterov,
        settings.weight_decay,
    )
}

fn build_role(
    build_network: &mut dyn FnMut(&str) -> Result<Network>,
    role: &str,
    settings: &OptimizerSpec,
) -> Result<Network> {
    let mut network = build_network(role).with_context(|| format!("building the {role}"))?;
    network.optimizer = sgd_from(&network.vs, settings);
    Ok(network)
}

fn prefixed(owner: &str, optimizer: &Sgd) -> Vec<(String, Tensor)> {
    optimizer
        .state()
        .into_iter()
        .map(|(name, t)| (format!("{owner}.{name}"), t))
        .collect()
}
