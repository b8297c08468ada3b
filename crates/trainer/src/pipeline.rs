//! The input pipeline: data sources to the tensors of each training step.
//!
//! 1. [`load`] reads the spec's sources, draws the class-balanced labeled / validation split,
//!    takes the unlabeled images (a separate source, or the rest of the labeled one) and fixes
//!    the normalisation (the spec's, or computed from the labeled images).
//! 2. [`Sampler`] says which images form batch `k`: a stream of per-epoch permutations, each
//!    seeded by `(seed, epoch)`, so a batch is a pure function of `(seed, step)` and a resumed
//!    run sees exactly the data the uninterrupted run saw.
//! 3. [`BatchMaker`] augments those images into u8 buffers (each image seeded by
//!    `mpl_data::augment::sample_seed`), and [`Prefetcher`] does so on a background thread one
//!    step ahead, so augmentation overlaps the training step.
//! 4. [`HostBatch::to_device`] turns the buffers into normalised f32 NCHW tensors.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use mpl_data::ImageSet;
use mpl_data::augment::Augmenter;
use mpl_protocol::RunSpec;
use mpl_protocol::spec::{Algorithm, DataSource};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

use crate::InvalidInput;
use crate::algorithms::StepBatch;
use crate::checkpoint::DataInfo;
use crate::evaluate::normalise;

/// Seed streams, so that the labeled and unlabeled orders and augmentations are independent.
const LABELED_STREAM: u64 = 0x6c61_6265_6c65_6400;
const UNLABELED_STREAM: u64 = 0x756e_6c61_6265_6c00;
const FINETUNE_STREAM: u64 = 0x6669_6e65_7475_6e00;
const RECALIBRATION_STREAM: u64 = 0x7265_6361_6c69_6200;

/// splitmix64 of `a` combined with `b`: a well-mixed 64-bit value for seeding.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Every image a run uses, split and described.
pub struct TrainingData {
    /// The labeled training images.
    pub labeled: Arc<ImageSet>,
    /// The unlabeled images (`None` for `supervised`, which does not use them).
    pub unlabeled: Option<Arc<ImageSet>>,
    /// Held-out labeled images for model selection (`num_validation` > 0).
    pub validation: Option<ImageSet>,
    /// The test source.
    pub eval: Option<ImageSet>,
    /// Shapes, classes, normalisation.
    pub info: DataInfo,
}

/// Loads and splits the spec's data; every problem is an [`InvalidInput`] naming its source.
pub fn load(spec: &RunSpec, bn_momentum: f64) -> Result<TrainingData> {
    let data = &spec.data;
    let source = load_source("data.labeled", &data.labeled)?;
    let Some(labels) = source.labels.as_deref() else {
        return Err(InvalidInput::error(
            "data.labeled: the source has no labels",
        ));
    };
    let split = mpl_data::split::class_balanced(
        labels,
        source.num_classes,
        data.num_labeled,
        data.num_validation,
        spec.seed,
    )
    .map_err(|e| InvalidInput::error(format!("data.labeled: {e}")))?;
    let labeled = source.subset(&split.labeled);
    let validation = (!split.validation.is_empty()).then(|| source.subset(&split.validation));

    let unlabeled = match (&data.unlabeled, spec.algorithm) {
        (_, Algorithm::Supervised) => None,
        (Some(u), _) => {
            let mut set = load_source("data.unlabeled", u)?;
            check_same_shape("data.unlabeled", &set, &source)?;
            // Labels that do not fit the labeled classes cannot be compared with pseudo labels.
            let fits =
                |labels: &Vec<u32>| labels.iter().all(|&l| (l as usize) < source.num_classes);
            if !set.labels.as_ref().is_some_and(fits) {
                set.labels = None;
            }
            Some(set)
        }
        (None, _) if split.unlabeled.is_empty() => {
            return Err(InvalidInput::error(
                "data.unlabeled: no separate source and no labeled images left over to use",
            ));
        }
        // The rest keeps its labels: no loss reads them, `pseudo/accuracy` does.
        (None, _) => Some(source.subset(&split.unlabeled)),
    };
    let eval = match &data.eval {
        Some(e) => {
            let set = load_source("data.eval", e)?;
            check_same_shape("data.eval", &set, &source)?;
            check_labels("data.eval", &set, source.num_classes)?;
            Some(set)
        }
        None => None,
    };

    let (mean, std) = match &data.normalization {
        Some(n) if n.mean.len() == source.channels || n.mean.len() == 1 => {
            (n.mean.clone(), n.std.clone())
        }
        Some(n) => {
            return Err(InvalidInput::error(format!(
                "data.normalization: {} values for images with {} channels",
                n.mean.len(),
                source.channels
            )));
        }
        None => labeled.channel_mean_std(),
    };
    let class_names = if source.class_names.len() == source.num_classes {
        source.class_names.clone()
    } else {
        (0..source.num_classes).map(|c| c.to_string()).collect()
    };
    let info = DataInfo {
        num_classes: source.num_classes,
        in_channels: source.channels,
        height: source.height,
        width: source.width,
        class_names,
        mean,
        std,
        bn_momentum,
        num_labeled: labeled.len(),
        num_unlabeled: unlabeled.as_ref().map_or(0, ImageSet::len),
    };
    Ok(TrainingData {
        labeled: Arc::new(labeled),
        unlabeled: unlabeled.map(Arc::new),
        validation,
        eval,
        info,
    })
}

