//! Image-folder and CIFAR archives built in memory: layouts, labels, and every refusal.

use std::io::{Cursor, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use image::{ExtendedColorType, ImageEncoder};
use mpl_data::cifar::{self, Part, Variant};
use mpl_data::{DataError, Limits, folder};

/// A PNG of `w x h` pixels; every byte is `value`.
fn png(w: u32, h: u32, channels: usize, value: u8) -> Vec<u8> {
    let color = if channels == 3 {
        ExtendedColorType::Rgb8
    } else {
        ExtendedColorType::L8
    };
    let pixels = vec![value; (w * h) as usize * channels];
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&pixels, w, h, color)
        .unwrap();
    out
}

/// A JPEG of `w x h` RGB pixels.
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let pixels = vec![90u8; (w * h * 3) as usize];
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut out)
        .write_image(&pixels, w, h, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// What one tar entry is.
enum Item<'a> {
    File(&'a str, Vec<u8>),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// A tar archive of `items`; names are written raw, so unsafe names get through.
fn tar(items: Vec<Item<'_>>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_gnu();
        let (name, data, kind, link) = match item {
            Item::File(n, d) => (n, d, tar::EntryType::Regular, None),
            Item::Dir(n) => (n, Vec::new(), tar::EntryType::Directory, None),
            Item::Symlink(n, to) => (n, Vec::new(), tar::EntryType::Symlink, Some(to)),
            Item::HardLink(n, to) => (n, Vec::new(), tar::EntryType::Link, Some(to)),
        };
        let raw = header.as_gnu_mut().unwrap();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(to) = link {
            raw.linkname[..to.len()].copy_from_slice(to.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A zip archive of `(name, bytes)` files.
fn zip(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn load(bytes: Vec<u8>) -> Result<mpl_data::ImageSet, DataError> {
    folder::load_from(Cursor::new(bytes), "up.tar", &Limits::default())
}

fn load_err(bytes: Vec<u8>) -> String {
    load(bytes).unwrap_err().to_string()
}

#[test]
fn class_folders_under_a_root_become_sorted_labels() {
    let archive = tar(vec![
        Item::Dir("pets/"),
        Item::Dir("pets/dog/"),
        Item::File("pets/dog/b.png", png(4, 3, 3, 200)),
        Item::File("pets/cat/z.png", png(4, 3, 3, 10)),
        Item::File("pets/cat/a.png", png(4, 3, 3, 20)),
        Item::File("pets/.DS_Store", b"junk".to_vec()),
    ]);
    let set = load(gzip(&archive)).unwrap();
    assert_eq!(set.class_names, vec!["cat", "dog"]);
    assert_eq!(set.labels, Some(vec![0, 0, 1]));
    assert_eq!((set.height, set.width, set.channels), (3, 4, 3));
    // Sorted by path within the class: a.png (20) then z.png (10).
    assert_eq!(set.image(0)[0], 20);
    assert_eq!(set.image(1)[0], 10);
    assert_eq!(set.image(2)[0], 200);
}

#[test]
fn a_flat_zip_is_unlabeled_and_jpeg_decodes() {
    let set = load(zip(&[("1.jpg", jpeg(8, 8)), ("2.JPEG", jpeg(8, 8))])).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.labels, None);
    assert_eq!(set.num_classes, 0);
    assert_eq!(set.channels, 3);
}

#[test]
fn grayscale_images_are_expanded_in_a_colour_set() {
    let archive = tar(vec![
        Item::File("a/1.png", png(2, 2, 1, 77)),
        Item::File("b/1.png", png(2, 2, 3, 5)),
    ]);
    let set = load(archive).unwrap();
    assert_eq!(set.channels, 3);
    assert_eq!(set.image(0), &[77; 12]);

    let gray = load(tar(vec![Item::File("1.png", png(2, 2, 1, 1))])).unwrap();
    assert_eq!(gray.channels, 1);
}

#[test]
fn mixed_sizes_name_the_odd_image() {
    let err = load_err(tar(vec![
        Item::File("cat/1.png", png(4, 4, 3, 0)),
        Item::File("dog/2.png", png(5, 4, 3, 0)),
    ]));
    assert!(
        err.contains("up.tar!dog/2.png") && err.contains("4x5x3"),
        "{err}"
    );
}

#[test]
fn an_empty_class_folder_is_refused() {
    let err = load_err(tar(vec![
        Item::Dir("cat/"),
        Item::Dir("dog/"),
        Item::File("cat/1.png", png(2, 2, 1, 0)),
        Item::File("bird/1.png", png(2, 2, 1, 0)),
    ]));
    assert!(
        err.contains("class folder \"dog\" holds no images"),
        "{err}"
    );
}

#[test]
fn an_archive_without_images_is_refused() {
    let err = load_err(tar(vec![Item::Dir("cat/"), Item::Dir(".git/")]));
    assert!(err.contains("up.tar: no images found"), "{err}");
}

#[test]
fn unsupported_and_undecodable_files_are_named() {
    let err = load_err(tar(vec![
        Item::File("cat/1.png", png(2, 2, 1, 0)),
        Item::File("cat/notes.txt", b"hello".to_vec()),
    ]));
    assert!(
        err.contains("up.tar!cat/notes.txt") && err.contains("unsupported"),
        "{err}"
    );

    let err = load_err(zip(&[("cat/1.png", b"\x89PNG\r\n\x1a\nbroken".to_vec())]));
    assert!(
        err.contains("up.tar!cat/1.png: cannot decode image"),
        "{err}"
    );
}

#[test]
fn traversal_absolute_paths_and_links_are_refused() {
    let cases = [
        (
            tar(vec![Item::File("../evil.png", png(2, 2, 1, 0))]),
            "`..`",
        ),
        (
            tar(vec![Item::File("/etc/evil.png", png(2, 2, 1, 0))]),
            "absolute",
        ),
        (
            tar(vec![Item::Symlink("cat/1.png", "/etc/passwd")]),
            "links",
        ),
        (tar(vec![Item::HardLink("cat/1.png", "cat/0.png")]), "links"),
        (zip(&[("../x.png", png(2, 2, 1, 0))]), "`..`"),
    ];
    for (archive, reason) in cases {
        let err = load_err(archive);
        assert!(
            err.contains("unsafe archive entry") && err.contains(reason),
            "{err}"
        );
    }
}

#[test]
fn a_decompression_bomb_stops_at_the_limits() {
    let zeros = vec![0u8; 4 << 20];
    let limits = Limits {
        max_entry_bytes: 1 << 20,
        ..Limits::default()
    };
    let bomb = gzip(&tar(vec![Item::File("a.png", zeros.clone())]));
    assert!(bomb.len() < 64 << 10, "the bomb compresses well");
    let err = folder::load_from(Cursor::new(bomb), "bomb.tar.gz", &limits)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large"), "{err}");

    let err = folder::load_from(Cursor::new(zip(&[("a.png", zeros)])), "bomb.zip", &limits)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bomb.zip!a.png: too large"), "{err}");

    let limits = Limits {
        max_archive_bytes: 1 << 20,
        ..Limits::default()
    };
    let many: Vec<Item> = [".pad1", ".pad2", ".pad3"]
        .into_iter()
        .map(|n| Item::File(n, vec![0u8; 600 << 10]))
        .collect();
    let err = folder::load_from(Cursor::new(gzip(&tar(many))), "t.tgz", &limits)
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large"), "{err}");
}

#[test]
fn too_many_entries_or_too_many_pixels_are_refused() {
    let items: Vec<Item> = (0..5).map(|_| Item::Dir("d/")).collect();
    let limits = Limits {
        max_entries: 4,
        ..Limits::default()
    };
    let err = folder::load_from(Cursor::new(tar(items)), "t.tar", &limits)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than 4 entries"), "{err}");

    let limits = Limits {
        max_decoded_bytes: 100,
        ..Limits::default()
    };
    let archive = tar(vec![Item::File("1.png", png(8, 8, 3, 0))]);
    let err = folder::load_from(Cursor::new(archive), "t.tar", &limits)
        .unwrap_err()
        .to_string();
    assert!(err.contains("decoded images exceed 100 bytes"), "{err}");
}

#[test]
fn something_that_is_not_an_archive_has_a_bad_magic() {
    let err = load_err(b"just some text, certainly not an archive".to_vec());
    assert!(
        err.contains("bad magic") && err.contains("tar, tar.gz or zip"),
        "{err}"
    );
}

/// CIFAR-10 records whose first pixel byte is the label.
fn cifar10_batch(labels: &[u8]) -> Vec<u8> {
    labels
        .iter()
        .flat_map(|&l| std::iter::once(l).chain(std::iter::repeat_n(l, 3072)))
        .collect()
}

#[test]
fn the_official_cifar10_layout_loads_train_and_test_parts() {
    let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
    let archive = gzip(&tar(vec![
        Item::Dir("cifar-10-batches-bin/"),
        Item::File(
            "cifar-10-batches-bin/data_batch_2.bin",
            cifar10_batch(&[2, 3]),
        ),
        Item::File(
            "cifar-10-batches-bin/data_batch_1.bin",
            cifar10_batch(&[0, 1, 9]),
        ),
        Item::File("cifar-10-batches-bin/test_batch.bin", cifar10_batch(&[5])),
        Item::File("cifar-10-batches-bin/batches.meta.txt", names.into_bytes()),
        Item::File("cifar-10-batches-bin/readme.html", b"<html>".to_vec()),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cifar-10-binary.tar.gz");
    std::fs::write(&path, &archive).unwrap();

    let train = cifar::load(&path, Variant::Cifar10).unwrap();
    assert_eq!(train.labels, Some(vec![0, 1, 9, 2, 3]));
    assert_eq!(train.image(4)[0], 3);
    assert_eq!(train.class_names[9], "class9");
    let test = cifar::load_part(&path, Variant::Cifar10, Part::Test, &Limits::default()).unwrap();
    assert_eq!(test.labels, Some(vec![5]));

    let loose = dir.path().join("batches");
    std::fs::create_dir(&loose).unwrap();
    std::fs::write(loose.join("data_batch_1.bin"), cifar10_batch(&[4])).unwrap();
    std::fs::write(loose.join("data_batch_2.bin"), cifar10_batch(&[12])).unwrap();
    let err = cifar::load(&loose, Variant::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_2.bin") && err.contains("label 12 of image 0"),
        "{err}"
    );

    let single = loose.join("data_batch_1.bin");
    let set = mpl_data::load(mpl_protocol::spec::DataFormat::Cifar10, &single, None).unwrap();
    assert_eq!((set.len(), set.class_names[0].as_str()), (1, "airplane"));
}
