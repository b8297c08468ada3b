//! Image dataset formats, the canonical form and augmentation.
