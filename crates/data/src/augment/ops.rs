//! The fifteen RandAugment operations on `u8` HWC buffers, for 1 or 3 channels.
//!
//! Strengths come from a magnitude on the scale where 10 is an operation's nominal maximum;
//! larger magnitudes extrapolate and are clamped where the value would stop making sense.
//! Geometric operations sample the nearest source pixel and fill what falls outside with grey
//! 128; Cutout fills with 127. `docs/data-formats.md` lists every operation's formula.

use rand::Rng;

/// Rows, columns and channels of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels per pixel (1 or 3).
    pub channels: usize,
}

impl Shape {
    /// Bytes of one image.
    pub fn len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Whether the shape holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fill of pixels that geometric operations bring in from outside the image.
pub const AFFINE_FILL: u8 = 128;
/// Fill of cut-out squares.
pub const CUTOUT_FILL: u8 = 127;
/// Nominal maximum rotation, in degrees.
const ROTATE_MAX_DEGREES: f64 = 30.0;
/// Nominal maximum shear coefficient.
const SHEAR_MAX: f64 = 0.3;
/// Nominal maximum translation, as a fraction of the side.
const TRANSLATE_MAX: f64 = 0.3;
/// Nominal maximum deviation of an enhancement factor from 1.
const ENHANCE_MAX: f64 = 0.9;
/// Nominal maximum Cutout side, as a fraction of the image side.
const CUTOUT_MAX: f64 = 0.5;

/// One RandAugment operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Stretch each channel's range to 0..255.
    AutoContrast,
    /// Equalise each channel's histogram.
    Equalize,
    /// `255 - v`.
    Invert,
    /// Rotate about the centre by up to 30 degrees (either way) at magnitude 10.
    Rotate,
    /// Keep `8 - 4 m/10` high bits (at least 1).
    Posterize,
    /// Invert pixels at or above `256 - 256 m/10` (at least 0).
    Solarize,
    /// Blend with the grayscale image (no-op on one channel).
    Color,
    /// Blend with the image's mean grey.
    Contrast,
    /// Blend with black.
    Brightness,
    /// Blend with a smoothed copy.
    Sharpness,
    /// Shear rows sideways by up to 0.3 at magnitude 10.
    ShearX,
    /// Shear columns vertically by up to 0.3 at magnitude 10.
    ShearY,
    /// Shift sideways by up to 0.3 of the width at magnitude 10.
    TranslateX,
    /// Shift vertically by up to 0.3 of the height at magnitude 10.
    TranslateY,
    /// Grey out a square of up to half the side at magnitude 10.
    Cutout,
}

