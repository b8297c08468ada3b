//! The real Fashion-MNIST files load with the shapes and class balance the dataset documents,
//! and survive a round trip through the canonical form. Skipped when the files are absent.

use std::path::{Path, PathBuf};

use mpl_data::{canonical, idx, split};

fn fashion_file(name: &str) -> Option<PathBuf> {
    let path = Path::new("/usr/share/datasets/fashion-mnist").join(name);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: {} is missing", path.display());
        None
    }
}

#[test]
fn train_and_test_sets_have_the_documented_shapes_and_balance() {
    let (Some(images), Some(labels)) = (
        fashion_file("train-images-idx3-ubyte.gz"),
        fashion_file("train-labels-idx1-ubyte.gz"),
    ) else {
        return;
    };
    let train = idx::load(&images, Some(&labels)).unwrap();
    let stats = train.stats();
    assert_eq!(
        (stats.count, stats.height, stats.width, stats.channels),
        (60_000, 28, 28, 1)
    );
    assert_eq!(stats.num_classes, 10);
    assert_eq!(stats.class_counts, vec![6_000; 10]);

    let (Some(images), Some(labels)) = (
        fashion_file("t10k-images-idx3-ubyte.gz"),
        fashion_file("t10k-labels-idx1-ubyte.gz"),
    ) else {
        return;
    };
    let test = idx::load(&images, Some(&labels)).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.stats().class_counts, vec![1_000; 10]);

    let (mean, std) = train.channel_mean_std();
    // Widely published Fashion-MNIST constants: mean 0.2860, std 0.3530.
    assert!((mean[0] - 0.2860).abs() < 1e-3, "mean {mean:?}");
    assert!((std[0] - 0.3530).abs() < 1e-3, "std {std:?}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fashion-test.mpl");
    canonical::write(&path, &test).unwrap();
    assert_eq!(canonical::read(&path).unwrap(), test);

    let labels = train.labels.as_deref().unwrap();
    let parts = split::class_balanced(labels, 10, 4_000, 1_000, 0).unwrap();
    assert_eq!(parts.labeled.len(), 4_000);
    assert_eq!(parts.unlabeled.len(), 55_000);
    assert_eq!(
        train.subset(&parts.labeled).stats().class_counts,
        vec![400; 10]
    );
}

#[test]
fn a_labels_file_of_another_split_is_a_count_mismatch() {
    let (Some(images), Some(labels)) = (
        fashion_file("t10k-images-idx3-ubyte.gz"),
        fashion_file("train-labels-idx1-ubyte.gz"),
    ) else {
        return;
    };
    let err = idx::load(&images, Some(&labels)).unwrap_err().to_string();
    assert!(err.contains("10000 images but 60000 labels"), "{err}");
    assert!(err.contains("t10k-images-idx3-ubyte.gz"), "{err}");
}
