//! The run loop: one spec, from the first step (or a checkpoint) to the final student.
//!
//! Phases, in order: load the data, build the learner (or restore it from `--resume`), emit
//! `started`, train `total_steps` steps (with `metrics`, `progress`, `eval` and `checkpoint`
//! events on their schedules), evaluate every model, fine-tune the student when enabled,
//! write the final checkpoint and emit `finished`. SIGTERM or SIGINT ends the current step,
//! writes a checkpoint and emits `stopped`; any error emits `failed`.
//!
//! Step counting: every event's `step` is the number of steps completed so far. During
//! fine-tuning the counter continues past `total_steps`, so metric series stay monotone and
//! checkpoint names stay unique; `progress` events of that phase count fine-tuning steps alone.
//!
//! Exact resume: every random choice is a pure function of `(seed, step)`. Data order and
//! augmentation come from [`crate::pipeline`]; libtorch's generator (dropout) is re-seeded with
//! `mix(seed, step)` before every step. Checkpoints hold the networks, batch-norm buffers,
//! optimizer buffers and the learner's scalars, so a resumed run repeats the uninterrupted run's
//! arithmetic exactly (on the CPU, with the same thread count).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mpl_protocol::spec::Algorithm;
use mpl_protocol::{CheckpointKind, Event, ModelRole, RunSpec, exit_code};
use serde_json::json;
use tch::Device;
use tch::nn::VarStore;

use crate::algorithms::{Learner, Network};
use crate::checkpoint::{self, DataInfo, Manifest};
use crate::device::{self, Placement};
use crate::ema::Ema;
use crate::evaluate::{self, Evaluation};
use crate::models::{self, ModelConfig};
use crate::optim::Sgd;
use crate::pipeline::{self, BatchMaker, Prefetcher, TrainingData};
use crate::{InvalidInput, is_invalid_input};

/// Upper bound on `metrics` events per training phase; longer runs average over windows.
const MAX_METRIC_EVENTS: u64 = 1_000;
/// Minimum seconds between two `progress` events.
const PROGRESS_INTERVAL_SECS: f64 = 1.0;

/// Writes events to stdout, one flushed JSON line each.
#[derive(Debug, Default, Clone, Copy)]
pub struct Events;

impl Events {
    /// Writes one event line and flushes it.
    pub fn emit(&self, event: &Event) {
        let mut out = std::io::stdout().lock();
        let written = writeln!(out, "{}", event.to_line()).and_then(|()| out.flush());
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write an event to stdout");
        }
    }
}

/// The command line of `trainer run`.
#[derive(Debug, Clone)]
pub struct RunArgs {
    /// The run spec (JSON).
    pub spec: PathBuf,
    /// Output directory; checkpoints go to `out/checkpoints/`.
    pub out: PathBuf,
    /// A checkpoint directory to continue from.
    pub resume: Option<PathBuf>,
}

/// Runs a spec to completion and returns the process exit code.
pub fn run(args: &RunArgs) -> i32 {
    let events = Events;
    match execute(args, events) {
        Ok(code) => code,
        Err(error) => {
            let reason = format!("{error:#}");
            tracing::error!(%reason, "run failed");
            events.emit(&Event::Failed { reason });
            if is_invalid_input(&error) {
                exit_code::INVALID_INPUT
            } else {
                exit_code::FAILED
            }
        }
    }
}

/// Reads and validates a spec file; problems are [`InvalidInput`]s naming the file and fields.
pub fn read_spec(path: &Path) -> Result<RunSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InvalidInput::error(format!("cannot read spec {}: {e}", path.display())))?;
    RunSpec::from_json(&text).map_err(|e| InvalidInput::error(format!("{}: {e}", path.display())))
}

