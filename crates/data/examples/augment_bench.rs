//! Measures augmentation throughput and prints one JSON line.
//!
//! `cargo run -p mpl-data --release --example augment_bench`
//!
//! For 32x32x3 and 28x28x1 random images it reports `images_per_sec` of the weak and strong
//! batch functions, and the milliseconds of one Meta Pseudo Labels step at B = 16, mu = 7
//! (16 weak labeled images, then weak and strong views of 112 unlabeled ones).

use std::time::{Duration, Instant};

use mpl_data::{Augmenter, ImageSet};
use mpl_protocol::spec::AugmentSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Labeled images per step.
const BATCH: usize = 16;
/// Unlabeled images per labeled image.
const MU: usize = 7;
/// How long each measurement runs.
const MEASURE: Duration = Duration::from_millis(1500);

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut shapes = serde_json::Map::new();
    for (name, h, w, c) in [("32x32x3", 32, 32, 3), ("28x28x1", 28, 28, 1)] {
        shapes.insert(name.to_string(), measure_shape(h, w, c));
    }
    let report = json!({
        "benchmark": "augment",
        "threads": threads,
        "shapes": shapes,
    });
    println!("{report}");
}

/// Throughputs and MPL step time for one image shape.
fn measure_shape(h: usize, w: usize, c: usize) -> serde_json::Value {
    let set = random_set(1024, h, w, c);
    let augmenter = Augmenter::new(&AugmentSpec::default(), h, w, c);
    let indices: Vec<usize> = (0..BATCH * MU).collect();
    let mut weak = vec![0u8; indices.len() * set.image_len()];
    let mut strong = vec![0u8; indices.len() * set.image_len()];

    let weak_rate = images_per_sec(indices.len(), |step| {
        augmenter.weak_batch(&set, &indices, 1, step, &mut weak);
    });
    let strong_rate = images_per_sec(indices.len(), |step| {
        augmenter.strong_batch(&set, &indices, 1, step, &mut strong);
    });

    let labeled: Vec<usize> = (0..BATCH).collect();
    let mut labeled_out = vec![0u8; BATCH * set.image_len()];
    let steps_per_sec = images_per_sec(1, |step| {
        augmenter.weak_batch(&set, &labeled, 1, step, &mut labeled_out);
        augmenter.weak_strong_batch(&set, &indices, 2, step, &mut weak, &mut strong);
    });

    json!({
        "weak_images_per_sec": weak_rate.round(),
        "strong_images_per_sec": strong_rate.round(),
        "mpl_step_ms": (1000.0 / steps_per_sec * 1000.0).round() / 1000.0,
        "mpl_step_images": BATCH + 2 * BATCH * MU,
    })
}

/// Repeats `run` (given the repetition number) for [`MEASURE`] and returns units per second.
fn images_per_sec(units_per_run: usize, mut run: impl FnMut(u64)) -> f64 {
    for step in 0..3 {
        run(step);
    }
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < MEASURE {
        run(runs);
        runs += 1;
    }
    (runs as usize * units_per_run) as f64 / start.elapsed().as_secs_f64()
}

/// `n` images of uniform noise.
fn random_set(n: usize, h: usize, w: usize, c: usize) -> ImageSet {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    ImageSet {
        height: h,
        width: w,
        channels: c,
        pixels: (0..n * h * w * c).map(|_| rng.random()).collect(),
        labels: None,
        class_names: Vec::new(),
        num_classes: 0,
    }
}
