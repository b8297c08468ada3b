//! The run spec: one JSON document that says everything about a training run.
//!
//! Every field has the paper's default for CIFAR-10-4K (see `docs/training.md`), so the smallest
//! valid spec names only the labeled data. Unknown fields are rejected, and [`RunSpec::from_json`]
//! reports every bad field at once, by its dotted path.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A complete training run description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// `mpl` (teacher + student), `uda` (teacher alone, with UDA) or `supervised`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// The network used for both teacher and student.
    #[serde(default)]
    pub model: ModelSpec,
    /// Where the images come from and how they are split.
    pub data: DataSpec,
    /// Labeled images per step (`B`).
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Unlabeled images per step are `mu * batch_size`.
    #[serde(default = "defaults::mu")]
    pub mu: usize,
    /// Training steps before fine-tuning.
    #[serde(default = "defaults::total_steps")]
    pub total_steps: u64,
    /// Optimizer of the teacher (and of the single network for `uda` / `supervised`).
    #[serde(default)]
    pub teacher_optimizer: OptimizerSpec,
    /// Optimizer of the student.
    #[serde(default)]
    pub student_optimizer: OptimizerSpec,
    /// The student's learning rate is 0 for this many steps, so the teacher gets a head start.
    #[serde(default = "defaults::student_wait_steps")]
    pub student_wait_steps: u64,
    /// Clip gradients to this global norm; `null` disables clipping.
    #[serde(default)]
    pub grad_clip: Option<f64>,
    /// Label smoothing `eps` for the supervised and pseudo-label cross entropies.
    #[serde(default = "defaults::label_smoothing")]
    pub label_smoothing: f64,
    /// Meta Pseudo Labels settings (used when `algorithm` is `mpl`).
    #[serde(default)]
    pub mpl: MplSpec,
    /// UDA consistency settings (teacher of `mpl`, and `uda`).
    #[serde(default)]
    pub uda: UdaSpec,
    /// Data augmentation.
    #[serde(default)]
    pub augment: AugmentSpec,
    /// Decay of the student's exponential moving average; 0 disables the EMA.
    #[serde(default = "defaults::ema_decay")]
    pub ema_decay: f64,
    /// Fine-tuning of the student on labeled data after the main phase.
    #[serde(default)]
    pub finetune: FinetuneSpec,
    /// Evaluation schedule.
    #[serde(default)]
    pub eval: EvalSpec,
    /// Checkpoint schedule and retention.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Seed of every random choice (initialisation, split, data order, augmentation).
    #[serde(default)]
    pub seed: u64,
    /// Where and how to compute.
    #[serde(default)]
    pub device: DeviceSpec,
}

/// The training algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Meta Pseudo Labels: a teacher labels, a student learns, the teacher is rewarded.
    #[default]
    Mpl,
    /// Unsupervised Data Augmentation: one network, supervised + consistency loss.
    Uda,
    /// One network on labeled data only.
    Supervised,
}

/// Network architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    /// `wide_resnet`, `resnet18`, `resnet50` or `efficientnet_b0`.
    pub arch: Architecture,
    /// WideResNet depth (`6n + 4`).
    pub depth: usize,
    /// WideResNet widen factor.
    pub widen_factor: usize,
    /// Dropout before the classifier.
    pub dropout: f64,
    /// Batch-norm momentum in PyTorch's convention; `null` scales it with the step budget.
    pub bn_momentum: Option<f64>,
    /// Negative slope of the leaky ReLUs.
    pub leaky_relu_slope: f64,
}

/// Supported architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    #[default]
    WideResnet,
    Resnet18,
    Resnet50,
    EfficientnetB0,
}

/// Data sources and the labeled / unlabeled split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// The labeled source; `num_labeled` images are drawn from it, class-balanced.
    pub labeled: DataSource,
    /// A separate unlabeled source; when absent the rest of `labeled` (labels dropped) is used.
    #[serde(default)]
    pub unlabeled: Option<DataSource>,
    /// The held-out test source used for evaluation.
    #[serde(default)]
    pub eval: Option<DataSource>,
    /// Labeled images used for training (equal count per class where possible).
    #[serde(default = "defaults::num_labeled")]
    pub num_labeled: usize,
    /// Images held out of the labeled source for model selection ("best" checkpoint).
    #[serde(default)]
    pub num_validation: usize,
    /// Per-channel normalisation; computed from the labeled images when absent.
    #[serde(default)]
    pub normalization: Option<Normalization>,
}