/// The batch-norm momentum to build networks with, and the policy in words.
///
/// A momentum given in the spec is used as is. Otherwise it is `100 / total_steps` clamped to
/// `[0.001, 0.1]`: the paper's 0.001 on its 300 000-step budget, PyTorch's 0.1 on tiny runs, and
/// in between an average over the last 1 % of the budget, which forgets the initial statistics
/// (weight below 1 %) within the first 5 % of the run. See `docs/training.md`.
pub fn batch_norm_momentum(spec: &RunSpec) -> (f64, String) {
    let recalibration = match spec.eval.bn_recalibration_batches {
        0 => String::new(),
        n => format!("; statistics re-estimated on {n} training batches before each evaluation"),
    };
    match spec.model.bn_momentum {
        Some(m) => (
            m,
            format!("fixed momentum {m} from the spec{recalibration}"),
        ),
        None => {
            let m = (100.0 / spec.total_steps as f64).clamp(0.001, 0.1);
            let policy = format!(
                "momentum {m:.6} scaled with the budget (100 / total_steps, clamped to \
                 [0.001, 0.1]){recalibration}"
            );
            (m, policy)
        }
    }
}

/// The network settings for a spec and its data.
pub fn model_config(spec: &RunSpec, info: &DataInfo) -> ModelConfig {
    ModelConfig {
        arch: spec.model.arch,
        depth: spec.model.depth,
        widen_factor: spec.model.widen_factor,
        dropout: spec.model.dropout,
        bn_momentum: info.bn_momentum,
        leaky_relu_slope: spec.model.leaky_relu_slope,
        in_channels: info.in_channels as i64,
        num_classes: info.num_classes as i64,
    }
}

/// Builds the learner's networks (and EMA) on `device`, initialised from the spec's seed.
pub fn build_learner(spec: &RunSpec, info: &DataInfo, device: Device) -> Result<Learner> {
    tch::manual_seed(spec.seed as i64);
    let config = model_config(spec, info);
    let mut build_network = |role: &str| -> Result<Network> {
        let vs = VarStore::new(device);
        let model = models::build(&vs.root(), &config);
        let settings = if role == "student" && spec.algorithm == Algorithm::Mpl {
            &spec.student_optimizer
        } else {
            &spec.teacher_optimizer
        };
        let optimizer = Sgd::new(
            &vs,
            settings.momentum,
            settings.nesterov,
            settings.weight_decay,
        );
        Ok(Network {
            vs,
            model,
            optimizer,
        })
    };
    let mut build_ema = || -> Result<Option<Ema>> {
        if spec.ema_decay == 0.0 {
            return Ok(None);
        }
        let vs = VarStore::new(device);
        let model = models::build(&vs.root(), &config);
        Ok(Some(Ema {
            vs,
            model,
            decay: spec.ema_decay,
        }))
    };
    Learner::new(spec, &mut build_network, &mut build_ema)
}

/// The libtorch seed of a step: dropout masks depend on `(seed, step)` alone.
pub fn step_seed(seed: u64, step: u64) -> i64 {
    (pipeline::mix(seed, step) >> 1) as i64
}

/// The lower-case name of a model role, as used in metric names.
pub fn role_name(role: ModelRole) -> &'static str {
    match role {
        ModelRole::Teacher => "teacher",
        ModelRole::Student => "student",
        ModelRole::Ema => "ema",
        ModelRole::Finetuned => "finetuned",
    }
}

/// Where a run stands when it starts: from scratch or from a checkpoint.
struct StartPoint {
    /// Training steps already done.
    train_step: u64,
    /// Fine-tuning steps already done.
    finetune_step: u64,
    /// Best selection top-1 so far.
    best: Option<f64>,
    /// Metrics recorded in the checkpoint.
    metrics: BTreeMap<String, f64>,
}

