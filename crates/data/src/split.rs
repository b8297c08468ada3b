//! Class-balanced labeled / validation / unlabeled splits of one labeled source.
//!
//! The paper's CIFAR-10-4K setting keeps 400 labeled images per class and treats the rest as
//! unlabeled. [`class_balanced`] draws the labeled images and an optional validation hold-out
//! with equal counts per class where the classes allow it, reproducibly from a seed.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::DataError;

/// Indices into one labeled source, each sorted ascending; the three lists are disjoint and
/// together cover every image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Images trained on with their labels.
    pub labeled: Vec<usize>,
    /// Images held out for model selection.
    pub validation: Vec<usize>,
    /// Every other image, used without its label.
    pub unlabeled: Vec<usize>,
}

/// Draws `num_labeled` labeled and `num_validation` validation images, class-balanced.
///
/// Classes take turns (in a seeded random order) giving one image each, so every class gets
/// `n / num_classes` images and the remainder goes to randomly chosen classes; a class that runs
/// out simply stops taking turns. Validation images are drawn the same way from what labeled
/// left. Fails when a label is out of range, when there are fewer labeled images than classes,
/// or when the source has fewer images than requested.
pub fn class_balanced(
    labels: &[u32],
    num_classes: usize,
    num_labeled: usize,
    num_validation: usize,
    seed: u64,
) -> Result<Split, DataError> {
    let mut pools = class_pools(labels, num_classes)?;
    check_sizes(labels.len(), num_classes, num_labeled, num_validation)?;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for pool in &mut pools {
        pool.shuffle(&mut rng);
    }
    let mut order: Vec<usize> = (0..num_classes).collect();
    order.shuffle(&mut rng);

    let mut labeled = take_round_robin(&mut pools, &order, num_labeled);
    order.shuffle(&mut rng);
    let mut validation = take_round_robin(&mut pools, &order, num_validation);
    let mut unlabeled: Vec<usize> = pools.into_iter().flatten().collect();

    labeled.sort_unstable();
    validation.sort_unstable();
    unlabeled.sort_unstable();
    Ok(Split {
        labeled,
        validation,
        unlabeled,
    })
}

/// Image indices grouped by class, each group in ascending order.
fn class_pools(labels: &[u32], num_classes: usize) -> Result<Vec<Vec<usize>>, DataError> {
    let mut pools = vec![Vec::new(); num_classes];
    for (index, &label) in labels.iter().enumerate() {
        let Some(pool) = pools.get_mut(label as usize) else {
            return Err(DataError::Split {
                detail: format!("label {label} of image {index} is not below {num_classes}"),
            });
        };
        pool.push(index);
    }
    Ok(pools)
}

/// Rejects requests the source cannot satisfy.
fn check_sizes(
    total: usize,
    num_classes: usize,
    num_labeled: usize,
    num_validation: usize,
) -> Result<(), DataError> {
    if num_classes == 0 {
        return Err(DataError::Split {
            detail: "the source has no classes".into(),
        });
    }
    if num_labeled < num_classes {
        return Err(DataError::Split {
            detail: format!(
                "num_labeled is {num_labeled} but there are {num_classes} classes; every class \
                 needs at least one labeled image"
            ),
        });
    }
    if num_labeled + num_validation > total {
        return Err(DataError::Split {
            detail: format!(
                "{num_labeled} labeled + {num_validation} validation images requested, the \
                 source has only {total}"
            ),
        });
    }
    Ok(())
}

/// Takes `count` indices, one per class in `order` per round, popping from each pool's end.
fn take_round_robin(pools: &mut [Vec<usize>], order: &[usize], count: usize) -> Vec<usize> {
    let mut taken = Vec::with_capacity(count);
    while taken.len() < count {
        let before = taken.len();
        for &class in order {
            if taken.len() == count {
                break;
            }
            if let Some(index) = pools[class].pop() {
                taken.push(index);
            }
        }
        if taken.len() == before {
            break;
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(per_class: &[usize]) -> Vec<u32> {
        per_class
            .iter()
            .enumerate()
            .flat_map(|(class, &n)| std::iter::repeat_n(class as u32, n))
            .collect()
    }

    fn counts(indices: &[usize], labels: &[u32], k: usize) -> Vec<usize> {
        let mut out = vec![0; k];
        for &i in indices {
            out[labels[i] as usize] += 1;
        }
        out
    }

    #[test]
    fn labeled_images_are_equal_per_class_and_lists_partition_the_source() {
        let labels = labels(&[50, 50, 50, 50]);
        let split = class_balanced(&labels, 4, 40, 20, 7).unwrap();
        assert_eq!(counts(&split.labeled, &labels, 4), vec![10; 4]);
        assert_eq!(counts(&split.validation, &labels, 4), vec![5; 4]);
        let mut all: Vec<usize> =
            [&split.labeled[..], &split.validation, &split.unlabeled].concat();
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_small_class_gives_what_it_has_and_others_make_up_the_rest() {
        let labels = labels(&[2, 30, 30]);
        let split = class_balanced(&labels, 3, 30, 0, 1).unwrap();
        assert_eq!(counts(&split.labeled, &labels, 3), vec![2, 14, 14]);
    }

    #[test]
    fn the_seed_decides_the_draw() {
        let labels = labels(&[100, 100]);
        let a = class_balanced(&labels, 2, 10, 10, 1).unwrap();
        assert_eq!(a, class_balanced(&labels, 2, 10, 10, 1).unwrap());
        assert_ne!(a, class_balanced(&labels, 2, 10, 10, 2).unwrap());
    }

    #[test]
    fn too_few_images_or_labeled_slots_are_clear_errors() {
        let labels = labels(&[5, 5]);
        let err = class_balanced(&labels, 2, 8, 4, 0).unwrap_err().to_string();
        assert!(
            err.contains("8 labeled + 4 validation") && err.contains("only 10"),
            "{err}"
        );
        let err = class_balanced(&labels, 2, 1, 0, 0).unwrap_err().to_string();
        assert!(err.contains("2 classes"), "{err}");
        let err = class_balanced(&[0, 3], 2, 2, 0, 0).unwrap_err().to_string();
        assert!(err.contains("label 3 of image 1"), "{err}");
    }
}