/// One data source: a local path (trainer CLI) or a platform dataset id.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// A dataset registered with the platform; the scheduler resolves it to a local path.
    #[serde(default)]
    pub dataset_id: Option<Uuid>,
    /// A local file (or directory of CIFAR `.bin` batches).
    #[serde(default)]
    pub path: Option<String>,
    /// The IDX labels file, for `idx` sources with labels.
    #[serde(default)]
    pub labels_path: Option<String>,
    /// The format of `path`; required with `path`.
    #[serde(default)]
    pub format: Option<DataFormat>,
}

/// File formats the trainer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// IDX files of the MNIST family, gzip or raw.
    Idx,
    /// CIFAR-10 binary batches (`.bin`, or a tar / tar.gz of them).
    Cifar10,
    /// CIFAR-100 binary batches.
    Cifar100,
    /// Image folders (PNG / JPEG) in a tar, tar.gz or zip: one folder per class, flat if unlabeled.
    ImageFolder,
    /// The platform's canonical form, written at ingestion.
    Canonical,
}

/// Per-channel mean and standard deviation, on the 0..1 pixel scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// SGD with Nesterov momentum, linear warmup and cosine decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSpec {
    /// Peak learning rate.
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    /// L2 weight decay, applied to weights but not to batch-norm parameters or biases.
    pub weight_decay: f64,
    /// Linear warmup steps (counted from the schedule's start).
    pub warmup_steps: u64,
}

/// How the teacher is rewarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MplSpec {
    /// `gradient` (`h = eta_S <g_l', g_u>`) or `loss_delta` (`h = loss_old - loss_new`).
    pub feedback: Feedback,
    /// Subtract a moving average of `h` (variance reduction).
    pub h_baseline: bool,
    /// Decay of the moving baseline.
    pub baseline_decay: f64,
    /// Which view's argmax the student learns from: `strong` (default) or `weak`.
    pub pseudo_label_view: PseudoLabelView,
}

/// The feedback signal of the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Feedback {
    #[default]
    Gradient,
    LossDelta,
}

/// The view whose teacher argmax becomes the student's pseudo label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PseudoLabelView {
    #[default]
    Strong,
    Weak,
}

/// UDA consistency loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UdaSpec {
    /// Weight of the consistency term; 0 turns UDA off.
    pub weight: f64,
    /// Sharpening temperature `tau` of the weak-view target.
    pub temperature: f64,
    /// Confidence threshold of the mask.
    pub threshold: f64,
    /// The weight ramps linearly to its value over this many steps.
    pub ramp_steps: u64,
}

/// Augmentation of training images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentSpec {
    /// Random horizontal flip (weak and strong views).
    pub flip: bool,
    /// Reflect-pad by this fraction of the side, then crop back at random (0 disables).
    pub pad_crop_fraction: f64,
    /// RandAugment operations per image (strong view).
    pub randaugment_ops: usize,
    /// RandAugment magnitude; 10 is each operation's nominal maximum.
    pub randaugment_magnitude: f64,
    /// How each drawn operation's strength is chosen: `fixed` (always `randaugment_magnitude`)
    /// or `uniform` (applied with probability 1/2, at a magnitude drawn uniformly from 1 to
    /// `randaugment_magnitude`).
    pub randaugment_sampling: MagnitudeSampling,
    /// Cutout square side as a fraction of the image side (strong view; 0 disables).
    pub cutout_fraction: f64,
}

/// How RandAugment sets the strength of the operations it draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MagnitudeSampling {
    /// Every operation at exactly the configured magnitude, as in the RandAugment paper.
    #[default]
    Fixed,
    /// Every operation is applied with probability 1/2, at a magnitude drawn uniformly from 1 to
    /// the configured one (the form of FixMatch and of the PyTorch MPL reimplementation); on
    /// average a much milder view.
    Uniform,
}

/// Fine-tuning of the student on labeled data after the main phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneSpec {
    pub enabled: bool,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// Evaluation schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSpec {
    /// Evaluate every this many steps (and at the end).
    pub interval_steps: u64,
    pub batch_size: usize,
    /// Re-estimate batch-norm statistics on this many training batches before each evaluation
    /// (0 disables).
    pub bn_recalibration_batches: usize,
}

/// Checkpoint schedule and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Write a `latest` checkpoint every this many steps.
    pub interval_steps: u64,
    /// How many `latest` checkpoints to keep (the best and the final are always kept).
    pub keep_latest: usize,
}

