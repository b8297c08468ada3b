//! The `trainer` command line: `run`, `eval`, `export` and `bench`.
//!
//! `run` writes only events on stdout; `eval`, `export` and `bench` print one JSON line with
//! their result. Logs go to stderr. Exit codes are `mpl_protocol::exit_code` (a usage error
//! exits with `INVALID_INPUT`, 2, as clap does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mpl_data::ImageSet;
use mpl_protocol::spec::{Algorithm, DataFormat, DeviceSpec};
use mpl_protocol::{ModelRole, exit_code};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tch::nn::VarStore;

use crate::checkpoint::{self, DataInfo};
use crate::pipeline::{BatchMaker, Prefetcher};
use crate::runner::{self, RunArgs};
use crate::{InvalidInput, device, evaluate, is_invalid_input, models};

/// Meta Pseudo Labels trainer: one run per process, JSON-lines events on stdout.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a run spec; checkpoints go to OUT/checkpoints/.
    Run {
        /// The run spec (JSON).
        #[arg(long)]
        spec: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Continue from this checkpoint directory.
        #[arg(long)]
        resume: Option<PathBuf>,
    },
    /// Evaluate a checkpoint's network on a labeled data source.
    Eval {
        /// Checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The images (file or directory, per format).
        #[arg(long)]
        data: PathBuf,
        /// Format of `--data`: idx, cifar10, cifar100, image_folder or canonical.
        #[arg(long, value_parser = parse_format, default_value = "canonical")]
        format: DataFormat,
        /// The IDX labels file.
        #[arg(long)]
        labels_path: Option<PathBuf>,
        /// Which network: student, teacher or ema.
        #[arg(long, value_parser = parse_role, default_value = "student")]
        model: ModelRole,
        /// Also write `{"logits": [[..]..], "labels": [..]}` to this file.
        #[arg(long)]
        logits_out: Option<PathBuf>,
        /// Images per forward pass.
        #[arg(long, default_value_t = 512)]
        batch_size: usize,
        /// cpu, auto, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Export a checkpoint's student (or EMA) as safetensors plus a JSON model card.
    Export {
        /// Checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The safetensors file to write; the card goes beside it with extension `.json`.
        #[arg(long)]
        out: PathBuf,
        /// student or ema.
        #[arg(long, value_parser = parse_role, default_value = "student")]
        model: ModelRole,
    },
    /// Time training steps of a spec on synthetic data of its shapes.
    Bench {
        /// The run spec (JSON); its data sources are not read.
        #[arg(long)]
        spec: PathBuf,
        /// Timed steps.
        #[arg(long)]
        steps: u64,
        /// Untimed steps first.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Image shape HxWxC.
        #[arg(long, default_value = "32x32x3")]
        image: String,
        /// Number of classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
    },
}

fn parse_format(s: &str) -> Result<DataFormat, String> {
    serde_json::from_value(json!(s))
        .map_err(|_| format!("`{s}` is not one of idx, cifar10, cifar100, image_folder, canonical"))
}

fn parse_role(s: &str) -> Result<ModelRole, String> {
    match s {
        "student" => Ok(ModelRole::Student),
        "teacher" => Ok(ModelRole::Teacher),
        "ema" => Ok(ModelRole::Ema),
        _ => Err(format!("`{s}` is not one of student, teacher, ema")),
    }
}

/// Runs a parsed command line and returns the exit code.
pub fn execute(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run { spec, out, resume } => return runner::run(&RunArgs { spec, out, resume }),
        Command::Eval {
            checkpoint,
            data,
            format,
            labels_path,
            model,
            logits_out,
            batch_size,
            device,
        } => eval(&EvalArgs {
            checkpoint,
            data,
            format,
            labels_path,
            model,
            logits_out,
            batch_size,
            device,
        }),
        Command::Export {
            checkpoint,
            out,
            model,
        } => export(&checkpoint, &out, model),
        Command::Bench {
            spec,
            steps,
            warmup,
            image,
            classes,
        } => bench(&spec, steps, warmup, &image, classes),
    };
    match result {
        Ok(()) => exit_code::FINISHED,
        Err(error) => {
            eprintln!("error: {error:#}");
            if is_invalid_input(&error) {
                exit_code::INVALID_INPUT
            } else {
                exit_code::FAILED
            }
        }
    }
}

