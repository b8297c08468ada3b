//! Reading tar, tar.gz and zip archives entirely in memory, refusing anything unsafe.
//!
//! Nothing from an archive is ever written to disk. Entry names are checked component by
//! component (no `..`, no absolute path, no backslash or drive letter), links of either kind
//! are refused, and every size is capped by [`Limits`] before and while reading, so a
//! decompression bomb stops at the cap instead of filling memory.

use std::io::{Read, Seek, SeekFrom};

use flate2::read::GzDecoder;

use crate::reader::{GZIP_MAGIC, read_up_to};
use crate::{DataError, Limits};

/// What kind of container a stream holds, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A gzip stream (expected to hold a tar).
    TarGz,
    /// A plain tar.
    Tar,
    /// A zip archive.
    Zip,
    /// None of the above.
    Other,
}

/// One entry handed to a visitor.
pub(crate) struct Entry<'a> {
    /// The name as stored, for messages.
    pub name: &'a str,
    /// The name's components, already checked to be safe.
    pub components: &'a [String],
    /// Whether the entry is a folder.
    pub is_dir: bool,
    /// The file's bytes; `None` for a folder or a file the visitor chose not to read.
    pub data: Option<Vec<u8>>,
}

/// Sniffs the container kind from the start of `reader`, then rewinds it.
pub(crate) fn sniff<R: Read + Seek>(reader: &mut R, file: &str) -> Result<Kind, DataError> {
    let mut head = [0u8; 512];
    let n = read_up_to(reader, &mut head, file)?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| DataError::io(file, "cannot seek", e))?;
    Ok(if n >= 2 && head[..2] == GZIP_MAGIC {
        Kind::TarGz
    } else if n >= 4 && (head[..4] == *b"PK\x03\x04" || head[..4] == *b"PK\x05\x06") {
        Kind::Zip
    } else if n >= 262 && &head[257..262] == b"ustar" {
        Kind::Tar
    } else {
        Kind::Other
    })
}

/// Calls `visit` for every file and folder of the archive in `reader`, in archive order.
///
/// `wants` decides from an entry's components whether its bytes are needed; unwanted files are
/// skipped without being buffered. `file` names the archive in errors.
pub(crate) fn for_each_entry<R, W, V>(
    reader: R,
    kind: Kind,
    file: &str,
    limits: &Limits,
    wants: W,
    visit: V,
) -> Result<(), DataError>
where
    R: Read + Seek,
    W: FnMut(&[String]) -> bool,
    V: FnMut(Entry<'_>) -> Result<(), DataError>,
{
    match kind {
        Kind::TarGz => {
            let stream = GzDecoder::new(reader).take(limits.max_archive_bytes);
            tar_entries(stream, file, limits, wants, visit)
        }
        Kind::Tar => tar_entries(
            reader.take(limits.max_archive_bytes),
            file,
            limits,
            wants,
            visit,
        ),
        Kind::Zip => zip_entries(reader, file, limits, wants, visit),
        Kind::Other => Err(DataError::BadMagic {
            file: file.to_string(),
            detail: "not a tar, tar.gz or zip archive".into(),
        }),
    }
}

/// Walks a tar stream.
fn tar_entries<R, W, V>(
    stream: R,
    file: &str,
    limits: &Limits,
    mut wants: W,
    mut visit: V,
) -> Result<(), DataError>
where
    R: Read,
    W: FnMut(&[String]) -> bool,
    V: FnMut(Entry<'_>) -> Result<(), DataError>,
{
    let mut archive = tar::Archive::new(stream);
    let entries = archive
        .entries()
        .map_err(|e| DataError::invalid(file, format!("not a valid tar archive: {e}")))?;
    let mut count = 0u64;
    let mut declared_total = 0u64;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| DataError::invalid(file, format!("corrupt tar archive: {e}")))?;
        count += 1;
        check_count(count, file, limits)?;

        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let at = format!("{file}!{name}");
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(unsafe_entry(&at, "links are not allowed"));
        }
        let components = safe_components(&name, &at)?;
        if kind.is_dir() {
            visit(Entry {
                name: &name,
                components: &components,
                is_dir: true,
                data: None,
            })?;
            continue;
        }
        if !kind.is_file() && !kind.is_contiguous() {
            return Err(DataError::Unsupported {
                file: at,
                reason: format!(
                    "tar entry type {:?} is not a regular file",
                    kind.as_byte() as char
                ),
            });
        }

        let size = entry.size();
        declared_total = declared_total.saturating_add(size);
        check_entry_size(size, &at, limits)?;
        if declared_total > limits.max_archive_bytes {
            return Err(DataError::too_large(
                file,
                format!("entries exceed {} bytes in total", limits.max_archive_bytes),
            ));
        }
        let data = if wants(&components) {
            Some(read_entry(&mut entry, size, &at, limits)?)
        } else {
            None
        };
        visit(Entry {
            name: &name,
            components: &components,
            is_dir: false,
            data,
        })?;
    }
    Ok(())
}