/// Compute placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceSpec {
    /// `cpu`, `cuda:N` or `auto` (first GPU when present).
    pub device: String,
    /// CPU threads for libtorch and augmentation; `null` uses every core.
    pub threads: Option<usize>,
    /// Run the training step under bf16 autocast (CUDA, or CPUs with native bf16 such as
    /// AVX-512-BF16 or AMX; elsewhere it can be slower than fp32).
    pub bf16: bool,
}

mod defaults {
    pub fn batch_size() -> usize {
        128
    }
    pub fn mu() -> usize {
        7
    }
    pub fn total_steps() -> u64 {
        300_000
    }
    pub fn student_wait_steps() -> u64 {
        3_000
    }
    pub fn label_smoothing() -> f64 {
        0.15
    }
    pub fn ema_decay() -> f64 {
        0.995
    }
    pub fn num_labeled() -> usize {
        4_000
    }
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            arch: Architecture::WideResnet,
            depth: 28,
            widen_factor: 2,
            dropout: 0.2,
            bn_momentum: None,
            leaky_relu_slope: 0.1,
        }
    }
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            warmup_steps: 5_000,
        }
    }
}

impl Default for MplSpec {
    fn default() -> Self {
        Self {
            feedback: Feedback::Gradient,
            h_baseline: false,
            baseline_decay: 0.99,
            pseudo_label_view: PseudoLabelView::Strong,
        }
    }
}

impl Default for UdaSpec {
    fn default() -> Self {
        Self {
            weight: 8.0,
            temperature: 0.7,
            threshold: 0.6,
            ramp_steps: 5_000,
        }
    }
}

impl Default for AugmentSpec {
    fn default() -> Self {
        Self {
            flip: true,
            pad_crop_fraction: 0.125,
            randaugment_ops: 2,
            randaugment_magnitude: 16.0,
            randaugment_sampling: MagnitudeSampling::Fixed,
            cutout_fraction: 0.5,
        }
    }
}

impl Default for FinetuneSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            steps: 1_000,
            batch_size: 512,
            lr: 3e-5,
            momentum: 0.9,
            weight_decay: 0.0,
        }
    }
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            interval_steps: 1_000,
            batch_size: 512,
            bn_recalibration_batches: 0,
        }
    }
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            interval_steps: 1_000,
            keep_latest: 2,
        }
    }
}

impl Default for DeviceSpec {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            threads: None,
            bf16: false,
        }
    }
}

/// One invalid field, named by its dotted path (`teacher_optimizer.lr`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Why a spec was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The document is not JSON, or a field has the wrong type or is unknown.
    #[error("run spec is not valid: {}", describe(.0))]
    Malformed(Vec<FieldError>),
    /// The document parsed, but values are out of range or inconsistent.
    #[error("run spec is not valid: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}

impl SpecError {
    /// Every bad field.
    pub fn fields(&self) -> &[FieldError] {
        match self {
            SpecError::Malformed(f) | SpecError::Invalid(f) => f,
        }
    }
}

fn describe(fields: &[FieldError]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect();
    parts.join("; ")
}

