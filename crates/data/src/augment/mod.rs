//! The weak and strong views Meta Pseudo Labels trains on.
//!
//! * weak: random horizontal flip, then reflect-pad by `round(pad_crop_fraction * side)` and crop
//!   back to the original size at a random offset;
//! * strong: weak, then RandAugment (`randaugment_ops` operations drawn uniformly from the
//!   fifteen of [`Op::ALL`], each at `randaugment_magnitude`, or with `randaugment_sampling =
//!   "uniform"` each applied with probability 1/2 at a magnitude drawn from 1 to
//!   `randaugment_magnitude`), then Cutout of a square of
//!   `cutout_fraction` of the side filled with grey.
//!
//! Images are `u8` HWC buffers. Every image of a batch gets its own [`ChaCha8Rng`], seeded by
//! [`sample_seed`] from the run seed, the step and its position in the batch, so the bytes do not
//! depend on how many threads do the work or in which order.

mod ops;

use mpl_protocol::spec::{AugmentSpec, MagnitudeSampling};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use ops::{AFFINE_FILL, CUTOUT_FILL, Op, Shape, auto_contrast, cutout, equalize, fill_box};

use crate::ImageSet;

/// Separates the strong view's random stream from the weak view's.
const STRONG_STREAM: u64 = 0x5354_524f_4e47_5631;
/// Batches smaller than this per thread are not worth a thread.
const MIN_IMAGES_PER_THREAD: usize = 8;

/// Mixes a run seed, a step (or epoch) and an index into one well-spread 64-bit seed
/// (three rounds of splitmix64).
pub fn sample_seed(seed: u64, step: u64, index: u64) -> u64 {
    let mut z = splitmix64(seed);
    z = splitmix64(z ^ step);
    splitmix64(z ^ index)
}

/// One step of splitmix64: add the golden-ratio increment, then scramble.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Produces weak and strong views of images of one shape.
#[derive(Debug, Clone)]
pub struct Augmenter {
    shape: Shape,
    flip: bool,
    pad_y: usize,
    pad_x: usize,
    num_ops: usize,
    magnitude: f64,
    sampling: MagnitudeSampling,
    cutout_fraction: f64,
    threads: usize,
}

impl Augmenter {
    /// An augmenter for `height x width x channels` images, using every available core
    /// (at most 8) for batches.
    pub fn new(spec: &AugmentSpec, height: usize, width: usize, channels: usize) -> Self {
        let pad = |side: usize| {
            let pad = (spec.pad_crop_fraction.max(0.0) * side as f64).round() as usize;
            pad.min(side.saturating_sub(1))
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        Augmenter {
            shape: Shape {
                height,
                width,
                channels,
            },
            flip: spec.flip,
            pad_y: pad(height),
            pad_x: pad(width),
            num_ops: spec.randaugment_ops,
            magnitude: spec.randaugment_magnitude,
            sampling: spec.randaugment_sampling,
            cutout_fraction: spec.cutout_fraction.clamp(0.0, 1.0),
            threads,
        }
    }

    /// The same augmenter with batches split over `threads` threads (at least 1). Results do not
    /// change with this setting.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The image shape this augmenter works on.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Weak view: random horizontal flip + reflect-pad-and-crop. `src` and `dst` are one image
    /// each. Panics if their lengths differ from the shape's.
    pub fn weak(&self, src: &[u8], dst: &mut [u8], rng: &mut impl Rng) {
        let Shape {
            height: h,
            width: w,
            channels: c,
        } = self.shape;
        assert_eq!(src.len(), self.shape.len(), "source image length");
        assert_eq!(dst.len(), self.shape.len(), "destination image length");

        let flip = self.flip && rng.random_bool(0.5);
        let offset_y = rng.random_range(0..=2 * self.pad_y);
        let offset_x = rng.random_range(0..=2 * self.pad_x);

        let columns: Vec<usize> = (0..w)
            .map(|x| {
                let px = reflect(x + offset_x, self.pad_x, w);
                if flip { w - 1 - px } else { px }
            })
            .collect();
        for (y, row) in dst.chunks_exact_mut(w * c).enumerate() {
            let sy = reflect(y + offset_y, self.pad_y, h);
            let src_row = &src[sy * w * c..(sy + 1) * w * c];
            if c == 1 {
                for (out, &sx) in row.iter_mut().zip(&columns) {
                    *out = src_row[sx];
                }
            } else {
                for (out, &sx) in row.chunks_exact_mut(c).zip(&columns) {
                    out.copy_from_slice(&src_row[sx * c..(sx + 1) * c]);
                }
            }
        }
    }

    /// Strong view: weak, then RandAugment (`n` operations at magnitude `m`, or as
    /// [`MagnitudeSampling::Uniform`] draws them), then Cutout.
    pub fn strong(&self, src: &[u8], dst: &mut [u8], rng: &mut impl Rng) {
        self.weak(src, dst, rng);
        for _ in 0..self.num_ops {
            let op = Op::ALL[rng.random_range(0..Op::ALL.len())];
            match self.sampling {
                MagnitudeSampling::Fixed => op.apply(dst, self.shape, self.magnitude, rng),
                MagnitudeSampling::Uniform => {
                    let apply = rng.random_bool(0.5);
                    let magnitude = if self.magnitude > 1.0 {
                        rng.random_range(1.0..=self.magnitude)
                    } else {
                        self.magnitude
                    };
                    if apply {
                        op.apply(dst, self.shape, magnitude, rng);
                    }
                }
            }
        }
        cutout(dst, self.shape, self.cutout_fraction, CUTOUT_FILL, rng);
    }

    /// Weak views of `indices` of `set` into `dst` (`indices.len() * image_len` bytes); the
    /// `k`-th image uses the seed `sample_seed(seed, step, k)`.
    ///
    /// Panics if `dst` has the wrong length, the set's shape is not this augmenter's, or an
    /// index is out of range.
    pub fn weak_batch(
        &self,
        set: &ImageSet,
        indices: &[usize],
        seed: u64,
        step: u64,
        dst: &mut [u8],
    ) {
        self.check_batch(set, indices, dst);
        self.parallel(indices, dst, None, |k, index, weak, _| {
            let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(seed, step, k as u64));
            self.weak(set.image(index), weak, &mut rng);
        });
    }

