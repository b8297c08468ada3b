//! The one error type of the crate: every variant names the file and the problem.

/// Why a dataset could not be read, written or split.
///
/// `file` is the path a user gave, followed by `!entry` when the problem is inside an archive,
/// so the message points at the exact thing to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("{file}: {action}: {source}")]
    Io {
        /// The file concerned.
        file: String,
        /// What was being done (`cannot open`, `cannot read`, ...).
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the bytes its format requires.
    #[error("{file}: bad magic number: {detail}")]
    BadMagic {
        /// The file concerned.
        file: String,
        /// What was expected and what was found.
        detail: String,
    },
    /// The file ends before the data its header announces.
    #[error("{file}: truncated: {detail}")]
    Truncated {
        /// The file concerned.
        file: String,
        /// How much was expected and how much was there.
        detail: String,
    },
    /// The number of images and the number of labels differ.
    #[error("{file}: {images} images but {labels} labels")]
    CountMismatch {
        /// The file (or pair of files) concerned.
        file: String,
        /// Images found.
        images: u64,
        /// Labels found.
        labels: u64,
    },
    /// A label is not a valid class index for the format.
    #[error(
        "{file}: label {label} of image {index} is out of range (the format has {num_classes} \
         classes)"
    )]
    LabelOutOfRange {
        /// The file concerned.
        file: String,
        /// Position of the image in the file.
        index: u64,
        /// The label found.
        label: u64,
        /// Classes the format allows.
        num_classes: u64,
    },
    /// An image's size or channel count differs from the others.
    #[error("{file}: image is {found} but the set's images are {expected}")]
    MixedSizes {
        /// The image concerned.
        file: String,
        /// Shape of the set, `HxWxC`.
        expected: String,
        /// Shape of this image, `HxWxC`.
        found: String,
    },
    /// A class folder holds no image.
    #[error("{file}: class folder {class:?} holds no images")]
    EmptyClass {
        /// The archive concerned.
        file: String,
        /// The folder's name.
        class: String,
    },
    /// The source holds no image at all.
    #[error("{file}: no images found{detail}")]
    NoImages {
        /// The file concerned.
        file: String,
        /// Extra context, empty or starting with `: `.
        detail: String,
    },
    /// An archive entry is neither a folder nor a supported image.
    #[error("{file}: unsupported entry: {reason}")]
    Unsupported {
        /// The archive entry concerned.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An image could not be decoded.
    #[error("{file}: cannot decode image: {reason}")]
    Undecodable {
        /// The image concerned.
        file: String,
        /// The decoder's message.
        reason: String,
    },
    /// An archive entry could escape its folder or is a link.
    #[error("{file}: unsafe archive entry: {reason}")]
    UnsafeEntry {
        /// The archive entry concerned.
        file: String,
        /// Why it is refused.
        reason: String,
    },
    /// A size exceeds a configured [`crate::Limits`] value.
    #[error("{file}: too large: {detail}")]
    TooLarge {
        /// The file concerned.
        file: String,
        /// Which limit and by how much.
        detail: String,
    },
    /// The file's structure is wrong in a way other variants do not cover.
    #[error("{file}: invalid: {detail}")]
    Invalid {
        /// The file concerned.
        file: String,
        /// The problem.
        detail: String,
    },
    /// A labeled / validation / unlabeled split cannot be made.
    #[error("cannot split the labeled data: {detail}")]
    Split {
        /// The problem, with the numbers involved.
        detail: String,
    },
}

impl DataError {
    /// An [`DataError::Io`] for `file`.
    pub(crate) fn io(file: impl Into<String>, action: &'static str, e: std::io::Error) -> Self {
        DataError::Io {
            file: file.into(),
            action,
            source: e,
        }
    }

    /// A [`DataError::Invalid`] for `file`.
    pub(crate) fn invalid(file: impl Into<String>, detail: impl Into<String>) -> Self {
        DataError::Invalid {
            file: file.into(),
            detail: detail.into(),
        }
    }

    /// A [`DataError::Truncated`] for `file`.
    pub(crate) fn truncated(file: impl Into<String>, detail: impl Into<String>) -> Self {
        DataError::Truncated {
            file: file.into(),
            detail: detail.into(),
        }
    }

    /// A [`DataError::TooLarge`] for `file`.
    pub(crate) fn too_large(file: impl Into<String>, detail: impl Into<String>) -> Self {
        DataError::TooLarge {
            file: file.into(),
            detail: detail.into(),
        }
    }
}
