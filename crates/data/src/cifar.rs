//! CIFAR-10 and CIFAR-100 binary batches.
//!
//! A batch is a sequence of records: the label byte(s) (CIFAR-10: one; CIFAR-100: coarse then
//! fine, the fine label is used) followed by 3072 bytes of 32x32 pixels, all red, then all
//! green, then all blue. A source is one `.bin` file, a folder of them, or a tar / tar.gz
//! holding them (such as the official `cifar-10-binary.tar.gz`). Folders and archives yield the
//! training batches (`data_batch_*.bin` or `train.bin`), or the test batch when they hold only
//! that; [`load_part`] picks either explicitly.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::archive::{self, Kind};
use crate::reader::{display, open, read_vec};
use crate::{DataError, ImageSet, Limits};

/// Side of a CIFAR image.
const SIDE: usize = 32;
/// Pixel bytes of one record.
const PIXELS: usize = SIDE * SIDE * 3;
/// The CIFAR-10 class names, in label order, as the dataset defines them.
const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which of the two datasets a batch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Ten classes, one label byte per record.
    Cifar10,
    /// A hundred fine classes, two label bytes (coarse, fine) per record.
    Cifar100,
}

impl Variant {
    /// Label bytes before each record's pixels.
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }

    /// Classes of the label used.
    pub fn num_classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }

    /// Bytes per record.
    fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }

    /// Whether a batch file name is a training batch.
    fn is_train(self, name: &str) -> bool {
        match self {
            Variant::Cifar10 => name.starts_with("data_batch"),
            Variant::Cifar100 => name == "train.bin",
        }
    }

    /// Whether a batch file name is the test batch.
    fn is_test(self, name: &str) -> bool {
        match self {
            Variant::Cifar10 => name.starts_with("test_batch"),
            Variant::Cifar100 => name == "test.bin",
        }
    }

    /// The file holding class names, one per line.
    fn names_file(self) -> &'static str {
        match self {
            Variant::Cifar10 => "batches.meta.txt",
            Variant::Cifar100 => "fine_label_names.txt",
        }
    }
}

/// Which batches of a folder or archive to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The training batches, or the test batch when there are none.
    Default,
    /// The training batches only.
    Train,
    /// The test batch only.
    Test,
}

/// Loads a CIFAR source with the default [`Limits`].
pub fn load(path: &Path, variant: Variant) -> Result<ImageSet, DataError> {
    load_with_limits(path, variant, &Limits::default())
}

/// Loads a CIFAR source (training batches of a folder or archive) under `limits`.
pub fn load_with_limits(
    path: &Path,
    variant: Variant,
    limits: &Limits,
) -> Result<ImageSet, DataError> {
    load_part(path, variant, Part::Default, limits)
}

/// Loads the chosen `part` of a CIFAR source under `limits`; a single `.bin` file is read as is.
pub fn load_part(
    path: &Path,
    variant: Variant,
    part: Part,
    limits: &Limits,
) -> Result<ImageSet, DataError> {
    let name = display(path);
    let files = if path.is_dir() {
        read_folder(path, limits)?
    } else {
        let mut file = open(path)?;
        match archive::sniff(&mut file, &name)? {
            Kind::Other => return load_single(file, path, variant, limits),
            kind => read_archive(file, kind, &name, variant, limits)?,
        }
    };
    assemble(files, &name, variant, part, limits)
}

/// Parses the bytes of one batch into HWC pixels and labels; `file` names it in errors.
pub fn parse_batch(bytes: &[u8], variant: Variant, file: &str) -> Result<ImageSet, DataError> {
    let record = variant.record_len();
    if bytes.is_empty() {
        return Err(DataError::NoImages {
            file: file.to_string(),
            detail: String::new(),
        });
    }
    if !bytes.len().is_multiple_of(record) {
        return Err(DataError::truncated(
            file,
            format!(
                "{} bytes are not a whole number of {record}-byte records (the last has {})",
                bytes.len(),
                bytes.len() % record
            ),
        ));
    }

    let count = bytes.len() / record;
    let mut pixels = vec![0u8; count * PIXELS];
    let mut labels = Vec::with_capacity(count);
    for (index, (rec, out)) in bytes
        .chunks_exact(record)
        .zip(pixels.chunks_exact_mut(PIXELS))
        .enumerate()
    {
        labels.push(read_label(rec, variant, index, file)?);
        planar_to_interleaved(&rec[variant.label_bytes()..], out);
    }
    Ok(ImageSet {
        height: SIDE,
        width: SIDE,
        channels: 3,
        pixels,
        labels: Some(labels),
        class_names: Vec::new(),
        num_classes: variant.num_classes(),
    })
}

