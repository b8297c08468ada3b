//! Checkpoints: a directory of safetensors files plus a `manifest.json` that describes them.
//!
//! ```text
//! DIR/checkpoints/step-000001000/          a `latest` checkpoint (resume point)
//! DIR/checkpoints/step-000001000-best/     the best student so far on the selection split
//! DIR/checkpoints/step-000301000-final/    written when the run finished
//!     manifest.json  student.safetensors  teacher.safetensors (mpl)  ema.safetensors (EMA on)
//!     optimizer.safetensors
//! ```
//!
//! A checkpoint is written into a hidden temporary directory next to its final place and renamed
//! into place once every file is flushed, so a reader never sees half a checkpoint. The manifest
//! records the sha256 of every file and [`read_manifest`] refuses a checkpoint whose bytes do not
//! match. Retention keeps the newest `keep_latest` `latest` checkpoints, the newest `best` and
//! the `final` one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mpl_protocol::{CheckpointFile, CheckpointKind, RunSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;
use tch::nn::VarStore;

/// The manifest's format version; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest file inside a checkpoint directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the optimizer-state file inside a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// What `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Steps completed when the checkpoint was taken (training steps, plus fine-tuning steps
    /// once that phase has begun).
    pub step: u64,
    /// `train`, `finetune` or `done`.
    pub phase: String,
    /// Why the checkpoint was kept.
    pub kind: mpl_protocol::CheckpointKind,
    /// The run spec the checkpoint was trained with.
    pub spec: RunSpec,
    /// Shapes, classes and normalisation of the data, needed to use the networks.
    pub data: DataInfo,
    /// Metrics at this step (latest evaluation and training averages).
    pub metrics: BTreeMap<String, f64>,
    /// Trainer-private state needed for an exact resume (learner scalars, fine-tuning
    /// progress, best metric so far).
    pub state: serde_json::Value,
    /// Every other file of the directory with its size and sha256.
    pub files: Vec<CheckpointFile>,
}

/// What a network needs to know about its data, kept with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Number of classes of the labeled source.
    pub num_classes: usize,
    /// Image channels (1 or 3).
    pub in_channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Class names by label index.
    pub class_names: Vec<String>,
    /// Per-channel mean on the 0..1 pixel scale.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation on the 0..1 pixel scale.
    pub std: Vec<f64>,
    /// The batch-norm momentum the networks were built with (PyTorch convention).
    pub bn_momentum: f64,
    /// Labeled training images.
    pub num_labeled: usize,
    /// Unlabeled training images.
    pub num_unlabeled: usize,
}

/// The directory name of a checkpoint: `step-000000123` plus `-best` or `-final`.
pub fn dir_name(step: u64, kind: CheckpointKind) -> String {
    match kind {
        CheckpointKind::Latest => format!("step-{step:09}"),
        CheckpointKind::Best => format!("step-{step:09}-best"),
        CheckpointKind::Final => format!("step-{step:09}-final"),
    }
}

/// A checkpoint that was written: its directory and its files.
#[derive(Debug, Clone)]
pub struct Written {
    /// Absolute path of the checkpoint directory.
    pub path: PathBuf,
    /// Every file, the manifest last, with size and sha256.
    pub files: Vec<CheckpointFile>,
}

