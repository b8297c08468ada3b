//! Invariants of the augmentations: shapes, identities, determinism, and each operation's effect.

use super::*;

fn spec() -> AugmentSpec {
    AugmentSpec::default()
}

fn random_image(shape: Shape, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..shape.len()).map(|_| rng.random()).collect()
}

fn random_set(n: usize, h: usize, w: usize, c: usize) -> ImageSet {
    let shape = Shape {
        height: h,
        width: w,
        channels: c,
    };
    ImageSet {
        height: h,
        width: w,
        channels: c,
        pixels: (0..n).flat_map(|i| random_image(shape, i as u64)).collect(),
        labels: None,
        class_names: Vec::new(),
        num_classes: 0,
    }
}

const RGB: Shape = Shape {
    height: 32,
    width: 32,
    channels: 3,
};
const GRAY: Shape = Shape {
    height: 28,
    width: 28,
    channels: 1,
};

fn flip_only() -> AugmentSpec {
    AugmentSpec {
        flip: true,
        pad_crop_fraction: 0.0,
        ..spec()
    }
}

#[test]
fn sample_seeds_differ_in_every_argument() {
    let base = sample_seed(1, 2, 3);
    assert_ne!(base, sample_seed(0, 2, 3));
    assert_ne!(base, sample_seed(1, 3, 3));
    assert_ne!(base, sample_seed(1, 2, 4));
    assert_ne!(sample_seed(1, 2, 3), sample_seed(1, 3, 2));
}

