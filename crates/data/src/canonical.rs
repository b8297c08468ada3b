//! The platform's canonical dataset file, written once at ingestion and read by the trainer.
//!
//! Layout (all integers little-endian), version 1:
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `MPLIMGS\0` |
//! | 4 | format version (`u32`, 1) |
//! | 4 | header length `L` (`u32`) |
//! | `L` | UTF-8 JSON header: shape, count, classes, per-class counts |
//! | `count * h * w * c` | pixels, HWC per image, images back to back |
//! | `4 * count` | labels as `u32`, present only when the header says `labeled` |
//! | 32 | sha256 of every byte before it |
//!
//! [`write`] goes through a temporary file in the same folder and renames it, so a reader never
//! sees half a file; [`read`] checks the magic, the version, the header against the file length,
//! every label, the per-class counts and the checksum before returning anything.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::reader::{display, read_exact, read_vec};
use crate::{DataError, ImageSet, Limits};

/// The first eight bytes of every canonical file.
pub const MAGIC: [u8; 8] = *b"MPLIMGS\0";
/// The version [`write`] produces and [`read`] accepts.
pub const VERSION: u32 = 1;
/// Bytes before the header: magic, version, header length.
const PREAMBLE_LEN: u64 = 16;
/// Length of the trailing checksum.
const CHECKSUM_LEN: u64 = 32;
/// Longest header accepted (class names of a very large label space fit easily).
const MAX_HEADER_LEN: u32 = 16 << 20;

/// The JSON header of a canonical file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Number of images.
    pub count: u64,
    /// Rows per image.
    pub height: u32,
    /// Columns per image.
    pub width: u32,
    /// Channels per pixel (1 or 3).
    pub channels: u32,
    /// Whether a labels block follows the pixels.
    pub labeled: bool,
    /// Number of classes; 0 when unlabeled.
    pub num_classes: u32,
    /// Class names in class-index order; empty or `num_classes` long.
    pub class_names: Vec<String>,
    /// Images per class; `num_classes` long when labeled, empty otherwise.
    pub class_counts: Vec<u64>,
}