/// Arguments of `trainer eval`.
#[derive(Debug, Clone)]
pub struct EvalArgs {
    /// Checkpoint directory.
    pub checkpoint: PathBuf,
    /// The images.
    pub data: PathBuf,
    /// Their format.
    pub format: DataFormat,
    /// IDX labels file.
    pub labels_path: Option<PathBuf>,
    /// Which network.
    pub model: ModelRole,
    /// Where to write logits and labels.
    pub logits_out: Option<PathBuf>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Device name.
    pub device: String,
}

/// `trainer eval`: prints one JSON line with top1, top5, loss, per-class accuracy and count.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let invalid = |e: anyhow::Error| InvalidInput::error(format!("{e:#}"));
    let manifest = checkpoint::read_manifest(&args.checkpoint).map_err(invalid)?;
    let info = &manifest.data;
    let placement = device::resolve(&DeviceSpec {
        device: args.device.clone(),
        threads: None,
        bf16: false,
    })
    .map_err(invalid)?;
    let set = mpl_data::load(args.format, &args.data, args.labels_path.as_deref())
        .map_err(|e| InvalidInput::error(format!("--data: {e}")))?;
    if (set.height, set.width, set.channels) != (info.height, info.width, info.in_channels) {
        return Err(InvalidInput::error(format!(
            "--data: images are {}x{}x{} but the checkpoint was trained on {}x{}x{}",
            set.height, set.width, set.channels, info.height, info.width, info.in_channels
        )));
    }
    let Some(labels) = set.labels.as_deref() else {
        return Err(InvalidInput::error("--data: the source has no labels"));
    };

    let stem = checkpoint_stem(args.model, &manifest.spec)?;
    let mut vs = VarStore::new(placement.device);
    let model = models::build(&vs.root(), &runner::model_config(&manifest.spec, info));
    checkpoint::load_var_store(&args.checkpoint, stem, &mut vs)?;
    let logits = evaluate::predict_logits(&*model, &set, info, args.batch_size, placement.device);
    let scores = evaluate::score(&logits, labels, info.num_classes)
        .map_err(|e| InvalidInput::error(format!("--data: {e}")))?;
    if let Some(path) = &args.logits_out {
        write_logits(path, &logits, labels)?;
    }
    let line = json!({
        "model": runner::role_name(args.model),
        "count": scores.count,
        "top1": scores.top1,
        "top5": scores.top5,
        "loss": scores.loss,
        "per_class_accuracy": scores.per_class_accuracy,
        "confusion_matrix": scores.confusion,
    });
    println!("{line}");
    Ok(())
}

fn checkpoint_stem(role: ModelRole, spec: &mpl_protocol::RunSpec) -> Result<&'static str> {
    match role {
        ModelRole::Student | ModelRole::Finetuned => Ok("student"),
        ModelRole::Teacher if spec.algorithm == Algorithm::Mpl => Ok("teacher"),
        ModelRole::Teacher => Err(InvalidInput::error(
            "--model teacher: only mpl runs have a teacher; uda and supervised train one \
             network, stored as the student",
        )),
        ModelRole::Ema if spec.ema_decay > 0.0 => Ok("ema"),
        ModelRole::Ema => Err(InvalidInput::error(
            "--model ema: this run had no EMA (ema_decay = 0)",
        )),
    }
}

fn write_logits(path: &Path, logits: &tch::Tensor, labels: &[u32]) -> Result<()> {
    let rows: Vec<Vec<f32>> = Vec::try_from(logits).context("cannot read the logits")?;
    let body = json!({ "logits": rows, "labels": labels });
    std::fs::write(path, body.to_string())
        .with_context(|| format!("cannot write --logits-out {}", path.display()))
}