impl Op {
    /// The pool RandAugment draws from, uniformly.
    pub const ALL: [Op; 15] = [
        Op::AutoContrast,
        Op::Equalize,
        Op::Invert,
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

    /// Applies the operation in place at `magnitude` (10 = nominal maximum); `rng` draws the
    /// sign of signed operations and Cutout's position.
    pub fn apply(self, img: &mut [u8], shape: Shape, magnitude: f64, rng: &mut impl Rng) {
        let level = (magnitude / 10.0).max(0.0);
        match self {
            Op::AutoContrast => auto_contrast(img, shape),
            Op::Equalize => equalize(img, shape),
            Op::Invert => img.iter_mut().for_each(|v| *v = 255 - *v),
            Op::Rotate => {
                let radians = (ROTATE_MAX_DEGREES * level * sign(rng)).to_radians();
                let (sin, cos) = radians.sin_cos();
                affine(img, shape, [cos, -sin, sin, cos], [0.0, 0.0]);
            }
            Op::Posterize => posterize(img, level),
            Op::Solarize => {
                let threshold = (256.0 - 256.0 * level).round().clamp(0.0, 256.0) as u16;
                solarize(img, threshold);
            }
            Op::Color => color(img, shape, enhance_factor(level, rng)),
            Op::Contrast => contrast(img, shape, enhance_factor(level, rng)),
            Op::Brightness => blend_constant(img, 0.0, enhance_factor(level, rng)),
            Op::Sharpness => sharpness(img, shape, enhance_factor(level, rng)),
            Op::ShearX => affine(
                img,
                shape,
                [1.0, SHEAR_MAX * level * sign(rng), 0.0, 1.0],
                [0.0; 2],
            ),
            Op::ShearY => affine(
                img,
                shape,
                [1.0, 0.0, SHEAR_MAX * level * sign(rng), 1.0],
                [0.0; 2],
            ),
            Op::TranslateX => {
                let shift = TRANSLATE_MAX * level * shape.width as f64 * sign(rng);
                affine(img, shape, [1.0, 0.0, 0.0, 1.0], [shift, 0.0]);
            }
            Op::TranslateY => {
                let shift = TRANSLATE_MAX * level * shape.height as f64 * sign(rng);
                affine(img, shape, [1.0, 0.0, 0.0, 1.0], [0.0, shift]);
            }
            Op::Cutout => {
                let fraction = (CUTOUT_MAX * level).min(1.0);
                cutout(img, shape, fraction, CUTOUT_FILL, rng);
            }
        }
    }
}

/// +1 or -1 with equal probability.
fn sign(rng: &mut impl Rng) -> f64 {
    if rng.random_bool(0.5) { 1.0 } else { -1.0 }
}

/// `1 +- 0.9 level`, never negative.
fn enhance_factor(level: f64, rng: &mut impl Rng) -> f64 {
    (1.0 + ENHANCE_MAX * level * sign(rng)).max(0.0)
}

/// Rounds and clamps a blended value to a pixel.
fn to_pixel(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Stretches each channel linearly so its darkest value becomes 0 and its brightest 255.
pub fn auto_contrast(img: &mut [u8], shape: Shape) {
    let c = shape.channels;
    for k in 0..c {
        let (mut lo, mut hi) = (255u8, 0u8);
        for v in img.iter().skip(k).step_by(c) {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
        if hi <= lo {
            continue;
        }
        let scale = 255.0 / f64::from(hi - lo);
        let lut: Vec<u8> = (0..=255u8)
            .map(|v| to_pixel(f64::from(v.saturating_sub(lo)) * scale))
            .collect();
        img.iter_mut()
            .skip(k)
            .step_by(c)
            .for_each(|v| *v = lut[usize::from(*v)]);
    }
}

/// Equalises each channel's histogram: values map to their cumulative count, spread evenly over
/// 0..255 (the most frequent top value is left out of the step, as common imaging libraries do).
pub fn equalize(img: &mut [u8], shape: Shape) {
    let c = shape.channels;
    for k in 0..c {
        let mut histogram = [0usize; 256];
        for v in img.iter().skip(k).step_by(c) {
            histogram[usize::from(*v)] += 1;
        }
        let total: usize = histogram.iter().sum();
        let last = histogram
            .iter()
            .rev()
            .find(|&&n| n > 0)
            .copied()
            .unwrap_or(0);
        let step = (total - last) / 255;
        if step == 0 {
            continue;
        }
        let mut lut = [0u8; 256];
        let mut cumulative = step / 2;
        for (value, &count) in histogram.iter().enumerate() {
            lut[value] = (cumulative / step).min(255) as u8;
            cumulative += count;
        }
        img.iter_mut()
            .skip(k)
            .step_by(c)
            .for_each(|v| *v = lut[usize::from(*v)]);
    }
}

/// Keeps the `8 - round(4 level)` high bits of every value (between 1 and 8 bits).
fn posterize(img: &mut [u8], level: f64) {
    let bits = (8.0 - (4.0 * level).round()).clamp(1.0, 8.0) as u32;
    let mask = 0xffu8 << (8 - bits);
    img.iter_mut().for_each(|v| *v &= mask);
}

/// Inverts every value at or above `threshold` (256 leaves the image alone).
fn solarize(img: &mut [u8], threshold: u16) {
    img.iter_mut()
        .filter(|v| u16::from(**v) >= threshold)
        .for_each(|v| *v = 255 - *v);
}

/// ITU-R 601 luma of an RGB pixel, as integer-weighted by common imaging libraries.
fn luma(p: &[u8]) -> f64 {
    (f64::from(p[0]) * 299.0 + f64::from(p[1]) * 587.0 + f64::from(p[2]) * 114.0) / 1000.0
}

/// Blends every pixel with its own grey: 0 gives grayscale, 1 the image, >1 more saturation.
fn color(img: &mut [u8], shape: Shape, factor: f64) {
    if shape.channels != 3 {
        return;
    }
    for p in img.chunks_exact_mut(3) {
        let grey = luma(p);
        for v in p.iter_mut() {
            *v = to_pixel(grey + factor * (f64::from(*v) - grey));
        }
    }
}

/// Blends with the image's mean grey level: 0 gives a flat grey image.
fn contrast(img: &mut [u8], shape: Shape, factor: f64) {
    let pixels = (shape.height * shape.width).max(1) as f64;
    let sum: f64 = if shape.channels == 3 {
        img.chunks_exact(3).map(luma).sum()
    } else {
        img.iter().map(|&v| f64::from(v)).sum()
    };
    let mean = (sum / pixels).round();
    blend_constant(img, mean, factor);
}

/// `degenerate + factor * (v - degenerate)` for every value.
fn blend_constant(img: &mut [u8], degenerate: f64, factor: f64) {
    let lut: Vec<u8> = (0..=255u8)
        .map(|v| to_pixel(degenerate + factor * (f64::from(v) - degenerate)))
        .collect();
    img.iter_mut().for_each(|v| *v = lut[usize::from(*v)]);
}

/// Blends with a smoothed copy (3x3 kernel, centre weight 5, others 1; the border is kept):
/// 0 blurs, 1 is the image, >1 sharpens.
fn sharpness(img: &mut [u8], shape: Shape, factor: f64) {
    let Shape {
        height: h,
        width: w,
        channels: c,
    } = shape;
    if h < 3 || w < 3 {
        return;
    }
    let src = img.to_vec();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for k in 0..c {
                let at = |yy: usize, xx: usize| u32::from(src[(yy * w + xx) * c + k]);
                let mut sum = 4 * at(y, x);
                for yy in y - 1..=y + 1 {
                    for xx in x - 1..=x + 1 {
                        sum += at(yy, xx);
                    }
                }
                let smooth = (f64::from(sum) / 13.0).round();
                let i = (y * w + x) * c + k;
                img[i] = to_pixel(smooth + factor * (f64::from(src[i]) - smooth));
            }
        }
    }
}

/// Resamples the image: output pixel `p` (relative to the centre) takes the source pixel
/// nearest to `m p + t` (relative to the centre); outside pixels become [`AFFINE_FILL`].
fn affine(img: &mut [u8], shape: Shape, m: [f64; 4], t: [f64; 2]) {
    let Shape {
        height: h,
        width: w,
        channels: c,
    } = shape;
    let src = img.to_vec();
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    for y in 0..h {
        let dy = y as f64 - cy;
        for x in 0..w {
            let dx = x as f64 - cx;
            let sx = (m[0] * dx + m[1] * dy + t[0] + cx).round();
            let sy = (m[2] * dx + m[3] * dy + t[1] + cy).round();
            let out = &mut img[(y * w + x) * c..(y * w + x + 1) * c];
            if sx >= 0.0 && sy >= 0.0 && sx < w as f64 && sy < h as f64 {
                let s = (sy as usize * w + sx as usize) * c;
                out.copy_from_slice(&src[s..s + c]);
            } else {
                out.fill(AFFINE_FILL);
            }
        }
    }
}

/// Fills a box of `round(fraction * side)` on each axis, centred at a uniformly drawn pixel and
/// clipped by the border, with `fill`.
pub fn cutout(img: &mut [u8], shape: Shape, fraction: f64, fill: u8, rng: &mut impl Rng) {
    let side_y = (fraction * shape.height as f64).round() as usize;
    let side_x = (fraction * shape.width as f64).round() as usize;
    if side_y == 0 || side_x == 0 {
        return;
    }
    let cy = rng.random_range(0..shape.height);
    let cx = rng.random_range(0..shape.width);
    fill_box(img, shape, (cy, cx), (side_y, side_x), fill);
}

/// Fills the box of `size` centred at `centre` (clipped by the border) with `fill`.
pub fn fill_box(
    img: &mut [u8],
    shape: Shape,
    centre: (usize, usize),
    size: (usize, usize),
    fill: u8,
) {
    let c = shape.channels;
    let y0 = centre.0.saturating_sub(size.0 / 2);
    let x0 = centre.1.saturating_sub(size.1 / 2);
    let y1 = (centre.0 + size.0 - size.0 / 2).min(shape.height);
    let x1 = (centre.1 + size.1 - size.1 / 2).min(shape.width);
    for y in y0..y1 {
        img[(y * shape.width + x0) * c..(y * shape.width + x1) * c].fill(fill);
    }
}
