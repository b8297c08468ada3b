//! Caps on what a parser will read or decode, so a hostile upload cannot exhaust memory.

/// Upper bounds every parser enforces before allocating.
///
/// The defaults fit any real image-classification dataset the platform targets while refusing
/// decompression bombs and absurd headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Total decoded pixel bytes of one set (all images together).
    pub max_decoded_bytes: u64,
    /// Decompressed bytes read from one archive or compressed file (the stream, not the pixels).
    pub max_archive_bytes: u64,
    /// Bytes of one archive entry (one encoded image or one CIFAR batch).
    pub max_entry_bytes: u64,
    /// Entries of one archive, folders included.
    pub max_entries: u64,
    /// Rows or columns of one image.
    pub max_side: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_decoded_bytes: 8 << 30,
            max_archive_bytes: 16 << 30,
            max_entry_bytes: 256 << 20,
            max_entries: 5_000_000,
            max_side: 4096,
        }
    }
}
