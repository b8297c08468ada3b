//! Image dataset formats, the canonical form and augmentation.
//!
//! This crate is the only parser of every dataset format the platform accepts (IDX, CIFAR
//! binaries, image folders in archives, and the platform's own canonical form), so the api (which
//! never links libtorch) and the trainer agree on what a file means. Every parser returns an
//! [`ImageSet`]: `u8` pixels, row-major height-width-channel per image, images back to back.
//!
//! The [`augment`] module holds the weak and strong views that Meta Pseudo Labels trains on,
//! written for `u8` buffers and seeded per image so results never depend on thread count.

mod archive;
pub mod augment;
pub mod canonical;
pub mod cifar;
mod error;
pub mod folder;
pub mod idx;
mod limits;
mod reader;
pub mod split;
pub mod thumbnail;

use std::path::Path;

use mpl_protocol::spec::DataFormat;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use augment::{Augmenter, sample_seed};
pub use error::DataError;
pub use limits::Limits;

/// Decoded images, always `u8`, row-major HWC per image, images back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// Rows per image.
    pub height: usize,
    /// Columns per image.
    pub width: usize,
    /// Channels per pixel: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// All pixels; `len = n * height * width * channels`.
    pub pixels: Vec<u8>,
    /// One class index per image, or `None` for an unlabeled set.
    pub labels: Option<Vec<u32>>,
    /// Class names in class-index order; empty when the format does not carry them.
    pub class_names: Vec<String>,
    /// Number of classes; 0 when unlabeled.
    pub num_classes: usize,
}

/// Summary of an image set, as shown to users once a dataset is ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatasetStats {
    /// Number of images.
    pub count: u64,
    /// Rows per image.
    pub height: u32,
    /// Columns per image.
    pub width: u32,
    /// Channels per pixel (1 or 3).
    pub channels: u32,
    /// Number of classes; 0 when unlabeled.
    pub num_classes: u32,
    /// Class names in class-index order; may be empty.
    pub class_names: Vec<String>,
    /// Images per class, in class-index order; empty when unlabeled.
    pub class_counts: Vec<u64>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        match self.image_len() {
            0 => 0,
            n => self.pixels.len() / n,
        }
    }

    /// Whether the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per image (`height * width * channels`).
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// The pixels of image `i` (HWC). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Count, shape, classes and the per-class histogram.
    pub fn stats(&self) -> DatasetStats {
        let class_counts = match &self.labels {
            Some(labels) => {
                let mut counts = vec![0u64; self.num_classes];
                for &label in labels {
                    if let Some(count) = counts.get_mut(label as usize) {
                        *count += 1;
                    }
                }
                counts
            }
            None => Vec::new(),
        };
        DatasetStats {
            count: self.len() as u64,
            height: self.height as u32,
            width: self.width as u32,
            channels: self.channels as u32,
            num_classes: self.num_classes as u32,
            class_names: self.class_names.clone(),
            class_counts,
        }
    }

    /// A new set holding the images at `indices`, in that order (repeats allowed).
    /// Panics if an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        let labels = self
            .labels
            .as_ref()
            .map(|labels| indices.iter().map(|&i| labels[i]).collect());
        ImageSet {
            height: self.height,
            width: self.width,
            channels: self.channels,
            pixels,
            labels,
            class_names: self.class_names.clone(),
            num_classes: self.num_classes,
        }
    }

    /// Per-channel mean and standard deviation of all pixels, on the 0..1 scale.
    ///
    /// The standard deviation is the population one (divided by the pixel count), as
    /// torchvision-style normalisation constants are computed. An empty set gives zeros.
    pub fn channel_mean_std(&self) -> (Vec<f64>, Vec<f64>) {
        let c = self.channels.max(1);
        let mut sums = vec![0u64; c];
        let mut squares = vec![0u64; c];
        for pixel in self.pixels.chunks_exact(c) {
            for (k, &v) in pixel.iter().enumerate() {
                sums[k] += u64::from(v);
                squares[k] += u64::from(v) * u64::from(v);
            }
        }
        let count = (self.pixels.len() / c) as f64;
        if count == 0.0 {
            return (vec![0.0; c], vec![0.0; c]);
        }
        let mean: Vec<f64> = sums.iter().map(|&s| s as f64 / count / 255.0).collect();
        let std = squares
            .iter()
            .zip(&mean)
            .map(|(&sq, &m)| {
                let mean_square = sq as f64 / count / (255.0 * 255.0);
                (mean_square - m * m).max(0.0).sqrt()
            })
            .collect();
        (mean, std)
    }
}

/// Loads any supported source with the default [`Limits`]. `labels_path` is used only for IDX.
pub fn load(
    format: DataFormat,
    path: &Path,
    labels_path: Option<&Path>,
) -> Result<ImageSet, DataError> {
    load_with_limits(format, path, labels_path, &Limits::default())
}

/// Loads any supported source under the given [`Limits`].
pub fn load_with_limits(
    format: DataFormat,
    path: &Path,
    labels_path: Option<&Path>,
    limits: &Limits,
) -> Result<ImageSet, DataError> {
    match format {
        DataFormat::Idx => idx::load_with_limits(path, labels_path, limits),
        DataFormat::Cifar10 => cifar::load_with_limits(path, cifar::Variant::Cifar10, limits),
        DataFormat::Cifar100 => cifar::load_with_limits(path, cifar::Variant::Cifar100, limits),
        DataFormat::ImageFolder => folder::load_with_limits(path, limits),
        DataFormat::Canonical => canonical::read(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        ImageSet {
            height: 1,
            width: 2,
            channels: 1,
            pixels: vec![0, 255, 51, 51, 102, 102],
            labels: Some(vec![1, 0, 1]),
            class_names: vec!["a".into(), "b".into()],
            num_classes: 2,
        }
    }

    #[test]
    fn stats_count_images_per_class() {
        let stats = tiny().stats();
        assert_eq!(stats.count, 3);
        assert_eq!(stats.class_counts, vec![1, 2]);
        assert_eq!((stats.height, stats.width, stats.channels), (1, 2, 1));
    }

    #[test]
    fn subset_copies_pixels_and_labels_in_order() {
        let sub = tiny().subset(&[2, 0]);
        assert_eq!(sub.pixels, vec![102, 102, 0, 255]);
        assert_eq!(sub.labels, Some(vec![1, 1]));
        assert_eq!(sub.len(), 2);
    }

    #[test]
    fn channel_mean_std_matches_a_direct_computation() {
        let set = tiny();
        let values: Vec<f64> = set.pixels.iter().map(|&v| f64::from(v) / 255.0).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        let (m, s) = set.channel_mean_std();
        assert!((m[0] - mean).abs() < 1e-12);
        assert!((s[0] - var.sqrt()).abs() < 1e-9);
    }
}