    /// Strong views of `indices` of `set` into `dst`; the `k`-th image uses the seed
    /// `sample_seed(seed ^ STRONG_STREAM, step, k)`, so its bytes equal the strong half of
    /// [`Augmenter::weak_strong_batch`] with the same arguments.
    pub fn strong_batch(
        &self,
        set: &ImageSet,
        indices: &[usize],
        seed: u64,
        step: u64,
        dst: &mut [u8],
    ) {
        self.check_batch(set, indices, dst);
        self.parallel(indices, dst, None, |k, index, strong, _| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(sample_seed(seed ^ STRONG_STREAM, step, k as u64));
            self.strong(set.image(index), strong, &mut rng);
        });
    }

    /// Weak and strong views of the same images in one pass, as the unlabeled batch needs.
    /// Each half equals what [`Augmenter::weak_batch`] and [`Augmenter::strong_batch`] give.
    pub fn weak_strong_batch(
        &self,
        set: &ImageSet,
        indices: &[usize],
        seed: u64,
        step: u64,
        weak_dst: &mut [u8],
        strong_dst: &mut [u8],
    ) {
        self.check_batch(set, indices, weak_dst);
        self.check_batch(set, indices, strong_dst);
        self.parallel(
            indices,
            weak_dst,
            Some(strong_dst),
            |k, index, weak, strong| {
                let src = set.image(index);
                let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(seed, step, k as u64));
                self.weak(src, weak, &mut rng);
                if let Some(strong) = strong {
                    let mut rng = ChaCha8Rng::seed_from_u64(sample_seed(
                        seed ^ STRONG_STREAM,
                        step,
                        k as u64,
                    ));
                    self.strong(src, strong, &mut rng);
                }
            },
        );
    }

    /// Asserts that a batch call is well-formed.
    fn check_batch(&self, set: &ImageSet, indices: &[usize], dst: &[u8]) {
        let set_shape = Shape {
            height: set.height,
            width: set.width,
            channels: set.channels,
        };
        assert_eq!(
            set_shape, self.shape,
            "image set shape differs from the augmenter's"
        );
        assert_eq!(
            dst.len(),
            indices.len() * self.shape.len(),
            "batch buffer length"
        );
    }

    /// Runs `work(k, index, first, second)` for every image of the batch, splitting the images
    /// into contiguous chunks over the configured threads.
    fn parallel<F>(&self, indices: &[usize], first: &mut [u8], second: Option<&mut [u8]>, work: F)
    where
        F: Fn(usize, usize, &mut [u8], Option<&mut [u8]>) + Sync,
    {
        let image_len = self.shape.len();
        if indices.is_empty() || image_len == 0 {
            return;
        }
        let threads = self
            .threads
            .min(indices.len().div_ceil(MIN_IMAGES_PER_THREAD))
            .max(1);
        let per_thread = indices.len().div_ceil(threads);
        let chunk_bytes = per_thread * image_len;
        let run_chunk = |chunk: usize, first: &mut [u8], mut second: Option<&mut [u8]>| {
            let start = chunk * per_thread;
            for (j, out) in first.chunks_exact_mut(image_len).enumerate() {
                let k = start + j;
                let other = second
                    .as_deref_mut()
                    .map(|s| &mut s[j * image_len..(j + 1) * image_len]);
                work(k, indices[k], out, other);
            }
        };

        let seconds: Vec<Option<&mut [u8]>> = match second {
            Some(s) => s.chunks_mut(chunk_bytes).map(Some).collect(),
            None => std::iter::repeat_with(|| None).take(threads).collect(),
        };
        if threads == 1 {
            let second = seconds.into_iter().next().flatten();
            run_chunk(0, first, second);
            return;
        }
        std::thread::scope(|scope| {
            for (chunk, (first, second)) in first.chunks_mut(chunk_bytes).zip(seconds).enumerate() {
                let run_chunk = &run_chunk;
                scope.spawn(move || run_chunk(chunk, first, second));
            }
        });
    }
}

/// Maps position `p` of the padded axis (padding `pad` on each side of `side` pixels) to the
/// source pixel, mirroring at the borders without repeating the edge pixel.
fn reflect(p: usize, pad: usize, side: usize) -> usize {
    let i = p as isize - pad as isize;
    let last = side as isize - 1;
    let mirrored = if i < 0 {
        -i
    } else if i > last {
        2 * last - i
    } else {
        i
    };
    mirrored.clamp(0, last) as usize
}

#[cfg(test)]
mod tests;