fn load_source(field: &str, source: &DataSource) -> Result<ImageSet> {
    if source.dataset_id.is_some() {
        return Err(InvalidInput::error(format!(
            "{field}.dataset_id: the trainer reads local files; resolve the dataset to a path \
             with format `canonical` first"
        )));
    }
    let (Some(path), Some(format)) = (&source.path, source.format) else {
        return Err(InvalidInput::error(format!(
            "{field}: both path and format are required"
        )));
    };
    let labels = source.labels_path.as_deref().map(Path::new);
    let set = mpl_data::load(format, Path::new(path), labels)
        .map_err(|e| InvalidInput::error(format!("{field}: {e}")))?;
    if set.is_empty() {
        return Err(InvalidInput::error(format!(
            "{field}: {path} holds no images"
        )));
    }
    Ok(set)
}

fn check_same_shape(field: &str, set: &ImageSet, reference: &ImageSet) -> Result<()> {
    let a = (set.height, set.width, set.channels);
    let b = (reference.height, reference.width, reference.channels);
    if a != b {
        return Err(InvalidInput::error(format!(
            "{field}: images are {}x{}x{} but the labeled images are {}x{}x{}",
            a.0, a.1, a.2, b.0, b.1, b.2
        )));
    }
    Ok(())
}

fn check_labels(field: &str, set: &ImageSet, num_classes: usize) -> Result<()> {
    let Some(labels) = &set.labels else {
        return Err(InvalidInput::error(format!(
            "{field}: the evaluation source has no labels"
        )));
    };
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
        return Err(InvalidInput::error(format!(
            "{field}: label {bad} is out of range for the {num_classes} classes of data.labeled"
        )));
    }
    Ok(())
}

/// Which images form each batch: an endless stream of per-epoch permutations of `0..len`.
///
/// Batch `k` covers positions `k * batch .. (k + 1) * batch` of the stream; the permutation of
/// epoch `e` is drawn from `mix(seed, e)`. A batch may straddle two epochs, and a set smaller
/// than the batch simply cycles through several permutations.
#[derive(Debug, Clone)]
pub struct Sampler {
    len: usize,
    batch: usize,
    seed: u64,
    cached: Option<(u64, Vec<usize>)>,
}

impl Sampler {
    /// A sampler over `len` images (at least one) in batches of `batch`.
    pub fn new(len: usize, batch: usize, seed: u64) -> Sampler {
        Sampler {
            len: len.max(1),
            batch,
            seed,
            cached: None,
        }
    }

    /// The image indices of batch `step`.
    pub fn indices(&mut self, step: u64) -> Vec<usize> {
        let first = step * self.batch as u64;
        (first..first + self.batch as u64)
            .map(|position| {
                let epoch = position / self.len as u64;
                let offset = (position % self.len as u64) as usize;
                self.permutation(epoch)[offset]
            })
            .collect()
    }

    fn permutation(&mut self, epoch: u64) -> &[usize] {
        let stale = self.cached.as_ref().is_none_or(|(e, _)| *e != epoch);
        if stale {
            let mut order: Vec<usize> = (0..self.len).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(self.seed, epoch)));
            self.cached = Some((epoch, order));
        }
        self.cached
            .as_ref()
            .map_or(&[], |(_, order)| order.as_slice())
    }
}