fn execute(args: &RunArgs, events: Events) -> Result<i32> {
    let spec = read_spec(&args.spec)?;
    let placement =
        device::resolve(&spec.device).map_err(|e| InvalidInput::error(e.to_string()))?;
    let resume = match &args.resume {
        Some(dir) => Some(
            checkpoint::read_manifest(dir)
                .map_err(|e| InvalidInput::error(format!("--resume: {e:#}")))?,
        ),
        None => None,
    };
    let (computed_momentum, policy) = batch_norm_momentum(&spec);
    let bn_momentum = resume
        .as_ref()
        .map_or(computed_momentum, |m| m.data.bn_momentum);
    let span = tracing::info_span!("run", algorithm = ?spec.algorithm, seed = spec.seed);
    let _entered = span.enter();

    tracing::info!(device = %placement.name(), "loading data");
    let mut data = pipeline::load(&spec, bn_momentum)?;
    if let Some(manifest) = &resume {
        check_resumable(manifest, &spec, &data.info)?;
        data.info.mean.clone_from(&manifest.data.mean);
        data.info.std.clone_from(&manifest.data.std);
    }
    let mut learner = build_learner(&spec, &data.info, placement.device)?;
    let start = match (&resume, &args.resume) {
        (Some(manifest), Some(dir)) => restore(&mut learner, manifest, dir)?,
        _ => StartPoint {
            train_step: 0,
            finetune_step: 0,
            best: None,
            metrics: BTreeMap::new(),
        },
    };

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the stop signal handlers")?;
    }
    events.emit(&Event::Started {
        step: start.train_step + start.finetune_step,
        total_steps: spec.total_steps,
        device: placement.name(),
        resumed_from: args.resume.as_ref().map(|p| p.display().to_string()),
        num_labeled: data.info.num_labeled as u64,
        num_unlabeled: data.info.num_unlabeled as u64,
        num_eval: data.eval.as_ref().map_or(0, |e| e.len() as u64),
        num_classes: data.info.num_classes as u64,
        batch_norm_policy: policy,
    });
    let mut session = Session {
        checkpoints: args.out.join("checkpoints"),
        spec,
        placement,
        data,
        learner,
        events,
        stop,
        best: start.best,
        metrics: start.metrics,
        train_done: start.train_step,
        finetune_done: start.finetune_step,
    };
    session.drive()
}

fn check_resumable(manifest: &Manifest, spec: &RunSpec, info: &DataInfo) -> Result<()> {
    let old = &manifest.spec;
    let same_shape = (old.algorithm, &old.model) == (spec.algorithm, &spec.model)
        && (
            manifest.data.height,
            manifest.data.width,
            manifest.data.in_channels,
        ) == (info.height, info.width, info.in_channels)
        && manifest.data.num_classes == info.num_classes;
    if !same_shape {
        return Err(InvalidInput::error(
            "--resume: the checkpoint was trained with another algorithm, model or data shape",
        ));
    }
    if old != spec {
        tracing::warn!("the spec differs from the checkpoint's; continuing with the new one");
    }
    Ok(())
}

fn restore(learner: &mut Learner, manifest: &Manifest, dir: &Path) -> Result<StartPoint> {
    for (stem, vs) in learner.var_stores_mut() {
        checkpoint::load_var_store(dir, stem, vs)?;
    }
    learner.load_optimizer_state(&checkpoint::load_optimizer(dir)?)?;
    let state = &manifest.state;
    learner.load_scalar_state(&state["learner"])?;
    let finetune_step = state["finetune_step"].as_u64().unwrap_or(0);
    let train_step = manifest.step - finetune_step;
    tracing::info!(train_step, finetune_step, dir = %dir.display(), "resumed");
    Ok(StartPoint {
        train_step,
        finetune_step,
        best: state["best_selection_top1"].as_f64(),
        metrics: manifest.metrics.clone(),
    })
}

/// A run in progress.
struct Session {
    spec: RunSpec,
    placement: Placement,
    data: TrainingData,
    learner: Learner,
    events: Events,
    checkpoints: PathBuf,
    stop: Arc<AtomicBool>,
    /// Best selection top-1 so far (validation split, or eval split without one).
    best: Option<f64>,
    /// Latest value of every metric, saved in checkpoints and reported at the end.
    metrics: BTreeMap<String, f64>,
    /// Training steps completed.
    train_done: u64,
    /// Fine-tuning steps completed.
    finetune_done: u64,
}