/// The label of one record, checked against the variant's class count.
fn read_label(rec: &[u8], variant: Variant, index: usize, file: &str) -> Result<u32, DataError> {
    let (label, limit) = match variant {
        Variant::Cifar10 => (rec[0], 10),
        Variant::Cifar100 if rec[0] >= 20 => (rec[0], 20),
        Variant::Cifar100 => (rec[1], 100),
    };
    if usize::from(label) >= limit {
        return Err(DataError::LabelOutOfRange {
            file: file.to_string(),
            index: index as u64,
            label: u64::from(label),
            num_classes: limit as u64,
        });
    }
    Ok(u32::from(label))
}

/// Converts 1024 red, 1024 green, 1024 blue bytes into RGB triples.
fn planar_to_interleaved(planar: &[u8], out: &mut [u8]) {
    let plane = SIDE * SIDE;
    for (i, pixel) in out.chunks_exact_mut(3).enumerate() {
        pixel[0] = planar[i];
        pixel[1] = planar[plane + i];
        pixel[2] = planar[2 * plane + i];
    }
}

/// Reads one raw `.bin` batch.
fn load_single(
    mut file: BufReader<File>,
    path: &Path,
    variant: Variant,
    limits: &Limits,
) -> Result<ImageSet, DataError> {
    let name = display(path);
    let len = file
        .get_ref()
        .metadata()
        .map_err(|e| DataError::io(&name, "cannot stat", e))?
        .len();
    check_size(len, &name, variant, limits)?;
    let bytes = read_vec(&mut file, len, &name, "the batch")?;
    let mut set = parse_batch(&bytes, variant, &name)?;
    set.class_names = default_names(variant);
    Ok(set)
}

/// A batch file or class-names file found in a folder or archive.
struct Found {
    /// The file name without folders.
    base: String,
    /// Where it was found, for messages.
    at: String,
    bytes: Vec<u8>,
}

/// Reads the `.bin` and class-name files of a folder (not its subfolders).
fn read_folder(dir: &Path, limits: &Limits) -> Result<Vec<Found>, DataError> {
    let name = display(dir);
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(&name, "cannot list", e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(&name, "cannot list", e))?;
        let base = entry.file_name().to_string_lossy().into_owned();
        if !is_relevant(&base) || !entry.path().is_file() {
            continue;
        }
        let path = entry.path();
        let at = display(&path);
        let len = entry
            .metadata()
            .map_err(|e| DataError::io(&at, "cannot stat", e))?
            .len();
        if len > limits.max_entry_bytes {
            return Err(DataError::too_large(
                &at,
                format!("{len} bytes exceed {}", limits.max_entry_bytes),
            ));
        }
        let bytes = read_vec(&mut open(&path)?, len, &at, "the file")?;
        found.push(Found { base, at, bytes });
    }
    Ok(found)
}

/// Reads the `.bin` and class-name files of a tar or tar.gz archive, in memory.
fn read_archive(
    file: BufReader<File>,
    kind: Kind,
    name: &str,
    variant: Variant,
    limits: &Limits,
) -> Result<Vec<Found>, DataError> {
    if kind == Kind::Zip {
        return Err(DataError::Unsupported {
            file: name.to_string(),
            reason: format!("{variant:?} batches are read from .bin files, folders, tar or tar.gz"),
        });
    }
    let mut found = Vec::new();
    let wants = |components: &[String]| components.last().is_some_and(|b| is_relevant(b));
    archive::for_each_entry(file, kind, name, limits, wants, |entry| {
        if let (Some(bytes), Some(base)) = (entry.data, entry.components.last()) {
            found.push(Found {
                base: base.clone(),
                at: format!("{name}!{}", entry.name),
                bytes,
            });
        }
        Ok(())
    })?;
    Ok(found)
}

/// Whether a file name is a batch or a class-names file.
fn is_relevant(base: &str) -> bool {
    base.ends_with(".bin") || base.ends_with(".txt")
}