/// One step's images as augmented u8 HWC buffers, ready to become tensors.
pub struct HostBatch {
    /// The step these images belong to.
    pub step: u64,
    /// Labeled images, weak view.
    pub x_l: Vec<u8>,
    /// Their labels.
    pub y_l: Vec<i64>,
    /// Unlabeled images, weak view (`None` when the algorithm uses no unlabeled data).
    pub u_w: Option<Vec<u8>>,
    /// The same unlabeled images, strong view.
    pub u_s: Option<Vec<u8>>,
    /// Their true classes, when the unlabeled source has labels (metrics only).
    pub y_u: Option<Vec<i64>>,
}

impl HostBatch {
    /// Normalised f32 NCHW tensors on `device`.
    pub fn to_device(&self, info: &DataInfo, device: Device) -> StepBatch {
        let image_len = info.height * info.width * info.in_channels;
        let tensor = |pixels: &[u8]| {
            normalise(
                pixels,
                pixels.len() / image_len,
                info.height,
                info.width,
                info.in_channels,
                &info.mean,
                &info.std,
                device,
            )
        };
        StepBatch {
            x_l: tensor(&self.x_l),
            y_l: Tensor::from_slice(&self.y_l).to_device(device),
            u_w: self.u_w.as_deref().map(tensor),
            u_s: self.u_s.as_deref().map(tensor),
            y_u: self
                .y_u
                .as_deref()
                .map(|y| Tensor::from_slice(y).to_device(device)),
        }
    }

    /// Images in this batch (labeled plus unlabeled, each counted once).
    pub fn num_images(&self, image_len: usize) -> usize {
        (self.x_l.len() + self.u_w.as_ref().map_or(0, Vec::len)) / image_len.max(1)
    }
}

/// Builds the augmented batches of a run.
pub struct BatchMaker {
    labeled: Arc<ImageSet>,
    unlabeled: Option<Arc<ImageSet>>,
    augmenter: Arc<Augmenter>,
    labeled_sampler: Sampler,
    unlabeled_sampler: Option<Sampler>,
    seed: u64,
    stream: u64,
}

impl BatchMaker {
    /// Training batches: `spec.batch_size` labeled images (weak view) and, when `unlabeled` is
    /// given, `mu` times as many unlabeled images in a weak and a strong view.
    pub fn training(
        spec: &RunSpec,
        labeled: Arc<ImageSet>,
        unlabeled: Option<Arc<ImageSet>>,
    ) -> BatchMaker {
        let augmenter = Augmenter::new(
            &spec.augment,
            labeled.height,
            labeled.width,
            labeled.channels,
        );
        let seed = spec.seed;
        let labeled_sampler = Sampler::new(labeled.len(), spec.batch_size, seed ^ LABELED_STREAM);
        let unlabeled_sampler = unlabeled
            .as_ref()
            .map(|u| Sampler::new(u.len(), spec.batch_size * spec.mu, seed ^ UNLABELED_STREAM));
        BatchMaker {
            labeled,
            unlabeled,
            augmenter: Arc::new(augmenter),
            labeled_sampler,
            unlabeled_sampler,
            seed,
            stream: 0,
        }
    }

    /// Fine-tuning batches: `spec.finetune.batch_size` labeled images, weak view, from a stream
    /// of their own.
    pub fn finetuning(spec: &RunSpec, labeled: Arc<ImageSet>) -> BatchMaker {
        let augmenter = Augmenter::new(
            &spec.augment,
            labeled.height,
            labeled.width,
            labeled.channels,
        );
        let seed = spec.seed ^ FINETUNE_STREAM;
        BatchMaker {
            labeled_sampler: Sampler::new(labeled.len(), spec.finetune.batch_size, seed),
            labeled,
            unlabeled: None,
            augmenter: Arc::new(augmenter),
            unlabeled_sampler: None,
            seed,
            stream: FINETUNE_STREAM,
        }
    }

