//! IDX files of the MNIST family (MNIST, Fashion-MNIST, KMNIST), gzip-compressed or raw.
//!
//! An IDX file is two zero bytes, a type byte (`0x08` for unsigned bytes, the only type
//! images come in), a dimension count, one big-endian `u32` per dimension, then the data.
//! Images are `n x rows x cols` (or `n x rows x cols x channels`); labels are `n` bytes.
//! Gzip is detected by its magic bytes, whatever the file is called.

use std::io::Read;
use std::path::Path;

use crate::reader::{display, expect_end, open_maybe_gzip, read_exact, read_vec};
use crate::{DataError, ImageSet, Limits};

/// The IDX type byte for unsigned 8-bit data.
const TYPE_U8: u8 = 0x08;

/// Loads an images file and, optionally, its labels file with the default [`Limits`].
pub fn load(images: &Path, labels: Option<&Path>) -> Result<ImageSet, DataError> {
    load_with_limits(images, labels, &Limits::default())
}

/// Loads an images file and, optionally, its labels file under `limits`.
pub fn load_with_limits(
    images: &Path,
    labels: Option<&Path>,
    limits: &Limits,
) -> Result<ImageSet, DataError> {
    let images_name = display(images);
    let mut reader = open_maybe_gzip(images, limits.max_archive_bytes)?;
    let mut set = parse_images(&mut reader, &images_name, limits)?;

    if let Some(labels) = labels {
        let labels_name = display(labels);
        let mut reader = open_maybe_gzip(labels, limits.max_archive_bytes)?;
        let values = parse_labels(&mut reader, &labels_name, limits)?;
        attach_labels(&mut set, values, &format!("{images_name} + {labels_name}"))?;
    }
    Ok(set)
}

/// Parses an (already decompressed) IDX images stream; `file` names it in errors.
pub fn parse_images(
    reader: &mut impl Read,
    file: &str,
    limits: &Limits,
) -> Result<ImageSet, DataError> {
    let dims = read_header(reader, file)?;
    let (count, height, width, channels) = match dims[..] {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c] => (n, h, w, c),
        _ => {
            return Err(DataError::invalid(
                file,
                format!(
                    "an images file has 3 or 4 dimensions, this one has {}",
                    dims.len()
                ),
            ));
        }
    };
    check_shape(file, height, width, channels, limits)?;

    let total = (count as u64) * u64::from(height) * u64::from(width) * u64::from(channels);
    if total > limits.max_decoded_bytes {
        return Err(DataError::too_large(
            file,
            format!(
                "{count} images of {height}x{width}x{channels} are {total} bytes, the limit is {}",
                limits.max_decoded_bytes
            ),
        ));
    }
    let pixels = read_vec(reader, total, file, &format!("{count} images"))?;
    expect_end(reader, file, &format!("{count} images"))?;
    if count == 0 {
        return Err(DataError::NoImages {
            file: file.to_string(),
            detail: String::new(),
        });
    }

    Ok(ImageSet {
        height: height as usize,
        width: width as usize,
        channels: channels as usize,
        pixels,
        labels: None,
        class_names: Vec::new(),
        num_classes: 0,
    })
}

/// Parses an (already decompressed) IDX labels stream: one byte per image.
pub fn parse_labels(
    reader: &mut impl Read,
    file: &str,
    limits: &Limits,
) -> Result<Vec<u8>, DataError> {
    let dims = read_header(reader, file)?;
    let [count] = dims[..] else {
        return Err(DataError::invalid(
            file,
            format!("a labels file has 1 dimension, this one has {}", dims.len()),
        ));
    };
    if u64::from(count) > limits.max_decoded_bytes {
        return Err(DataError::too_large(
            file,
            format!("{count} labels exceed the limit"),
        ));
    }
    let labels = read_vec(reader, u64::from(count), file, &format!("{count} labels"))?;
    expect_end(reader, file, &format!("{count} labels"))?;
    Ok(labels)
}