/// Averages of step metrics over a window, and the throughput over it.
struct Window {
    sums: BTreeMap<String, (f64, u32)>,
    steps: u64,
    images: usize,
    since: Instant,
}

impl Window {
    fn new() -> Window {
        Window {
            sums: BTreeMap::new(),
            steps: 0,
            images: 0,
            since: Instant::now(),
        }
    }

    fn add(&mut self, values: &BTreeMap<String, f64>, images: usize) {
        for (name, value) in values {
            let entry = self.sums.entry(name.clone()).or_insert((0.0, 0));
            entry.0 += value;
            entry.1 += 1;
        }
        self.steps += 1;
        self.images += images;
    }

    fn take(&mut self) -> BTreeMap<String, f64> {
        let secs = self.since.elapsed().as_secs_f64().max(1e-9);
        let mut means: BTreeMap<String, f64> = self
            .sums
            .iter()
            .map(|(name, (sum, n))| (name.clone(), sum / f64::from(*n)))
            .collect();
        means.insert("images_per_sec".into(), self.images as f64 / secs);
        *self = Window::new();
        means
    }
}

/// Throughput since the phase began, for `progress` events.
struct Pace {
    started: Instant,
    last_emit: Option<Instant>,
    steps: u64,
    images: usize,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            started: Instant::now(),
            last_emit: None,
            steps: 0,
            images: 0,
        }
    }

    /// A `progress` event when one is due (first step, every second, last step).
    fn tick(&mut self, images: usize, step: u64, total: u64, phase: &str) -> Option<Event> {
        self.steps += 1;
        self.images += images;
        let due = self
            .last_emit
            .is_none_or(|t| t.elapsed().as_secs_f64() >= PROGRESS_INTERVAL_SECS || step == total);
        if !due {
            return None;
        }
        self.last_emit = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let steps_per_sec = self.steps as f64 / secs;
        Some(Event::Progress {
            step,
            total_steps: total,
            phase: phase.into(),
            images_per_sec: self.images as f64 / secs,
            eta_secs: total.saturating_sub(step) as f64 / steps_per_sec.max(1e-9),
        })
    }
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhaseEnd {
    Completed,
    Stopped,
}

impl Session {
    fn drive(&mut self) -> Result<i32> {
        let resumed_in_finetune = self.finetune_done > 0;
        if self.train()? == PhaseEnd::Stopped {
            return self.stopped();
        }
        if !resumed_in_finetune {
            let _span = tracing::info_span!("final evaluation").entered();
            self.evaluate_all(self.spec.total_steps, true)?;
        }
        if self.finetune()? == PhaseEnd::Stopped {
            return self.stopped();
        }
        if self.finetune_steps() > 0 {
            self.evaluate_finetuned()?;
        }
        let step = self.train_done + self.finetune_done;
        self.write_checkpoint(CheckpointKind::Final)?;
        self.events.emit(&Event::Finished {
            step,
            metrics: self.metrics.clone(),
        });
        tracing::info!(step, "run finished");
        Ok(exit_code::FINISHED)
    }

