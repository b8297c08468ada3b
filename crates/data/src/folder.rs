//! Image folders (PNG and JPEG) inside a tar, tar.gz or zip archive.
//!
//! Two layouts are accepted, optionally under common top folders (`flowers/daisy/1.jpg`):
//!
//! * labeled: one folder per class, `class/name.png`; classes are numbered in name order;
//! * unlabeled: the images side by side (flat), or all in a single folder.
//!
//! All images must share one height and width; grayscale images in a set that also holds colour
//! images are expanded to RGB, alpha channels are dropped. Hidden files and folders (names
//! starting with `.`) and `__MACOSX` folders are ignored; any other file that is not a PNG or
//! JPEG image is an error, as is an empty class folder. Archives are read in memory under
//! [`Limits`], never unpacked to disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read, Seek};
use std::path::Path;

use image::{DynamicImage, ImageReader};

use crate::archive::{self, Kind};
use crate::reader::{display, open};
use crate::{DataError, ImageSet, Limits};

/// Largest allocation one image decoder may make.
const MAX_DECODER_ALLOC: u64 = 512 << 20;

/// Loads an image-folder archive with the default [`Limits`].
pub fn load(path: &Path) -> Result<ImageSet, DataError> {
    load_with_limits(path, &Limits::default())
}

/// Loads an image-folder archive under `limits`.
pub fn load_with_limits(path: &Path, limits: &Limits) -> Result<ImageSet, DataError> {
    load_from(open(path)?, &display(path), limits)
}

/// Loads an image-folder archive from any seekable reader; `file` names it in errors.
pub fn load_from<R: Read + Seek>(
    mut reader: R,
    file: &str,
    limits: &Limits,
) -> Result<ImageSet, DataError> {
    let kind = archive::sniff(&mut reader, file)?;
    if kind == Kind::Other {
        return Err(DataError::BadMagic {
            file: file.to_string(),
            detail: "not a tar, tar.gz or zip archive".into(),
        });
    }
    let mut collected = Collected::default();
    archive::for_each_entry(reader, kind, file, limits, wants, |entry| {
        collected.add(entry, file, limits)
    })?;
    collected.into_set(file)
}

/// Whether an entry is an image worth reading (everything else is checked without its bytes).
fn wants(components: &[String]) -> bool {
    !is_ignored(components) && components.last().is_some_and(|n| is_image_name(n))
}

/// Hidden files and folders and macOS resource forks.
fn is_ignored(components: &[String]) -> bool {
    components
        .iter()
        .any(|c| c.starts_with('.') || c == "__MACOSX")
}

/// Whether a file name has a PNG or JPEG extension.
fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".png", ".jpg", ".jpeg"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// One decoded image and where it came from.
struct Decoded {
    components: Vec<String>,
    channels: usize,
    pixels: Vec<u8>,
}

/// Images and folders seen so far.
#[derive(Default)]
struct Collected {
    images: Vec<Decoded>,
    folders: BTreeSet<Vec<String>>,
    size: Option<(usize, usize)>,
    decoded_bytes: u64,
}

impl Collected {
    /// Takes in one archive entry.
    fn add(
        &mut self,
        entry: archive::Entry<'_>,
        file: &str,
        limits: &Limits,
    ) -> Result<(), DataError> {
        let at = format!("{file}!{}", entry.name);
        if is_ignored(entry.components) {
            return Ok(());
        }
        if entry.is_dir {
            self.folders.insert(entry.components.to_vec());
            return Ok(());
        }
        let Some(data) = entry.data.filter(|_| is_image_name(entry.name)) else {
            return Err(DataError::Unsupported {
                file: at,
                reason: "only PNG and JPEG images (.png, .jpg, .jpeg) are supported".into(),
            });
        };

        let image = decode(&data, &at, limits)?;
        let (h, w) = (image.height() as usize, image.width() as usize);
        let (channels, pixels) = to_gray_or_rgb(image);
        self.check_size(h, w, channels, &at)?;
        self.decoded_bytes += (h * w * 3) as u64;
        if self.decoded_bytes > limits.max_decoded_bytes {
            return Err(DataError::too_large(
                file,
                format!("decoded images exceed {} bytes", limits.max_decoded_bytes),
            ));
        }
        self.images.push(Decoded {
            components: entry.components.to_vec(),
            channels,
            pixels,
        });
        Ok(())
    }