/// Attaches byte labels to `set`; classes are `0..=max label`.
fn attach_labels(set: &mut ImageSet, labels: Vec<u8>, file: &str) -> Result<(), DataError> {
    if labels.len() != set.len() {
        return Err(DataError::CountMismatch {
            file: file.to_string(),
            images: set.len() as u64,
            labels: labels.len() as u64,
        });
    }
    set.num_classes = labels
        .iter()
        .copied()
        .max()
        .map_or(0, |m| usize::from(m) + 1);
    set.labels = Some(labels.into_iter().map(u32::from).collect());
    Ok(())
}

/// Reads the magic, checks the type byte and returns the dimensions.
fn read_header(reader: &mut impl Read, file: &str) -> Result<Vec<u32>, DataError> {
    let mut magic = [0u8; 4];
    read_exact(reader, &mut magic, file, "the IDX magic number")?;
    if magic[0] != 0 || magic[1] != 0 || magic[3] == 0 || magic[3] > 4 {
        return Err(DataError::BadMagic {
            file: file.to_string(),
            detail: format!(
                "expected 00 00 08 <1..4>, found {:02x} {:02x} {:02x} {:02x}",
                magic[0], magic[1], magic[2], magic[3]
            ),
        });
    }
    if magic[2] != TYPE_U8 {
        return Err(DataError::invalid(
            file,
            format!(
                "data type 0x{:02x} is not supported; only unsigned bytes (0x08) are",
                magic[2]
            ),
        ));
    }
    let mut dims = Vec::with_capacity(usize::from(magic[3]));
    for k in 0..magic[3] {
        let mut bytes = [0u8; 4];
        read_exact(
            reader,
            &mut bytes,
            file,
            &format!("dimension {k} of the header"),
        )?;
        dims.push(u32::from_be_bytes(bytes));
    }
    Ok(dims)
}

/// Rejects zero, huge or odd image shapes.
fn check_shape(
    file: &str,
    height: u32,
    width: u32,
    channels: u32,
    limits: &Limits,
) -> Result<(), DataError> {
    if height == 0 || width == 0 {
        return Err(DataError::invalid(
            file,
            format!("image shape {height}x{width} is empty"),
        ));
    }
    if height > limits.max_side || width > limits.max_side {
        return Err(DataError::too_large(
            file,
            format!(
                "images of {height}x{width} exceed the side limit {}",
                limits.max_side
            ),
        ));
    }
    if channels != 1 && channels != 3 {
        return Err(DataError::invalid(
            file,
            format!("images have {channels} channels; 1 or 3 are supported"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IDX header followed by `data`.
    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn parse(bytes: &[u8]) -> Result<ImageSet, DataError> {
        parse_images(&mut &bytes[..], "x.idx", &Limits::default())
    }

    #[test]
    fn parses_a_small_images_file() {
        let set = parse(&idx_bytes(&[2, 1, 2], &[1, 2, 3, 4])).unwrap();
        assert_eq!(
            (set.len(), set.height, set.width, set.channels),
            (2, 1, 2, 1)
        );
        assert_eq!(set.image(1), &[3, 4]);
    }

    #[test]
    fn bad_magic_is_named() {
        let mut bytes = idx_bytes(&[1, 1, 1], &[0]);
        bytes[0] = 7;
        let err = parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("x.idx") && err.contains("bad magic"), "{err}");
    }

    #[test]
    fn truncated_data_is_reported_with_sizes() {
        let err = parse(&idx_bytes(&[3, 2, 2], &[0; 10]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truncated") && err.contains("expected 12 bytes"),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let err = parse(&idx_bytes(&[1, 1, 1], &[0, 0]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected bytes"), "{err}");
    }

    #[test]
    fn absurd_header_sizes_are_refused_before_reading() {
        let err = parse(&idx_bytes(&[u32::MAX, 4000, 4000], &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let mut set = parse(&idx_bytes(&[2, 1, 1], &[0, 0])).unwrap();
        let err = attach_labels(&mut set, vec![1, 2, 3], "a + b")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a + b") && err.contains("2 images but 3 labels"),
            "{err}"
        );
    }
}
