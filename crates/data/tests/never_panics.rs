//! Every parser answers random and mutated bytes with `Ok` or `Err`, never a panic.

use std::io::{Cursor, Write};

use image::{ExtendedColorType, ImageEncoder};
use mpl_data::cifar::{self, Variant};
use mpl_data::{ImageSet, Limits, canonical, folder, idx};
use proptest::prelude::*;

/// Small limits, so a mutated size field cannot make a test slow.
fn limits() -> Limits {
    Limits {
        max_decoded_bytes: 1 << 20,
        max_archive_bytes: 4 << 20,
        max_entry_bytes: 1 << 20,
        max_entries: 1_000,
        max_side: 256,
    }
}

fn png(value: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&[value; 4 * 4 * 3], 4, 4, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

fn valid_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, value) in [("cat/1.png", 1), ("dog/2.png", 2)] {
        let data = png(value);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn valid_tar_gz() -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&valid_tar()).unwrap();
    encoder.finish().unwrap()
}

fn valid_zip() -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (name, value) in [("cat/1.png", 1), ("dog/2.png", 2)] {
        writer.start_file(name, options).unwrap();
        writer.write_all(&png(value)).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn valid_idx() -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3];
    out.extend(0..18u8);
    out
}

fn valid_canonical() -> Vec<u8> {
    let set = ImageSet {
        height: 2,
        width: 2,
        channels: 1,
        pixels: vec![1, 2, 3, 4, 5, 6, 7, 8],
        labels: Some(vec![0, 1]),
        class_names: vec!["a".into(), "b".into()],
        num_classes: 2,
    };
    let mut out = Vec::new();
    canonical::write_to(&mut out, &set, "mem").unwrap();
    out
}

/// Overwrites bytes at the given positions (modulo the length) and optionally truncates.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if !bytes.is_empty() {
        for &(pos, value) in edits {
            let len = bytes.len();
            bytes[pos % len] = value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

/// Feeds `bytes` to every parser; any panic fails the property.
fn parse_everything(bytes: &[u8]) {
    let limits = limits();
    let _ = idx::parse_images(&mut &bytes[..], "x", &limits);
    let _ = idx::parse_labels(&mut &bytes[..], "x", &limits);
    let _ = cifar::parse_batch(bytes, Variant::Cifar10, "x");
    let _ = cifar::parse_batch(bytes, Variant::Cifar100, "x");
    let _ = canonical::read_from(bytes, bytes.len() as u64, "x");
    let _ = folder::load_from(Cursor::new(bytes.to_vec()), "x", &limits);
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&bytes);
    }

    #[test]
    fn mutated_idx_and_canonical_files_never_panic(
        edits in edits(),
        cut in prop::option::of(any::<usize>()),
    ) {
        parse_everything(&mutate(valid_idx(), &edits, cut));
        parse_everything(&mutate(valid_canonical(), &edits, cut));
    }

    #[test]
    fn mutated_archives_never_panic(
        edits in edits(),
        cut in prop::option::of(any::<usize>()),
    ) {
        parse_everything(&mutate(valid_tar(), &edits, cut));
        parse_everything(&mutate(valid_tar_gz(), &edits, cut));
        parse_everything(&mutate(valid_zip(), &edits, cut));
    }

    #[test]
    fn a_mutated_canonical_file_is_either_rejected_or_identical(
        edits in edits(),
    ) {
        let original = valid_canonical();
        let bytes = mutate(original.clone(), &edits, None);
        let result = canonical::read_from(&bytes[..], bytes.len() as u64, "x");
        if bytes != original {
            prop_assert!(result.is_err(), "a changed file was accepted");
        }
    }
}

#[test]
fn the_valid_seeds_of_the_mutations_parse() {
    let limits = limits();
    assert!(idx::parse_images(&mut &valid_idx()[..], "x", &limits).is_ok());
    let canonical = valid_canonical();
    assert!(canonical::read_from(&canonical[..], canonical.len() as u64, "x").is_ok());
    for archive in [valid_tar(), valid_tar_gz(), valid_zip()] {
        let set = folder::load_from(Cursor::new(archive), "x", &limits).unwrap();
        assert_eq!(set.labels, Some(vec![0, 1]));
    }
}