    fn phase_name(&self) -> &'static str {
        match self.spec.algorithm {
            Algorithm::Mpl => "mpl",
            Algorithm::Uda => "uda",
            Algorithm::Supervised => "supervised",
        }
    }

    fn finetune_steps(&self) -> u64 {
        if self.spec.finetune.enabled {
            self.spec.finetune.steps
        } else {
            0
        }
    }

    fn image_len(&self) -> usize {
        let info = &self.data.info;
        info.height * info.width * info.in_channels
    }

    fn train(&mut self) -> Result<PhaseEnd> {
        let total = self.spec.total_steps;
        if self.train_done >= total {
            return Ok(PhaseEnd::Completed);
        }
        let _span = tracing::info_span!("training", from = self.train_done, total).entered();
        let maker = BatchMaker::training(
            &self.spec,
            Arc::clone(&self.data.labeled),
            self.data.unlabeled.clone(),
        );
        let mut prefetcher = Prefetcher::spawn(maker, self.train_done..total);
        let metrics_every = total.div_ceil(MAX_METRIC_EVENTS).max(1);
        let (mut window, mut pace) = (Window::new(), Pace::new());
        while self.train_done < total {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(PhaseEnd::Stopped);
            }
            let step = self.train_done;
            let host = prefetcher.next_batch()?;
            let batch = host.to_device(&self.data.info, self.placement.device);
            tch::manual_seed(step_seed(self.spec.seed, step));
            let learner = &mut self.learner;
            let values = self
                .placement
                .autocast(|| learner.train_step(step, &batch))
                .with_context(|| format!("training step {step} failed"))?;
            check_finite(&values, step)?;
            self.train_done = step + 1;

            let done = self.train_done;
            let images = host.num_images(self.image_len());
            window.add(&values, images);
            if done.is_multiple_of(metrics_every) || done == total {
                self.emit_metrics(done, window.take());
            }
            if let Some(event) = pace.tick(images, done, total, self.phase_name()) {
                self.events.emit(&event);
            }
            if done.is_multiple_of(self.spec.eval.interval_steps) && done < total {
                self.evaluate_all(done, false)?;
            }
            if done.is_multiple_of(self.spec.checkpoint.interval_steps) {
                self.write_checkpoint(CheckpointKind::Latest)?;
            }
        }
        Ok(PhaseEnd::Completed)
    }

    fn finetune(&mut self) -> Result<PhaseEnd> {
        let steps = self.finetune_steps();
        if self.finetune_done >= steps {
            return Ok(PhaseEnd::Completed);
        }
        let _span = tracing::info_span!("fine-tuning", from = self.finetune_done, steps).entered();
        let maker = BatchMaker::finetuning(&self.spec, Arc::clone(&self.data.labeled));
        let mut prefetcher = Prefetcher::spawn(maker, self.finetune_done..steps);
        let metrics_every = steps.div_ceil(MAX_METRIC_EVENTS).max(1);
        let total = self.spec.total_steps;
        let (mut window, mut pace) = (Window::new(), Pace::new());
        while self.finetune_done < steps {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(PhaseEnd::Stopped);
            }
            let k = self.finetune_done;
            let host = prefetcher.next_batch()?;
            let batch = host.to_device(&self.data.info, self.placement.device);
            tch::manual_seed(step_seed(self.spec.seed, total + k));
            let learner = &mut self.learner;
            let values = self
                .placement
                .autocast(|| learner.finetune_step(k, &batch.x_l, &batch.y_l))
                .with_context(|| format!("fine-tuning step {k} failed"))?;
            check_finite(&values, total + k)?;
            self.finetune_done = k + 1;

            let done = self.finetune_done;
            let images = host.num_images(self.image_len());
            window.add(&values, images);
            if done.is_multiple_of(metrics_every) || done == steps {
                self.emit_metrics(total + done, window.take());
            }
            if let Some(event) = pace.tick(images, done, steps, "finetune") {
                self.events.emit(&event);
            }
            if done.is_multiple_of(self.spec.checkpoint.interval_steps) && done < steps {
                self.write_checkpoint(CheckpointKind::Latest)?;
            }
        }
        Ok(PhaseEnd::Completed)
    }

    fn emit_metrics(&mut self, step: u64, values: BTreeMap<String, f64>) {
        self.metrics
            .extend(values.iter().map(|(name, value)| (name.clone(), *value)));
        self.events.emit(&Event::Metrics { step, values });
    }

    /// Evaluates every model of the learner on the validation and eval splits; a better student
    /// on the selection split is kept as the `best` checkpoint.
    fn evaluate_all(&mut self, step: u64, final_eval: bool) -> Result<()> {
        let results = self.evaluate_models(step, false)?;
        for (role, split, evaluation) in &results {
            self.record_eval(step, *role, split, evaluation, final_eval);
        }
        let selection = ["validation", "eval"].iter().find_map(|wanted| {
            results
                .iter()
                .find(|(role, split, _)| *role == ModelRole::Student && split == wanted)
                .map(|(_, _, e)| e.top1)
        });
        if let Some(top1) = selection
            && self.best.is_none_or(|best| top1 > best)
        {
            self.best = Some(top1);
            self.metrics.insert("best/selection_top1".into(), top1);
            self.write_checkpoint(CheckpointKind::Best)?;
        }
        Ok(())
    }

    fn evaluate_finetuned(&mut self) -> Result<()> {
        let step = self.train_done + self.finetune_done;
        let results = self.evaluate_models(step, true)?;
        for (_, split, evaluation) in &results {
            self.record_eval(step, ModelRole::Finetuned, split, evaluation, true);
        }
        Ok(())
    }

    /// Scores the learner's models (only the student when `student_only`) on each split.
    fn evaluate_models(
        &self,
        step: u64,
        student_only: bool,
    ) -> Result<Vec<(ModelRole, &'static str, Evaluation)>> {
        let splits = [
            ("validation", self.data.validation.as_ref()),
            ("eval", self.data.eval.as_ref()),
        ];
        if splits.iter().all(|(_, set)| set.is_none()) {
            return Ok(Vec::new());
        }
        let device = self.placement.device;
        let recalibration = self.spec.eval.bn_recalibration_batches;
        let batches = if recalibration > 0 {
            pipeline::recalibration_batches(&self.data, &self.spec, step, recalibration, device)?
        } else {
            Vec::new()
        };
        let stores = self.learner.var_stores();
        let mut results = Vec::new();
        for (role, model) in self.learner.eval_models() {
            if student_only && role != ModelRole::Student {
                continue;
            }
            let saved = stores
                .iter()
                .find(|(stem, _)| *stem == role_name(role))
                .filter(|_| !batches.is_empty())
                .map(|(_, vs)| {
                    evaluate::recalibrate_batch_norm(
                        vs,
                        model,
                        &batches,
                        self.data.info.bn_momentum,
                    )
                });
            for (split, set) in splits {
                let Some(set) = set else { continue };
                let evaluation = evaluate::evaluate(
                    model,
                    set,
                    &self.data.info,
                    self.spec.eval.batch_size,
                    device,
                )
                .with_context(|| format!("evaluating the {} on {split}", role_name(role)))?;
                results.push((role, split, evaluation));
            }
            if let Some(saved) = saved {
                saved.restore();
            }
        }
        Ok(results)
    }

    fn record_eval(
        &mut self,
        step: u64,
        role: ModelRole,
        split: &str,
        evaluation: &Evaluation,
        final_eval: bool,
    ) {
        let name = role_name(role);
        let prefix = if split == "eval" {
            name.to_string()
        } else {
            format!("{name}/{split}")
        };
        self.metrics
            .insert(format!("{prefix}/top1"), evaluation.top1);
        self.metrics
            .insert(format!("{prefix}/top5"), evaluation.top5);
        self.metrics
            .insert(format!("{prefix}/eval_loss"), evaluation.loss);
        tracing::info!(
            step,
            model = name,
            split,
            top1 = evaluation.top1,
            "evaluated"
        );
        self.events.emit(&Event::Eval {
            step,
            model: role,
            split: split.into(),
            top1: evaluation.top1,
            top5: evaluation.top5,
            loss: evaluation.loss,
            per_class_accuracy: evaluation.per_class_accuracy.clone(),
            confusion_matrix: final_eval.then(|| evaluation.confusion.clone()),
        });
    }

    /// Writes a checkpoint of the current state, emits its event and applies retention.
    fn write_checkpoint(&mut self, kind: CheckpointKind) -> Result<PathBuf> {
        let step = self.train_done + self.finetune_done;
        let phase = match kind {
            CheckpointKind::Final => "done",
            _ if self.train_done >= self.spec.total_steps => "finetune",
            _ => "train",
        };
        let manifest = Manifest {
            format_version: checkpoint::FORMAT_VERSION,
            step,
            phase: phase.into(),
            kind,
            spec: self.spec.clone(),
            data: self.data.info.clone(),
            metrics: self.metrics.clone(),
            state: json!({
                "learner": self.learner.scalar_state(),
                "finetune_step": self.finetune_done,
                "best_selection_top1": self.best,
                "data_order": "batch k is a pure function of (seed, k): per-epoch permutations \
                               seeded by (seed, epoch), augmentation seeded per image",
            }),
            files: Vec::new(),
        };
        let stores = self.learner.var_stores();
        let optimizer = self.learner.optimizer_state();
        let written = checkpoint::write(&self.checkpoints, manifest, &stores, &optimizer)?;
        tracing::info!(step, ?kind, path = %written.path.display(), "checkpoint written");
        self.events.emit(&Event::Checkpoint {
            step,
            path: written.path.display().to_string(),
            kind,
            files: written.files,
        });
        checkpoint::apply_retention(&self.checkpoints, self.spec.checkpoint.keep_latest)?;
        Ok(written.path)
    }

    fn stopped(&mut self) -> Result<i32> {
        tracing::info!("stop requested: writing a checkpoint");
        let path = self.write_checkpoint(CheckpointKind::Latest)?;
        self.events.emit(&Event::Stopped {
            step: self.train_done + self.finetune_done,
            checkpoint: Some(path.display().to_string()),
        });
        Ok(exit_code::STOPPED)
    }
}