/// `trainer export`: writes the student's weights and its model card.
pub fn export(checkpoint: &Path, out: &Path, role: ModelRole) -> Result<()> {
    if !matches!(role, ModelRole::Student | ModelRole::Ema) {
        return Err(InvalidInput::error("--model: export takes student or ema"));
    }
    crate::export::export_student(checkpoint, out, role)?;
    let line = json!({
        "weights": out.display().to_string(),
        "model_card": out.with_extension("json").display().to_string(),
    });
    println!("{line}");
    Ok(())
}

/// `trainer bench`: times `steps` training steps (after `warmup` untimed ones) of the spec's
/// algorithm and model on random images, augmentation and prefetching included. The student
/// wait is set to 0 so every step is a full step.
pub fn bench(spec_path: &Path, steps: u64, warmup: u64, image: &str, classes: usize) -> Result<()> {
    let mut spec = runner::read_spec(spec_path)?;
    spec.student_wait_steps = 0;
    spec.total_steps = spec.total_steps.max(warmup + steps);
    let (height, width, channels) = parse_shape(image)?;
    let placement =
        device::resolve(&spec.device).map_err(|e| InvalidInput::error(e.to_string()))?;
    let (bn_momentum, _) = runner::batch_norm_momentum(&spec);
    let labeled = synthetic_set(
        1024.max(spec.batch_size),
        (height, width, channels),
        classes,
        1,
    );
    let unlabeled = (spec.algorithm != Algorithm::Supervised).then(|| {
        let n = 4 * spec.batch_size * spec.mu;
        let mut set = synthetic_set(n, (height, width, channels), classes, 2);
        set.labels = None;
        Arc::new(set)
    });
    let info = DataInfo {
        num_classes: classes,
        in_channels: channels,
        height,
        width,
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        mean: vec![0.5; channels],
        std: vec![0.25; channels],
        bn_momentum,
        num_labeled: labeled.len(),
        num_unlabeled: unlabeled.as_ref().map_or(0, |u| u.len()),
    };
    let mut learner = runner::build_learner(&spec, &info, placement.device)?;
    let maker = BatchMaker::training(&spec, Arc::new(labeled), unlabeled);
    let mut prefetcher = Prefetcher::spawn(maker, 0..warmup + steps);
    let image_len = height * width * channels;
    let (mut started, mut images) = (Instant::now(), 0usize);
    for step in 0..warmup + steps {
        if step == warmup {
            started = Instant::now();
            images = 0;
        }
        let host = prefetcher.next_batch()?;
        let batch = host.to_device(&info, placement.device);
        tch::manual_seed(runner::step_seed(spec.seed, step));
        placement.autocast(|| learner.train_step(step, &batch))?;
        images += host.num_images(image_len);
    }
    if let tch::Device::Cuda(i) = placement.device {
        tch::Cuda::synchronize(i as i64);
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let line = json!({
        "algorithm": format!("{:?}", spec.algorithm).to_lowercase(),
        "device": placement.name(),
        "threads": tch::get_num_threads(),
        "batch_size": spec.batch_size,
        "mu": spec.mu,
        "steps": steps,
        "secs_per_step": secs / steps.max(1) as f64,
        "steps_per_sec": steps as f64 / secs,
        "images_per_sec": images as f64 / secs,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    println!("{line}");
    Ok(())
}

fn parse_shape(text: &str) -> Result<(usize, usize, usize)> {
    let parts: Vec<usize> = text
        .split('x')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| InvalidInput::error(format!("--image: `{text}` is not HxWxC")))?;
    match parts[..] {
        [h, w, c] if h > 0 && w > 0 && (c == 1 || c == 3) => Ok((h, w, c)),
        _ => Err(InvalidInput::error(format!(
            "--image: `{text}` is not HxWxC with C 1 or 3"
        ))),
    }
}

fn synthetic_set(n: usize, shape: (usize, usize, usize), classes: usize, seed: u64) -> ImageSet {
    let (height, width, channels) = shape;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = vec![0u8; n * height * width * channels];
    rng.fill(pixels.as_mut_slice());
    ImageSet {
        height,
        width,
        channels,
        pixels,
        labels: Some((0..n).map(|i| (i % classes.max(1)) as u32).collect()),
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        num_classes: classes,
    }
}

/// The process's peak resident set size (Linux `VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}
