//! Reading files and streams with caps: gzip detection, exact reads that report truncation.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::DataError;

/// The two bytes every gzip stream starts with.
pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens `path` for buffered reading, naming the file on failure.
pub(crate) fn open(path: &Path) -> Result<BufReader<File>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(display(path), "cannot open", e))?;
    Ok(BufReader::new(file))
}

/// Whether the file at `path` starts with the gzip magic bytes.
pub(crate) fn is_gzip(path: &Path) -> Result<bool, DataError> {
    let mut head = [0u8; 2];
    let mut file = open(path)?;
    let n = read_up_to(&mut file, &mut head, &display(path))?;
    Ok(n == 2 && head == GZIP_MAGIC)
}

/// Opens `path`, transparently decompressing it when it is gzip, with at most `max_bytes`
/// decompressed bytes readable.
pub(crate) fn open_maybe_gzip(path: &Path, max_bytes: u64) -> Result<Box<dyn Read>, DataError> {
    let gzip = is_gzip(path)?;
    let file = open(path)?;
    Ok(if gzip {
        Box::new(GzDecoder::new(file).take(max_bytes))
    } else {
        Box::new(file.take(max_bytes))
    })
}

/// The path as users wrote it, for messages.
pub(crate) fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Reads into `buf` until it is full or the stream ends; returns the bytes read.
pub(crate) fn read_up_to(
    reader: &mut impl Read,
    buf: &mut [u8],
    file: &str,
) -> Result<usize, DataError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DataError::io(file, "cannot read", e)),
        }
    }
    Ok(filled)
}

/// Reads exactly `buf.len()` bytes; a short stream is a [`DataError::Truncated`] that says
/// what was being read.
pub(crate) fn read_exact(
    reader: &mut impl Read,
    buf: &mut [u8],
    file: &str,
    what: &str,
) -> Result<(), DataError> {
    let n = read_up_to(reader, buf, file)?;
    if n < buf.len() {
        return Err(DataError::truncated(
            file,
            format!("{what}: expected {} bytes, found {n}", buf.len()),
        ));
    }
    Ok(())
}

/// Reads exactly `len` bytes into a new vector without trusting `len` for the allocation
/// (the vector grows as bytes actually arrive).
pub(crate) fn read_vec(
    reader: &mut impl Read,
    len: u64,
    file: &str,
    what: &str,
) -> Result<Vec<u8>, DataError> {
    const FIRST_CHUNK: u64 = 64 << 20;
    let mut out = Vec::with_capacity(len.min(FIRST_CHUNK) as usize);
    reader
        .take(len)
        .read_to_end(&mut out)
        .map_err(|e| DataError::io(file, "cannot read", e))?;
    if (out.len() as u64) < len {
        return Err(DataError::truncated(
            file,
            format!("{what}: expected {len} bytes, found {}", out.len()),
        ));
    }
    Ok(out)
}

/// Fails when the stream still has bytes: a file longer than its header says is corrupt.
pub(crate) fn expect_end(reader: &mut impl Read, file: &str, what: &str) -> Result<(), DataError> {
    let mut probe = [0u8; 1];
    if read_up_to(reader, &mut probe, file)? != 0 {
        return Err(DataError::invalid(
            file,
            format!("unexpected bytes after {what}"),
        ));
    }
    Ok(())
}