    /// The augmented batch of `step`.
    pub fn make(&mut self, step: u64) -> HostBatch {
        let set = &self.labeled;
        let indices = self.labeled_sampler.indices(step);
        let mut x_l = vec![0u8; indices.len() * set.image_len()];
        let label_seed = self.seed ^ LABELED_STREAM ^ self.stream;
        self.augmenter
            .weak_batch(set, &indices, label_seed, step, &mut x_l);
        let labels = set.labels.as_deref().unwrap_or(&[]);
        let y_l = indices
            .iter()
            .map(|&i| labels.get(i).map_or(0, |&l| i64::from(l)))
            .collect();

        let (u_w, u_s, y_u) = match (&self.unlabeled, &mut self.unlabeled_sampler) {
            (Some(u), Some(sampler)) => {
                let indices = sampler.indices(step);
                let mut weak = vec![0u8; indices.len() * u.image_len()];
                let mut strong = vec![0u8; indices.len() * u.image_len()];
                let seed = self.seed ^ UNLABELED_STREAM;
                self.augmenter
                    .weak_strong_batch(u, &indices, seed, step, &mut weak, &mut strong);
                let truth = u
                    .labels
                    .as_deref()
                    .map(|labels| indices.iter().map(|&i| i64::from(labels[i])).collect());
                (Some(weak), Some(strong), truth)
            }
            _ => (None, None, None),
        };
        HostBatch {
            step,
            x_l,
            y_l,
            u_w,
            u_s,
            y_u,
        }
    }
}

/// Makes the batches of a range of steps on a background thread, one step ahead of training.
pub struct Prefetcher {
    receiver: Option<Receiver<HostBatch>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts making the batches of `steps` in order.
    pub fn spawn(mut maker: BatchMaker, steps: Range<u64>) -> Prefetcher {
        let (sender, receiver): (SyncSender<HostBatch>, _) = sync_channel(1);
        let worker = std::thread::Builder::new()
            .name("batch-prefetch".into())
            .spawn(move || {
                for step in steps {
                    if sender.send(maker.make(step)).is_err() {
                        break;
                    }
                }
            })
            .ok();
        Prefetcher {
            receiver: Some(receiver),
            worker,
        }
    }

    /// The next batch; an error when the worker died (it panicked or could not start).
    pub fn next_batch(&mut self) -> Result<HostBatch> {
        self.receiver
            .as_ref()
            .and_then(|r| r.recv().ok())
            .ok_or_else(|| anyhow!("the batch prefetch thread stopped unexpectedly"))
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel makes a blocked worker's `send` fail, so it exits promptly.
        self.receiver.take();
        if let Some(worker) = self.worker.take() {
            worker.join().ok();
        }
    }
}

/// Unaugmented batches of training images for batch-norm re-estimation before an evaluation,
/// drawn deterministically from `(seed, step)`.
pub fn recalibration_batches(
    data: &TrainingData,
    spec: &RunSpec,
    step: u64,
    count: usize,
    device: Device,
) -> Result<Vec<Tensor>> {
    let set = data.unlabeled.as_ref().unwrap_or(&data.labeled);
    let batch = spec.batch_size * (1 + spec.mu);
    let mut sampler = Sampler::new(
        set.len(),
        batch,
        mix(spec.seed ^ RECALIBRATION_STREAM, step),
    );
    let image_len = set.image_len();
    (0..count as u64)
        .map(|k| {
            let indices = sampler.indices(k);
            let mut pixels = Vec::with_capacity(indices.len() * image_len);
            for &i in &indices {
                pixels.extend_from_slice(set.image(i));
            }
            let info = &data.info;
            Ok(normalise(
                &pixels,
                indices.len(),
                info.height,
                info.width,
                info.in_channels,
                &info.mean,
                &info.std,
                device,
            ))
        })
        .collect::<Result<Vec<_>>>()
        .context("cannot build batch-norm recalibration batches")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_visits_each_image_once() {
        let mut sampler = Sampler::new(10, 4, 7);
        let stream: Vec<usize> = (0..5).flat_map(|k| sampler.indices(k)).collect();
        for epoch in stream.chunks(10) {
            let mut sorted = epoch.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(stream[..10], stream[10..], "epochs must be reshuffled");
    }

    #[test]
    fn a_batch_depends_only_on_seed_and_step() {
        let mut a = Sampler::new(100, 16, 3);
        let mut b = Sampler::new(100, 16, 3);
        let _ = a.indices(0);
        let _ = a.indices(40);
        assert_eq!(a.indices(17), b.indices(17));
        assert_ne!(Sampler::new(100, 16, 4).indices(17), b.indices(17));
    }

    #[test]
    fn a_set_smaller_than_the_batch_cycles() {
        let batch = Sampler::new(3, 7, 1).indices(0);
        assert_eq!(batch.len(), 7);
        assert!(batch.iter().all(|&i| i < 3));
    }
}