/// Fails the run when a metric is NaN or infinite: training diverged.
fn check_finite(values: &BTreeMap<String, f64>, step: u64) -> Result<()> {
    if let Some((name, value)) = values.iter().find(|(_, v)| !v.is_finite()) {
        bail!(
            "training diverged at step {step}: {name} is {value} (lower the learning rate or \
             set grad_clip)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_steps(total_steps: u64) -> RunSpec {
        let mut spec =
            RunSpec::from_json(r#"{"data": {"labeled": {"path": "x", "format": "idx"}}}"#)
                .expect("minimal spec");
        spec.total_steps = total_steps;
        spec
    }

    #[test]
    fn batch_norm_momentum_scales_with_the_budget() {
        assert_eq!(batch_norm_momentum(&spec_with_steps(300_000)).0, 0.001);
        assert_eq!(batch_norm_momentum(&spec_with_steps(100)).0, 0.1);
        assert!((batch_norm_momentum(&spec_with_steps(2_000)).0 - 0.05).abs() < 1e-12);
        let mut spec = spec_with_steps(100);
        spec.model.bn_momentum = Some(0.01);
        let (m, policy) = batch_norm_momentum(&spec);
        assert_eq!(m, 0.01);
        assert!(policy.contains("from the spec"), "{policy}");
    }

    #[test]
    fn step_seeds_differ_between_steps_and_seeds() {
        assert_ne!(step_seed(0, 1), step_seed(0, 2));
        assert_ne!(step_seed(0, 1), step_seed(1, 1));
        assert!(step_seed(u64::MAX, u64::MAX) >= 0);
    }

    #[test]
    fn a_diverged_metric_fails_the_run() {
        let mut values = BTreeMap::new();
        values.insert("student/loss".to_string(), f64::NAN);
        let err = check_finite(&values, 7).unwrap_err().to_string();
        assert!(
            err.contains("step 7") && err.contains("student/loss"),
            "{err}"
        );
    }
}