/// Walks a zip archive.
fn zip_entries<R, W, V>(
    reader: R,
    file: &str,
    limits: &Limits,
    mut wants: W,
    mut visit: V,
) -> Result<(), DataError>
where
    R: Read + Seek,
    W: FnMut(&[String]) -> bool,
    V: FnMut(Entry<'_>) -> Result<(), DataError>,
{
    let mut archive = zip::ZipArchive::new(reader)
        .map_err(|e| DataError::invalid(file, format!("not a valid zip archive: {e}")))?;
    check_count(archive.len() as u64, file, limits)?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| DataError::Unsupported {
            file: format!("{file}!#{i}"),
            reason: format!("cannot read zip entry: {e}"),
        })?;
        let name = entry.name().to_string();
        let at = format!("{file}!{name}");
        if entry.is_symlink() {
            return Err(unsafe_entry(&at, "links are not allowed"));
        }
        let components = safe_components(&name, &at)?;
        if entry.is_dir() {
            visit(Entry {
                name: &name,
                components: &components,
                is_dir: true,
                data: None,
            })?;
            continue;
        }

        let size = entry.size();
        check_entry_size(size, &at, limits)?;
        let data = if wants(&components) {
            let data = read_entry(&mut entry, size, &at, limits)?;
            total = total.saturating_add(data.len() as u64);
            if total > limits.max_archive_bytes {
                return Err(DataError::too_large(
                    file,
                    format!("entries exceed {} bytes in total", limits.max_archive_bytes),
                ));
            }
            Some(data)
        } else {
            None
        };
        visit(Entry {
            name: &name,
            components: &components,
            is_dir: false,
            data,
        })?;
    }
    Ok(())
}

/// Reads one entry's bytes, never more than the entry limit whatever its header claimed.
fn read_entry(
    entry: &mut impl Read,
    declared: u64,
    at: &str,
    limits: &Limits,
) -> Result<Vec<u8>, DataError> {
    let mut data = Vec::with_capacity(declared.min(limits.max_entry_bytes).min(64 << 20) as usize);
    entry
        .take(limits.max_entry_bytes + 1)
        .read_to_end(&mut data)
        .map_err(|e| DataError::invalid(at, format!("cannot read entry: {e}")))?;
    check_entry_size(data.len() as u64, at, limits)?;
    Ok(data)
}

/// Refuses archives with more entries than the limit.
fn check_count(count: u64, file: &str, limits: &Limits) -> Result<(), DataError> {
    if count > limits.max_entries {
        return Err(DataError::too_large(
            file,
            format!("more than {} entries", limits.max_entries),
        ));
    }
    Ok(())
}

/// Refuses entries larger than the limit.
fn check_entry_size(size: u64, at: &str, limits: &Limits) -> Result<(), DataError> {
    if size > limits.max_entry_bytes {
        return Err(DataError::too_large(
            at,
            format!(
                "entry of {size} bytes exceeds {} bytes",
                limits.max_entry_bytes
            ),
        ));
    }
    Ok(())
}

/// An [`DataError::UnsafeEntry`].
fn unsafe_entry(at: &str, reason: &str) -> DataError {
    DataError::UnsafeEntry {
        file: at.to_string(),
        reason: reason.to_string(),
    }
}

/// Splits an entry name into components, refusing anything that could leave the archive's root.
pub(crate) fn safe_components(name: &str, at: &str) -> Result<Vec<String>, DataError> {
    if name.starts_with('/') {
        return Err(unsafe_entry(at, "absolute paths are not allowed"));
    }
    if name.contains('\\') || name.contains('\0') {
        return Err(unsafe_entry(
            at,
            "backslashes and NUL bytes are not allowed in names",
        ));
    }
    let mut components = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_entry(at, "`..` is not allowed in paths")),
            _ if components.is_empty() && part.len() == 2 && part.ends_with(':') => {
                return Err(unsafe_entry(at, "drive letters are not allowed"));
            }
            _ => components.push(part.to_string()),
        }
    }
    if components.is_empty() {
        return Err(unsafe_entry(at, "the name is empty"));
    }
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_absolute_names_are_refused() {
        for bad in [
            "../x.png",
            "a/../../x.png",
            "/etc/passwd",
            "c:/x.png",
            "a\\..\\x.png",
            "./",
        ] {
            assert!(safe_components(bad, "t.tar!x").is_err(), "{bad} accepted");
        }
        assert_eq!(
            safe_components("./cat//1.png", "t").unwrap(),
            vec!["cat", "1.png"]
        );
    }
}