#[test]
fn flipping_twice_is_the_identity() {
    for shape in [RGB, GRAY] {
        let aug = Augmenter::new(&flip_only(), shape.height, shape.width, shape.channels);
        let src = random_image(shape, 1);
        let mut once = vec![0; shape.len()];
        let mut twice = vec![0; shape.len()];
        // Find a seed whose draw flips, then flip the flipped image with the same seed.
        let seed = (0..64)
            .find(|&s| {
                aug.weak(&src, &mut once, &mut ChaCha8Rng::seed_from_u64(s));
                once != src
            })
            .expect("some seed flips");
        aug.weak(&src, &mut once, &mut ChaCha8Rng::seed_from_u64(seed));
        aug.weak(&once, &mut twice, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(twice, src);
        let w = shape.width * shape.channels;
        let c = shape.channels;
        assert_eq!(
            &once[..c],
            &src[w - c..w],
            "first pixel is the old last pixel of row 0"
        );
    }
}

#[test]
fn weak_crop_is_a_shifted_copy_with_reflected_borders() {
    let spec = AugmentSpec {
        flip: false,
        pad_crop_fraction: 0.125,
        ..spec()
    };
    let aug = Augmenter::new(&spec, 32, 32, 1);
    let shape = Shape {
        height: 32,
        width: 32,
        channels: 1,
    };
    let src = random_image(shape, 3);
    let mut dst = vec![0; shape.len()];
    for seed in 0..20 {
        aug.weak(&src, &mut dst, &mut ChaCha8Rng::seed_from_u64(seed));
        // Some shift (dy, dx) within +-4 must reproduce the interior exactly.
        let matches = |dy: isize, dx: isize| {
            (8..24).all(|y: isize| {
                (8..24).all(|x: isize| {
                    dst[(y * 32 + x) as usize] == src[((y + dy) * 32 + x + dx) as usize]
                })
            })
        };
        let found = (-4..=4).any(|dy| (-4..=4).any(|dx| matches(dy, dx)));
        assert!(found, "seed {seed}: output is not a shifted crop");
    }
}

#[test]
fn views_keep_the_shape_and_differ_from_the_source() {
    for shape in [RGB, GRAY] {
        let aug = Augmenter::new(&spec(), shape.height, shape.width, shape.channels);
        let src = random_image(shape, 2);
        let mut dst = vec![0; shape.len()];
        aug.strong(&src, &mut dst, &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(dst.len(), src.len());
        assert_ne!(dst, src);
    }
}

#[test]
fn zero_magnitude_operations_leave_the_image_alone() {
    let identity_at_zero = [
        Op::Rotate,
        Op::Posterize,
        Op::Solarize,
        Op::Color,
        Op::Contrast,
        Op::Brightness,
        Op::Sharpness,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::Cutout,
    ];
    for shape in [RGB, GRAY] {
        let src = random_image(shape, 4);
        for op in identity_at_zero {
            let mut img = src.clone();
            op.apply(&mut img, shape, 0.0, &mut ChaCha8Rng::seed_from_u64(0));
            assert_eq!(img, src, "{op:?} at magnitude 0 changed a {shape:?} image");
        }
    }
}

#[test]
fn every_operation_changes_a_random_image_at_full_magnitude() {
    for shape in [RGB, GRAY] {
        let src = random_image(shape, 5);
        for op in Op::ALL {
            if op == Op::Color && shape.channels == 1 {
                continue;
            }
            let mut img = src.clone();
            op.apply(&mut img, shape, 10.0, &mut ChaCha8Rng::seed_from_u64(1));
            // A random image already spans 0..255, so AutoContrast has nothing to do.
            if op != Op::AutoContrast {
                assert_ne!(img, src, "{op:?} did nothing to a {shape:?} image");
            }
        }
    }
}

#[test]
fn color_is_a_no_op_on_one_channel() {
    let src = random_image(GRAY, 6);
    let mut img = src.clone();
    Op::Color.apply(&mut img, GRAY, 16.0, &mut ChaCha8Rng::seed_from_u64(0));
    assert_eq!(img, src);
}

#[test]
fn inverting_twice_is_the_identity() {
    let src = random_image(RGB, 7);
    let mut img = src.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    Op::Invert.apply(&mut img, RGB, 10.0, &mut rng);
    assert_eq!(img[0], 255 - src[0]);
    Op::Invert.apply(&mut img, RGB, 10.0, &mut rng);
    assert_eq!(img, src);
}

#[test]
fn auto_contrast_stretches_each_channel_to_the_full_range() {
    let shape = Shape {
        height: 4,
        width: 4,
        channels: 3,
    };
    let mut img: Vec<u8> = (0..shape.len())
        .map(|i| 100 + (i % 7) as u8 * 3 + (i % 3) as u8)
        .collect();
    auto_contrast(&mut img, shape);
    for k in 0..3 {
        let channel: Vec<u8> = img.iter().skip(k).step_by(3).copied().collect();
        assert_eq!(channel.iter().min(), Some(&0), "channel {k}");
        assert_eq!(channel.iter().max(), Some(&255), "channel {k}");
    }
}

#[test]
fn equalize_flattens_the_histogram_of_a_skewed_image() {
    let shape = Shape {
        height: 64,
        width: 64,
        channels: 1,
    };
    // Squaring uniform noise piles values near 0: a skewed histogram.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut img: Vec<u8> = (0..shape.len())
        .map(|_| {
            let u: f64 = rng.random();
            (u * u * 255.0) as u8
        })
        .collect();
    equalize(&mut img, shape);
    let mut quarters = [0usize; 4];
    for &v in &img {
        quarters[usize::from(v / 64)] += 1;
    }
    let expected = shape.len() / 4;
    for (q, &n) in quarters.iter().enumerate() {
        let deviation = (n as f64 - expected as f64).abs() / expected as f64;
        assert!(
            deviation < 0.1,
            "quarter {q} holds {n}, expected about {expected}"
        );
    }
}

#[test]
fn cutout_covers_the_requested_fraction_when_inside_the_image() {
    let shape = RGB;
    let mut img = vec![0u8; shape.len()];
    fill_box(&mut img, shape, (16, 16), (16, 16), CUTOUT_FILL);
    let filled = img
        .chunks_exact(3)
        .filter(|p| p == &[CUTOUT_FILL; 3])
        .count();
    assert_eq!(filled, 16 * 16);

    // Random placement: never more than the square, exactly the square when fully inside.
    let mut largest = 0;
    for seed in 0..200 {
        let mut img = vec![0u8; shape.len()];
        cutout(
            &mut img,
            shape,
            0.5,
            CUTOUT_FILL,
            &mut ChaCha8Rng::seed_from_u64(seed),
        );
        let area = img.chunks_exact(3).filter(|p| p[0] == CUTOUT_FILL).count();
        assert!(area <= 256 && area > 0, "area {area}");
        largest = largest.max(area);
    }
    assert_eq!(largest, 256);
}

#[test]
fn batches_are_identical_whatever_the_thread_count() {
    let set = random_set(40, 32, 32, 3);
    let indices: Vec<usize> = (0..40).rev().collect();
    let n = indices.len() * set.image_len();
    let run = |threads: usize| {
        let aug = Augmenter::new(&spec(), 32, 32, 3).with_threads(threads);
        let (mut weak, mut strong) = (vec![0; n], vec![0; n]);
        aug.weak_strong_batch(&set, &indices, 11, 5, &mut weak, &mut strong);
        let mut strong_alone = vec![0; n];
        aug.strong_batch(&set, &indices, 11, 5, &mut strong_alone);
        let mut weak_alone = vec![0; n];
        aug.weak_batch(&set, &indices, 11, 5, &mut weak_alone);
        assert_eq!(strong, strong_alone);
        assert_eq!(weak, weak_alone);
        (weak, strong)
    };
    let one = run(1);
    assert_eq!(one, run(3));
    assert_eq!(one, run(8));
}

#[test]
fn different_seeds_or_steps_give_different_bytes() {
    let set = random_set(8, 28, 28, 1);
    let indices: Vec<usize> = (0..8).collect();
    let aug = Augmenter::new(&spec(), 28, 28, 1);
    let batch = |seed: u64, step: u64| {
        let mut out = vec![0; 8 * set.image_len()];
        aug.strong_batch(&set, &indices, seed, step, &mut out);
        out
    };
    assert_eq!(batch(1, 1), batch(1, 1));
    assert_ne!(batch(1, 1), batch(2, 1));
    assert_ne!(batch(1, 1), batch(1, 2));
}

/// Share of strong views that equal their weak view and mean absolute pixel change, over
/// `count` random grey images, with Cutout off so only RandAugment can change the image.
fn randaugment_effect(sampling: MagnitudeSampling, count: u64) -> (f64, f64) {
    let aug = Augmenter::new(
        &AugmentSpec {
            randaugment_magnitude: 10.0,
            randaugment_sampling: sampling,
            cutout_fraction: 0.0,
            ..spec()
        },
        GRAY.height,
        GRAY.width,
        GRAY.channels,
    );
    let (mut unchanged, mut change) = (0u64, 0.0);
    for seed in 0..count {
        let src = random_image(GRAY, 1000 + seed);
        let (mut weak, mut strong) = (vec![0u8; GRAY.len()], vec![0u8; GRAY.len()]);
        // `strong` starts with the weak view drawn from the same stream, so the two share it.
        aug.weak(&src, &mut weak, &mut ChaCha8Rng::seed_from_u64(seed));
        aug.strong(&src, &mut strong, &mut ChaCha8Rng::seed_from_u64(seed));
        unchanged += u64::from(weak == strong);
        change += weak
            .iter()
            .zip(&strong)
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / GRAY.len() as f64;
    }
    (unchanged as f64 / count as f64, change / count as f64)
}

#[test]
fn uniform_sampling_skips_operations_and_is_milder_than_fixed() {
    let (fixed_unchanged, fixed_change) = randaugment_effect(MagnitudeSampling::Fixed, 400);
    let (uniform_unchanged, uniform_change) = randaugment_effect(MagnitudeSampling::Uniform, 400);
    // Both operations are skipped with probability 1/4; a few operations (Color on grey, for
    // one) leave an image alone at any magnitude, which adds a little on top.
    assert!(
        (0.2..0.45).contains(&uniform_unchanged),
        "uniform: {uniform_unchanged} of strong views equal the weak view"
    );
    assert!(
        fixed_unchanged < 0.15,
        "fixed: {fixed_unchanged} of strong views equal the weak view"
    );
    assert!(
        uniform_change < 0.75 * fixed_change,
        "mean pixel change: uniform {uniform_change}, fixed {fixed_change}"
    );
}
