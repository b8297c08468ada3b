//! Small PNG previews of single images, for the dataset pages of the console.

use image::ImageEncoder;
use image::codecs::png::PngEncoder;

use crate::ImageSet;

/// Largest accepted upscaling factor.
pub const MAX_SCALE: u32 = 16;
/// Upscaling never makes a side longer than this (an already larger image keeps its size).
pub const MAX_SIDE: usize = 1024;

/// Encodes image `index` of `set` as a PNG, enlarged `scale` times (clamped to 1..=16, and so
/// that no side passes [`MAX_SIDE`]) by repeating pixels, so tiny images such as 28x28 stay crisp.
///
/// Panics if `index >= set.len()`.
pub fn png(set: &ImageSet, index: usize, scale: u32) -> Vec<u8> {
    let (h, w, c) = (set.height, set.width, set.channels);
    let fits = (MAX_SIDE / h.max(w).max(1)).max(1);
    let scale = (scale.clamp(1, MAX_SCALE) as usize).min(fits);
    let pixels = upscale(set.image(index), h, w, c, scale);
    let color = if c == 3 {
        image::ExtendedColorType::Rgb8
    } else {
        image::ExtendedColorType::L8
    };
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(&pixels, (w * scale) as u32, (h * scale) as u32, color)
        .expect("encoding a well-formed buffer into memory cannot fail");
    out
}

/// Repeats every pixel `scale` times along both axes.
fn upscale(image: &[u8], h: usize, w: usize, c: usize, scale: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(image.len() * scale * scale);
    for row in image.chunks_exact(w * c) {
        let start = out.len();
        for pixel in row.chunks_exact(c) {
            for _ in 0..scale {
                out.extend_from_slice(pixel);
            }
        }
        let wide = out[start..].to_vec();
        for _ in 1..scale {
            out.extend_from_slice(&wide);
        }
    }
    debug_assert_eq!(out.len(), h * w * c * scale * scale);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_decode_back_to_the_enlarged_pixels() {
        let set = ImageSet {
            height: 2,
            width: 3,
            channels: 3,
            pixels: (0..18).map(|v| v * 10).collect(),
            labels: None,
            class_names: Vec::new(),
            num_classes: 0,
        };
        let bytes = png(&set, 0, 4);
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (12, 8));
        assert_eq!(decoded.get_pixel(5, 1).0, [30, 40, 50]);
        assert_eq!(decoded.get_pixel(11, 7).0, [150, 160, 170]);
    }

    #[test]
    fn large_images_are_not_enlarged_past_the_side_limit() {
        let set = ImageSet {
            height: 100,
            width: 60,
            channels: 1,
            pixels: vec![9; 6000],
            labels: None,
            class_names: Vec::new(),
            num_classes: 0,
        };
        let decoded = image::load_from_memory(&png(&set, 0, 16)).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (600, 1000));
    }
}