/// Writes `set` to `path` atomically (temporary file in the same folder, fsync, rename).
pub fn write(path: &Path, set: &ImageSet) -> Result<(), DataError> {
    let name = display(path);
    check_consistent(set, &name)?;
    let temp = temp_path(path);
    let result = write_temp_then_rename(&temp, path, set);
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Writes `set` in canonical form to any writer (e.g. an upload stream).
pub fn write_to(writer: &mut impl Write, set: &ImageSet, file: &str) -> Result<(), DataError> {
    check_consistent(set, file)?;
    let header = serde_json::to_vec(&header_of(set))
        .map_err(|e| DataError::invalid(file, format!("cannot encode header: {e}")))?;
    let mut out = HashingWriter {
        inner: writer,
        hasher: Sha256::new(),
    };
    let io = |e| DataError::io(file, "cannot write", e);

    out.write_all(&MAGIC).map_err(io)?;
    out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
    out.write_all(&(header.len() as u32).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    out.write_all(&set.pixels).map_err(io)?;
    if let Some(labels) = &set.labels {
        for label in labels {
            out.write_all(&label.to_le_bytes()).map_err(io)?;
        }
    }

    let digest = out.hasher.finalize();
    out.inner.write_all(&digest).map_err(io)?;
    Ok(())
}

/// Reads and fully validates a canonical file.
pub fn read(path: &Path) -> Result<ImageSet, DataError> {
    let name = display(path);
    let file = File::open(path).map_err(|e| DataError::io(&name, "cannot open", e))?;
    let len = file
        .metadata()
        .map_err(|e| DataError::io(&name, "cannot stat", e))?
        .len();
    read_from(std::io::BufReader::new(file), len, &name)
}

/// Reads a canonical file of `len` bytes from `reader`; `file` names it in errors.
pub fn read_from(reader: impl Read, len: u64, file: &str) -> Result<ImageSet, DataError> {
    let mut input = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
    };

    let header = read_header(&mut input, len, file)?;
    let pixel_len = header.count * u64::from(header.height * header.width * header.channels);
    let pixels = read_vec(&mut input, pixel_len, file, "pixels")?;
    let labels = if header.labeled {
        let bytes = read_vec(&mut input, header.count * 4, file, "labels")?;
        Some(decode_labels(&bytes))
    } else {
        None
    };

    let computed = input.hasher.finalize();
    let mut stored = [0u8; CHECKSUM_LEN as usize];
    read_exact(&mut input.inner, &mut stored, file, "the checksum")?;
    if computed[..] != stored[..] {
        return Err(DataError::invalid(
            file,
            "sha256 checksum mismatch: the file is corrupt",
        ));
    }

    let set = ImageSet {
        height: header.height as usize,
        width: header.width as usize,
        channels: header.channels as usize,
        pixels,
        labels,
        class_names: header.class_names.clone(),
        num_classes: header.num_classes as usize,
    };
    check_consistent(&set, file)?;
    if set.stats().class_counts != header.class_counts {
        return Err(DataError::invalid(
            file,
            "per-class counts disagree with the labels",
        ));
    }
    Ok(set)
}

/// Reads the preamble and header and checks that the file length matches them exactly.
fn read_header(input: &mut impl Read, len: u64, file: &str) -> Result<Header, DataError> {
    let mut preamble = [0u8; PREAMBLE_LEN as usize];
    read_exact(input, &mut preamble, file, "the preamble")?;
    if preamble[..8] != MAGIC {
        return Err(DataError::BadMagic {
            file: file.to_string(),
            detail: format!("expected {:?}, found {:?}", MAGIC, &preamble[..8]),
        });
    }
    let version = u32::from_le_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
    if version != VERSION {
        return Err(DataError::invalid(
            file,
            format!("format version {version} is not supported (expected {VERSION})"),
        ));
    }
    let header_len = u32::from_le_bytes([preamble[12], preamble[13], preamble[14], preamble[15]]);
    if header_len > MAX_HEADER_LEN || u64::from(header_len) > len {
        return Err(DataError::truncated(
            file,
            format!("header of {header_len} bytes does not fit a file of {len} bytes"),
        ));
    }
    let bytes = read_vec(input, u64::from(header_len), file, "the header")?;
    let header: Header = serde_json::from_slice(&bytes)
        .map_err(|e| DataError::invalid(file, format!("header is not valid: {e}")))?;
    check_header(&header, file)?;

    let expected = expected_len(&header, header_len);
    if expected != Some(len) {
        let expected = expected.map_or("an impossible size".into(), |n| format!("{n} bytes"));
        return Err(DataError::truncated(
            file,
            format!("the header describes {expected}, the file has {len} bytes"),
        ));
    }
    Ok(header)
}

/// Total file length the header implies, or `None` on overflow.
fn expected_len(header: &Header, header_len: u32) -> Option<u64> {
    let image = u64::from(header.height)
        .checked_mul(u64::from(header.width))?
        .checked_mul(u64::from(header.channels))?;
    let pixels = header.count.checked_mul(image)?;
    let labels = if header.labeled {
        header.count.checked_mul(4)?
    } else {
        0
    };
    PREAMBLE_LEN
        .checked_add(u64::from(header_len))?
        .checked_add(pixels)?
        .checked_add(labels)?
        .checked_add(CHECKSUM_LEN)
}

/// Header fields that must hold whatever the data.
fn check_header(header: &Header, file: &str) -> Result<(), DataError> {
    let limits = Limits::default();
    let bad = |detail: String| Err(DataError::invalid(file, detail));
    if header.channels != 1 && header.channels != 3 {
        return bad(format!(
            "channels is {}; 1 or 3 are supported",
            header.channels
        ));
    }
    if header.height == 0 || header.width == 0 {
        return bad(format!(
            "image shape {}x{} is empty",
            header.height, header.width
        ));
    }
    if header.height > limits.max_side || header.width > limits.max_side {
        return bad(format!(
            "image shape {}x{} is too large",
            header.height, header.width
        ));
    }
    if header.labeled != (header.num_classes > 0) {
        return bad("a labeled file needs num_classes > 0, an unlabeled one 0".into());
    }
    let n = header.num_classes as usize;
    if !header.class_names.is_empty() && header.class_names.len() != n {
        return bad(format!(
            "{} class names for {n} classes",
            header.class_names.len()
        ));
    }
    if header.class_counts.len() != n {
        return bad(format!(
            "{} class counts for {n} classes",
            header.class_counts.len()
        ));
    }
    Ok(())
}

/// Checks that `set` is internally consistent (pixel length, labels, classes).
fn check_consistent(set: &ImageSet, file: &str) -> Result<(), DataError> {
    let bad = |detail: String| Err(DataError::invalid(file, detail));
    if set.channels != 1 && set.channels != 3 {
        return bad(format!(
            "channels is {}; 1 or 3 are supported",
            set.channels
        ));
    }
    if set.image_len() == 0 || !set.pixels.len().is_multiple_of(set.image_len()) {
        return bad(format!(
            "{} pixel bytes are not a whole number of {}x{}x{} images",
            set.pixels.len(),
            set.height,
            set.width,
            set.channels
        ));
    }
    if !set.class_names.is_empty() && set.class_names.len() != set.num_classes {
        return bad(format!(
            "{} class names for {} classes",
            set.class_names.len(),
            set.num_classes
        ));
    }
    match &set.labels {
        None if set.num_classes != 0 => bad("an unlabeled set must have 0 classes".into()),
        None => Ok(()),
        Some(_) if set.num_classes == 0 => bad("a labeled set needs at least one class".into()),
        Some(labels) if labels.len() != set.len() => Err(DataError::CountMismatch {
            file: file.to_string(),
            images: set.len() as u64,
            labels: labels.len() as u64,
        }),
        Some(labels) => match labels.iter().position(|&l| l as usize >= set.num_classes) {
            Some(index) => Err(DataError::LabelOutOfRange {
                file: file.to_string(),
                index: index as u64,
                label: u64::from(labels[index]),
                num_classes: set.num_classes as u64,
            }),
            None => Ok(()),
        },
    }
}

/// The header describing `set`.
fn header_of(set: &ImageSet) -> Header {
    let stats = set.stats();
    Header {
        count: stats.count,
        height: stats.height,
        width: stats.width,
        channels: stats.channels,
        labeled: set.labels.is_some(),
        num_classes: stats.num_classes,
        class_names: stats.class_names,
        class_counts: stats.class_counts,
    }
}

/// Little-endian `u32` labels.
fn decode_labels(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A hidden, unique sibling of `path` to write into before the rename.
fn temp_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let base = path
        .file_name()
        .map_or("dataset".into(), |n| n.to_string_lossy());
    let name = format!(".{base}.tmp-{}-{nanos}", std::process::id());
    path.with_file_name(name)
}

/// Writes into `temp`, syncs it, and renames it over `path`.
fn write_temp_then_rename(temp: &Path, path: &Path, set: &ImageSet) -> Result<(), DataError> {
    let name = display(path);
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(|e| DataError::io(display(temp), "cannot create", e))?;
    let mut writer = BufWriter::new(file);
    write_to(&mut writer, set, &name)?;
    let file = writer
        .into_inner()
        .map_err(|e| DataError::io(&name, "cannot write", e.into_error()))?;
    file.sync_all()
        .map_err(|e| DataError::io(&name, "cannot sync", e))?;
    std::fs::rename(temp, path).map_err(|e| DataError::io(&name, "cannot rename into", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Persisting the rename itself; a failure here does not un-write the file.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Feeds every byte written through a sha256.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Feeds every byte read through a sha256.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labeled: bool) -> ImageSet {
        ImageSet {
            height: 2,
            width: 3,
            channels: 3,
            pixels: (0..36).map(|v| (v * 7) as u8).collect(),
            labels: labeled.then(|| vec![1, 0]),
            class_names: if labeled {
                vec!["cat".into(), "dog".into()]
            } else {
                Vec::new()
            },
            num_classes: if labeled { 2 } else { 0 },
        }
    }

    fn encode(set: &ImageSet) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_to(&mut bytes, set, "mem").unwrap();
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<ImageSet, DataError> {
        read_from(bytes, bytes.len() as u64, "set.mpl")
    }

    #[test]
    fn round_trips_labeled_and_unlabeled_sets_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        for labeled in [true, false] {
            let path = dir.path().join(format!("set-{labeled}.mpl"));
            write(&path, &sample(labeled)).unwrap();
            assert_eq!(read(&path).unwrap(), sample(labeled));
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let bytes = encode(&sample(true));
        for pos in [0, 9, 20, bytes.len() - 40, bytes.len() - 5, bytes.len() - 1] {
            let mut corrupt = bytes.clone();
            corrupt[pos] ^= 0x10;
            assert!(decode(&corrupt).is_err(), "flip at {pos} went unnoticed");
        }
    }

    #[test]
    fn bad_magic_and_truncation_are_named() {
        let mut bytes = encode(&sample(false));
        let err = decode(&bytes[..bytes.len() - 1]).unwrap_err().to_string();
        assert!(
            err.contains("set.mpl") && err.contains("truncated"),
            "{err}"
        );
        bytes[0] = b'X';
        let err = decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("bad magic"), "{err}");
    }

    #[test]
    fn writing_an_inconsistent_set_fails_without_leaving_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.mpl");
        let mut set = sample(true);
        set.labels = Some(vec![0, 5]);
        let err = write(&path, &set).unwrap_err().to_string();
        assert!(err.contains("label 5 of image 1 is out of range"), "{err}");
        assert!(!path.exists());
    }
}