impl RunSpec {
    /// Parses and validates a spec, naming every bad field.
    pub fn from_json(text: &str) -> Result<RunSpec, SpecError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            SpecError::Malformed(vec![FieldError {
                field: String::new(),
                message: format!("not valid JSON: {e}"),
            }])
        })?;
        Self::from_value(value)
    }

    /// Parses and validates a spec from an already-parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<RunSpec, SpecError> {
        let spec: RunSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            SpecError::Malformed(vec![FieldError {
                field,
                message: e.inner().to_string(),
            }])
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks ranges and consistency; returns every problem found.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut v = Validator::default();
        v.check(self.batch_size >= 1, "batch_size", "must be at least 1");
        v.check(self.mu >= 1, "mu", "must be at least 1");
        v.check(self.total_steps >= 1, "total_steps", "must be at least 1");
        self.validate_model(&mut v);
        self.validate_data(&mut v);
        validate_optimizer(&mut v, "teacher_optimizer", &self.teacher_optimizer);
        validate_optimizer(&mut v, "student_optimizer", &self.student_optimizer);
        if let Some(clip) = self.grad_clip {
            v.check(
                clip > 0.0 && clip.is_finite(),
                "grad_clip",
                "must be positive or null",
            );
        }
        v.unit_interval(self.label_smoothing, "label_smoothing", false);
        v.unit_interval(self.mpl.baseline_decay, "mpl.baseline_decay", false);
        v.check(
            self.uda.weight >= 0.0 && self.uda.weight.is_finite(),
            "uda.weight",
            "must be >= 0",
        );
        v.check(
            self.uda.temperature > 0.0,
            "uda.temperature",
            "must be positive",
        );
        v.unit_interval(self.uda.threshold, "uda.threshold", true);
        v.unit_interval(
            self.augment.pad_crop_fraction,
            "augment.pad_crop_fraction",
            false,
        );
        v.unit_interval(
            self.augment.cutout_fraction,
            "augment.cutout_fraction",
            true,
        );
        v.check(
            self.augment.randaugment_ops <= 14,
            "augment.randaugment_ops",
            "must be at most 14",
        );
        v.check(
            (0.0..=30.0).contains(&self.augment.randaugment_magnitude),
            "augment.randaugment_magnitude",
            "must be between 0 and 30",
        );
        v.unit_interval(self.ema_decay, "ema_decay", false);
        if self.finetune.enabled {
            v.check(
                self.finetune.batch_size >= 1,
                "finetune.batch_size",
                "must be at least 1",
            );
            v.check(self.finetune.lr > 0.0, "finetune.lr", "must be positive");
            v.unit_interval(self.finetune.momentum, "finetune.momentum", false);
            v.check(
                self.finetune.weight_decay >= 0.0,
                "finetune.weight_decay",
                "must be >= 0",
            );
        }
        v.check(
            self.eval.interval_steps >= 1,
            "eval.interval_steps",
            "must be at least 1",
        );
        v.check(
            self.eval.batch_size >= 1,
            "eval.batch_size",
            "must be at least 1",
        );
        v.check(
            self.checkpoint.interval_steps >= 1,
            "checkpoint.interval_steps",
            "must be at least 1",
        );
        v.check(
            self.checkpoint.keep_latest >= 1,
            "checkpoint.keep_latest",
            "must be at least 1",
        );
        self.validate_device(&mut v);
        v.finish()
    }

    fn validate_model(&self, v: &mut Validator) {
        let m = &self.model;
        if m.arch == Architecture::WideResnet {
            v.check(
                m.depth >= 10 && (m.depth - 4).is_multiple_of(6),
                "model.depth",
                "WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...)",
            );
            v.check(
                m.widen_factor >= 1,
                "model.widen_factor",
                "must be at least 1",
            );
        }
        v.unit_interval(m.dropout, "model.dropout", false);
        if let Some(bn) = m.bn_momentum {
            v.check(
                bn > 0.0 && bn <= 1.0,
                "model.bn_momentum",
                "must be in (0, 1] or null",
            );
        }
        v.check(
            m.leaky_relu_slope >= 0.0,
            "model.leaky_relu_slope",
            "must be >= 0",
        );
    }

    fn validate_data(&self, v: &mut Validator) {
        let d = &self.data;
        validate_source(v, "data.labeled", &d.labeled);
        if let Some(u) = &d.unlabeled {
            validate_source(v, "data.unlabeled", u);
        }
        if let Some(e) = &d.eval {
            validate_source(v, "data.eval", e);
        }
        v.check(d.num_labeled >= 1, "data.num_labeled", "must be at least 1");
        if let Some(n) = &d.normalization {
            v.check(
                !n.mean.is_empty() && n.mean.len() == n.std.len(),
                "data.normalization",
                "mean and std must be non-empty and of equal length",
            );
            v.check(
                n.std.iter().all(|s| *s > 0.0),
                "data.normalization.std",
                "must be positive",
            );
        }
    }

    fn validate_device(&self, v: &mut Validator) {
        let dev = self.device.device.as_str();
        let ok = dev == "cpu"
            || dev == "auto"
            || dev == "cuda"
            || dev
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        v.check(ok, "device.device", "must be cpu, auto, cuda or cuda:N");
        if let Some(t) = self.device.threads {
            v.check(t >= 1, "device.threads", "must be at least 1 or null");
        }
    }

    /// Every platform dataset this spec refers to, with the field naming it.
    pub fn dataset_ids(&self) -> Vec<(&'static str, Uuid)> {
        let d = &self.data;
        let sources = [
            ("data.labeled", Some(&d.labeled)),
            ("data.unlabeled", d.unlabeled.as_ref()),
            ("data.eval", d.eval.as_ref()),
        ];
        sources
            .into_iter()
            .filter_map(|(name, s)| s.and_then(|s| s.dataset_id).map(|id| (name, id)))
            .collect()
    }
}

fn validate_optimizer(v: &mut Validator, name: &str, o: &OptimizerSpec) {
    v.check(
        o.lr > 0.0 && o.lr.is_finite(),
        &format!("{name}.lr"),
        "must be positive",
    );
    v.unit_interval(o.momentum, &format!("{name}.momentum"), false);
    v.check(
        o.weight_decay >= 0.0,
        &format!("{name}.weight_decay"),
        "must be >= 0",
    );
}