    /// Records the first image's size and refuses any other.
    fn check_size(&mut self, h: usize, w: usize, c: usize, at: &str) -> Result<(), DataError> {
        match self.size {
            None => self.size = Some((h, w)),
            Some((eh, ew)) if (eh, ew) != (h, w) => {
                let first = &self.images[0].components.join("/");
                return Err(DataError::MixedSizes {
                    file: at.to_string(),
                    expected: format!("{eh}x{ew} (like {first})"),
                    found: format!("{h}x{w}x{c}"),
                });
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Works out the layout, orders the images and builds the set.
    fn into_set(self, file: &str) -> Result<ImageSet, DataError> {
        let Some((height, width)) = self.size else {
            return Err(DataError::NoImages {
                file: file.to_string(),
                detail: ": expected PNG or JPEG images, flat or in one folder per class".into(),
            });
        };
        let layout = Layout::of(&self.images, &self.folders, file)?;
        let channels = if self.images.iter().any(|i| i.channels == 3) {
            3
        } else {
            1
        };

        let mut images = self.images;
        images.sort_by(|a, b| a.components.cmp(&b.components));
        let mut pixels = Vec::with_capacity(images.len() * height * width * channels);
        let mut labels = Vec::with_capacity(images.len());
        for image in &images {
            if image.channels == channels {
                pixels.extend_from_slice(&image.pixels);
            } else {
                pixels.extend(image.pixels.iter().flat_map(|&v| [v, v, v]));
            }
            if let Layout::Classes { depth, names } = &layout {
                let class = &image.components[*depth - 1];
                labels.push(names.binary_search(class).unwrap_or(0) as u32);
            }
        }

        let (labels, class_names) = match layout {
            Layout::Classes { names, .. } => (Some(labels), names),
            Layout::Flat => (None, Vec::new()),
        };
        Ok(ImageSet {
            height,
            width,
            channels,
            pixels,
            num_classes: class_names.len(),
            labels,
            class_names,
        })
    }
}

/// How the archive's images are arranged.
enum Layout {
    /// No classes.
    Flat,
    /// Class folders at `depth` (1 = the top level), names sorted.
    Classes { depth: usize, names: Vec<String> },
}

impl Layout {
    /// Derives the layout, refusing mixed depths, several top folders and empty classes.
    fn of(
        images: &[Decoded],
        folders: &BTreeSet<Vec<String>>,
        file: &str,
    ) -> Result<Layout, DataError> {
        let first = &images[0].components;
        let depth = first.len() - 1;
        for image in images {
            if image.components.len() != first.len() {
                return Err(DataError::invalid(
                    file,
                    format!(
                        "images lie at different folder depths ({} and {}); put every image \
                         directly in its class folder",
                        first.join("/"),
                        image.components.join("/")
                    ),
                ));
            }
            if image.components[..depth.saturating_sub(1)] != first[..depth.saturating_sub(1)] {
                return Err(DataError::invalid(
                    file,
                    format!(
                        "class folders lie under different parents ({} and {})",
                        first.join("/"),
                        image.components.join("/")
                    ),
                ));
            }
        }
        if depth == 0 {
            return Ok(Layout::Flat);
        }

        let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
        for image in images {
            *counts.entry(&image.components[depth - 1]).or_default() += 1;
        }
        let parent = &first[..depth - 1];
        for folder in folders {
            let is_class_level = folder.len() == depth && folder[..depth - 1] == *parent;
            if is_class_level && !counts.contains_key(&folder[depth - 1]) {
                return Err(DataError::EmptyClass {
                    file: file.to_string(),
                    class: folder.join("/"),
                });
            }
        }
        if counts.len() == 1 {
            return Ok(Layout::Flat);
        }
        Ok(Layout::Classes {
            depth,
            names: counts.into_keys().cloned().collect(),
        })
    }
}

/// Decodes PNG or JPEG bytes (recognised by content) under the side and allocation limits.
fn decode(data: &[u8], at: &str, limits: &Limits) -> Result<DynamicImage, DataError> {
    let undecodable = |reason: String| DataError::Undecodable {
        file: at.to_string(),
        reason,
    };
    let mut reader = ImageReader::new(Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| undecodable(e.to_string()))?;
    if reader.format().is_none() {
        return Err(undecodable("the content is neither PNG nor JPEG".into()));
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(MAX_DECODER_ALLOC);
    reader.limits(decoder_limits);
    let image = reader.decode().map_err(|e| undecodable(e.to_string()))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(undecodable("the image is empty".into()));
    }
    Ok(image)
}

/// Converts to 8-bit grayscale (1 channel) or RGB (3 channels), dropping alpha.
fn to_gray_or_rgb(image: DynamicImage) -> (usize, Vec<u8>) {
    if image.color().has_color() {
        (3, image.into_rgb8().into_raw())
    } else {
        (1, image.into_luma8().into_raw())
    }
}