/// Picks the requested batches, parses them in name order and joins them.
fn assemble(
    mut files: Vec<Found>,
    name: &str,
    variant: Variant,
    part: Part,
    limits: &Limits,
) -> Result<ImageSet, DataError> {
    files.sort_by(|a, b| a.base.cmp(&b.base));
    let train: Vec<&Found> = files.iter().filter(|f| variant.is_train(&f.base)).collect();
    let test: Vec<&Found> = files.iter().filter(|f| variant.is_test(&f.base)).collect();
    let chosen = match part {
        Part::Train => train,
        Part::Test => test,
        Part::Default if train.is_empty() => test,
        Part::Default => train,
    };
    if chosen.is_empty() {
        return Err(DataError::NoImages {
            file: name.to_string(),
            detail: format!(": no {variant:?} batch files ({part:?} part)"),
        });
    }

    let mut set: Option<ImageSet> = None;
    let mut total = 0u64;
    for found in chosen {
        total += found.bytes.len() as u64;
        check_size(total, &found.at, variant, limits)?;
        let batch = parse_batch(&found.bytes, variant, &found.at)?;
        match &mut set {
            None => set = Some(batch),
            Some(set) => {
                set.pixels.extend_from_slice(&batch.pixels);
                if let (Some(all), Some(more)) = (set.labels.as_mut(), batch.labels) {
                    all.extend(more);
                }
            }
        }
    }
    let mut set = set.expect("at least one batch was chosen");
    set.class_names = files
        .iter()
        .find(|f| f.base == variant.names_file())
        .and_then(|f| names_from(&f.bytes, variant))
        .unwrap_or_else(|| default_names(variant));
    Ok(set)
}

/// Refuses batches whose decoded pixels would exceed the limit.
fn check_size(bytes: u64, file: &str, variant: Variant, limits: &Limits) -> Result<(), DataError> {
    let decoded = bytes / variant.record_len() as u64 * PIXELS as u64;
    if decoded > limits.max_decoded_bytes {
        return Err(DataError::too_large(
            file,
            format!(
                "{decoded} decoded bytes exceed {}",
                limits.max_decoded_bytes
            ),
        ));
    }
    Ok(())
}

/// Class names from a names file, when it lists exactly one per class.
fn names_from(bytes: &[u8], variant: Variant) -> Option<Vec<String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    (names.len() == variant.num_classes()).then_some(names)
}

/// Names known without a names file.
fn default_names(variant: Variant) -> Vec<String> {
    match variant {
        Variant::Cifar10 => CIFAR10_NAMES.iter().map(|s| s.to_string()).collect(),
        Variant::Cifar100 => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One CIFAR-10 record whose pixel `i` of plane `k` is `(i + 7k) % 256`.
    pub(crate) fn record10(label: u8) -> Vec<u8> {
        let mut rec = vec![label];
        rec.extend((0..PIXELS).map(|j| ((j % 1024) + 7 * (j / 1024)) as u8));
        rec
    }

    #[test]
    fn planes_become_interleaved_rgb() {
        let set = parse_batch(&record10(3), Variant::Cifar10, "b.bin").unwrap();
        assert_eq!(set.labels, Some(vec![3]));
        assert_eq!(&set.image(0)[..6], &[0, 7, 14, 1, 8, 15]);
    }

    #[test]
    fn cifar10_labels_above_nine_are_refused() {
        let mut bytes = record10(1);
        bytes.extend(record10(10));
        let err = parse_batch(&bytes, Variant::Cifar10, "b.bin")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.bin") && err.contains("label 10 of image 1"),
            "{err}"
        );
    }

    #[test]
    fn cifar100_uses_the_fine_label() {
        let mut rec = vec![4, 77];
        rec.extend(vec![0; PIXELS]);
        let set = parse_batch(&rec, Variant::Cifar100, "train.bin").unwrap();
        assert_eq!(set.labels, Some(vec![77]));
        assert_eq!(set.num_classes, 100);
    }

    #[test]
    fn a_partial_record_is_a_truncation() {
        let bytes = record10(1);
        let err = parse_batch(&bytes[..3000], Variant::Cifar10, "b.bin")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truncated") && err.contains("3073-byte records"),
            "{err}"
        );
    }
}