fn validate_source(v: &mut Validator, name: &str, s: &DataSource) {
    match (&s.dataset_id, &s.path) {
        (Some(_), Some(_)) => v.fail(name, "give either dataset_id or path, not both"),
        (None, None) => v.fail(name, "give dataset_id or path"),
        (None, Some(path)) => {
            v.check(
                !path.is_empty(),
                &format!("{name}.path"),
                "must not be empty",
            );
            v.check(
                s.format.is_some(),
                &format!("{name}.format"),
                "is required with path",
            );
        }
        (Some(_), None) => {}
    }
    if s.labels_path.is_some() && s.format != Some(DataFormat::Idx) {
        v.fail(
            &format!("{name}.labels_path"),
            "is only used by the idx format",
        );
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn check(&mut self, ok: bool, field: &str, message: &str) {
        if !ok {
            self.fail(field, message);
        }
    }

    fn fail(&mut self, field: &str, message: &str) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// `[0, 1)`, or `[0, 1]` when `closed`.
    fn unit_interval(&mut self, x: f64, field: &str, closed: bool) {
        let ok = x >= 0.0 && if closed { x <= 1.0 } else { x < 1.0 };
        let range = if closed { "[0, 1]" } else { "[0, 1)" };
        self.check(ok, field, &format!("must be in {range}"));
    }

    fn finish(self) -> Result<(), SpecError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"data": {"labeled": {"path": "x.idx", "format": "idx"}}}"#;

    #[test]
    fn a_minimal_spec_gets_the_paper_defaults() {
        let spec = RunSpec::from_json(MINIMAL).unwrap();
        assert_eq!(spec.algorithm, Algorithm::Mpl);
        assert_eq!(spec.batch_size, 128);
        assert_eq!(spec.mu, 7);
        assert_eq!(spec.model.depth, 28);
        assert_eq!(spec.uda.threshold, 0.6);
        assert_eq!(spec.teacher_optimizer.lr, 0.05);
    }

    #[test]
    fn every_example_spec_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(err) = RunSpec::from_json(&text) {
                    panic!("{}: {err}", path.display());
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 4,
            "only {checked} example specs in {}",
            dir.display()
        );
    }

    #[test]
    fn uniform_randaugment_sampling_is_spelled_in_snake_case() {
        let text = r#"{"data": {"labeled": {"path": "x.idx", "format": "idx"}},
            "augment": {"randaugment_sampling": "uniform"}}"#;
        let spec = RunSpec::from_json(text).unwrap();
        assert_eq!(
            spec.augment.randaugment_sampling,
            MagnitudeSampling::Uniform
        );
        let bad = r#"{"data": {"labeled": {"path": "x.idx", "format": "idx"}},
            "augment": {"randaugment_sampling": "gaussian"}}"#;
        let err = RunSpec::from_json(bad).unwrap_err();
        assert_eq!(err.fields()[0].field, "augment.randaugment_sampling");
    }

    #[test]
    fn every_bad_field_is_named() {
        let text = r#"{"data": {"labeled": {"path": "x"}}, "batch_size": 0,
            "teacher_optimizer": {"lr": -1}, "device": {"device": "tpu"}}"#;
        let err = RunSpec::from_json(text).unwrap_err();
        let fields: Vec<&str> = err.fields().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "batch_size",
                "data.labeled.format",
                "teacher_optimizer.lr",
                "device.device"
            ]
        );
    }

    #[test]
    fn unknown_and_mistyped_fields_are_named_by_path() {
        let err =
            RunSpec::from_json(r#"{"data": {"labeled": {"path": "x", "fromat": 1}}}"#).unwrap_err();
        assert_eq!(err.fields()[0].field, "data.labeled.fromat");
        assert!(err.fields()[0].message.contains("fromat"), "{err}");
        let err = RunSpec::from_json(
            r#"{"data": {"labeled": {"path": "x", "format": "idx"}}, "mu": "seven"}"#,
        )
        .unwrap_err();
        assert_eq!(err.fields()[0].field, "mu");
    }

    #[test]
    fn wide_resnet_depth_must_be_6n_plus_4() {
        let mut spec = RunSpec::from_json(MINIMAL).unwrap();
        spec.model.depth = 27;
        let err = spec.validate().unwrap_err();
        assert_eq!(err.fields()[0].field, "model.depth");
    }
}