/// Writes a checkpoint under `root` atomically and returns where it landed.
///
/// `manifest.files` is filled in here; `var_stores` are saved as `<stem>.safetensors` and
/// `optimizer` as [`OPTIMIZER_FILE`]. An existing checkpoint of the same name is replaced.
pub fn write(
    root: &Path,
    mut manifest: Manifest,
    var_stores: &[(&str, &VarStore)],
    optimizer: &[(String, Tensor)],
) -> Result<Written> {
    fs::create_dir_all(root)
        .with_context(|| format!("cannot create checkpoint folder {}", root.display()))?;
    let name = dir_name(manifest.step, manifest.kind);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;

    let mut names = Vec::new();
    for (stem, vs) in var_stores {
        let file = format!("{stem}.safetensors");
        vs.save(tmp.join(&file))
            .with_context(|| format!("cannot save {file} in {}", tmp.display()))?;
        names.push(file);
    }
    let optimizer_refs: Vec<(&str, &Tensor)> =
        optimizer.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&optimizer_refs, tmp.join(OPTIMIZER_FILE))
        .with_context(|| format!("cannot save {OPTIMIZER_FILE} in {}", tmp.display()))?;
    names.push(OPTIMIZER_FILE.into());

    manifest.files = names
        .iter()
        .map(|n| describe_file(&tmp, n))
        .collect::<Result<_>>()?;
    let json = serde_json::to_vec_pretty(&manifest)?;
    write_synced(&tmp.join(MANIFEST_FILE), &json)?;
    // The manifest cannot list itself, but whoever copies the checkpoint elsewhere needs it
    // (resuming reads it first), so the written list names it too.
    let mut files = manifest.files;
    files.push(describe_file(&tmp, MANIFEST_FILE)?);

    let path = root.join(&name);
    if path.exists() {
        fs::remove_dir_all(&path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    fs::rename(&tmp, &path).with_context(|| format!("cannot move checkpoint to {name}"))?;
    sync_dir(root);
    let path = fs::canonicalize(&path).unwrap_or(path);
    Ok(Written { path, files })
}

/// Reads a checkpoint's manifest and verifies the size and sha256 of every file it lists.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let manifest = read_manifest_unverified(dir)?;
    for file in &manifest.files {
        if file.name.contains('/') || file.name.contains("..") {
            bail!(
                "{}: file name `{}` leaves the checkpoint",
                dir.display(),
                file.name
            );
        }
        let actual = describe_file(dir, &file.name)?;
        if actual.size_bytes != file.size_bytes || actual.sha256 != file.sha256 {
            bail!(
                "{}: {} is corrupt (manifest says {} bytes sha256 {}, found {} bytes sha256 {})",
                dir.display(),
                file.name,
                file.size_bytes,
                file.sha256,
                actual.size_bytes,
                actual.sha256
            );
        }
    }
    Ok(manifest)
}

/// Reads a manifest without hashing the files (for listings and retention).
pub fn read_manifest_unverified(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&path)
        .with_context(|| format!("cannot read checkpoint manifest {}", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid checkpoint manifest", path.display()))?;
    if manifest.format_version != FORMAT_VERSION {
        bail!(
            "{}: format_version {} is not supported (expected {FORMAT_VERSION})",
            path.display(),
            manifest.format_version
        );
    }
    Ok(manifest)
}

/// Loads `<stem>.safetensors` of a checkpoint into an existing var store (same names, shapes).
pub fn load_var_store(dir: &Path, stem: &str, vs: &mut VarStore) -> Result<()> {
    let path = dir.join(format!("{stem}.safetensors"));
    vs.load(&path)
        .with_context(|| format!("cannot load the {stem} network from {}", path.display()))
}

/// Loads the optimizer buffers of a checkpoint.
pub fn load_optimizer(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let path = dir.join(OPTIMIZER_FILE);
    Tensor::read_safetensors(&path)
        .with_context(|| format!("cannot read optimizer state {}", path.display()))
}

/// Deletes checkpoints the retention rule no longer keeps; returns the deleted directories.
///
/// Kept: the `keep_latest` newest `latest` checkpoints, the newest `best`, every `final`.
/// Directories without a readable manifest are left alone.
pub fn apply_retention(root: &Path, keep_latest: usize) -> Result<Vec<PathBuf>> {
    let mut by_kind: BTreeMap<&'static str, Vec<(u64, PathBuf)>> = BTreeMap::new();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", root.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden || !path.is_dir() {
            continue;
        }
        let Ok(manifest) = read_manifest_unverified(&path) else {
            continue;
        };
        let kind = match manifest.kind {
            CheckpointKind::Latest => "latest",
            CheckpointKind::Best => "best",
            CheckpointKind::Final => continue,
        };
        by_kind.entry(kind).or_default().push((manifest.step, path));
    }
    let mut deleted = Vec::new();
    for (kind, mut list) in by_kind {
        list.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        let keep = if kind == "latest" { keep_latest } else { 1 };
        for (_, path) in list.into_iter().skip(keep) {
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot delete old checkpoint {}", path.display()))?;
            deleted.push(path);
        }
    }
    Ok(deleted)
}

fn describe_file(dir: &Path, name: &str) -> Result<CheckpointFile> {
    let path = dir.join(name);
    let mut file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size_bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size_bytes += n as u64;
    }
    file.sync_all().ok();
    Ok(CheckpointFile {
        name: name.into(),
        size_bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file =
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Makes a rename durable; failures are harmless on filesystems without directory sync.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        d.sync_all().ok();
    }
}
