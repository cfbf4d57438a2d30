//! TFRecord framing, as TensorFlow's `tensorflow/core/lib/io/record_writer.cc` writes it:
//!
//! ```text
//! u64 length (little endian) | u32 masked_crc32c(length bytes) | data[length] | u32 masked_crc32c(data)
//! ```
//! with `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping), so that a CRC of data that
//! itself contains CRCs does not look like one. Both CRCs are checked on read.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Location, Result};

const MASK_DELTA: u32 = 0xa282_ead8;

/// TensorFlow's masked CRC32C (Castagnoli).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Streams the records of one TFRecord file; errors name the file and the record index.
pub struct TfRecordReader<R> {
    inner: R,
    path: PathBuf,
    record: u64,
}

impl TfRecordReader<BufReader<File>> {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(e, path))?;
        Ok(Self::new(BufReader::with_capacity(1 << 20, file), path))
    }
}

impl<R: Read> TfRecordReader<R> {
    /// `path` is only used in error messages.
    pub fn new(inner: R, path: impl AsRef<Path>) -> Self {
        Self {
            inner,
            path: path.as_ref().to_path_buf(),
            record: 0,
        }
    }

    fn loc(&self) -> Location {
        // Records are episodes in RLDS, so the record index is reported as the episode.
        Location::file(&self.path).episode(self.record)
    }

    /// Fill `buf` completely. Returns Ok(false) on a clean end of file before the first byte when `eof_ok`.
    fn read_exact_or_eof(&mut self, buf: &mut [u8], eof_ok: bool, what: &str) -> Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    if filled == 0 && eof_ok {
                        return Ok(false);
                    }
                    return Err(Error::invalid(
                        self.loc(),
                        format!("truncated TFRecord: end of file inside the {what} of record {} ({filled} of {} bytes)", self.record, buf.len()),
                    ));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(e, &self.path)),
            }
        }
        Ok(true)
    }

    /// The next record's data, or None at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>> {
        let mut header = [0u8; 12];
        if !self.read_exact_or_eof(&mut header, true, "header")? {
            return Ok(None);
        }
        let len_bytes: [u8; 8] = [
            header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7],
        ];
        let len_crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if masked_crc32c(&len_bytes) != len_crc {
            return Err(Error::invalid(
                self.loc(),
                format!("TFRecord length CRC mismatch in record {}", self.record),
            ));
        }
        let len = u64::from_le_bytes(len_bytes);
        // The length CRC passed, so the length is what the writer meant; still refuse absurd sizes
        // rather than attempt a huge allocation.
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= (1usize << 34))
            .ok_or_else(|| {
                Error::invalid(
                    self.loc(),
                    format!("TFRecord record of {len} bytes is too large"),
                )
            })?;
        // Grow the buffer with the bytes actually present rather than allocating the declared length up front:
        // a truncated file (or a length that is corrupt yet CRC-consistent) must not cost gigabytes first.
        let mut data = Vec::with_capacity(len.min(1 << 24));
        loop {
            match (&mut self.inner)
                .take((len - data.len()) as u64)
                .read_to_end(&mut data)
            {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(e, &self.path)),
            }
        }
        if data.len() < len {
            return Err(Error::invalid(
                self.loc(),
                format!(
                    "truncated TFRecord: end of file inside the data of record {} ({} of {len} bytes)",
                    self.record,
                    data.len()
                ),
            ));
        }
        let mut crc = [0u8; 4];
        self.read_exact_or_eof(&mut crc, false, "data CRC")?;
        if masked_crc32c(&data) != u32::from_le_bytes(crc) {
            return Err(Error::invalid(
                self.loc(),
                format!("TFRecord data CRC mismatch in record {}", self.record),
            ));
        }
        self.record += 1;
        Ok(Some(data))
    }

    /// Index of the next record to be read.
    pub fn record_index(&self) -> u64 {
        self.record
    }
}

impl<R: Read> Iterator for TfRecordReader<R> {
    type Item = Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Writes TFRecord framing.
pub struct TfRecordWriter<W: Write> {
    inner: W,
    path: PathBuf,
    records: u64,
}

impl TfRecordWriter<BufWriter<File>> {
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|e| Error::io(e, path))?;
        Ok(Self::new(BufWriter::with_capacity(1 << 20, file), path))
    }
}

impl<W: Write> TfRecordWriter<W> {
    pub fn new(inner: W, path: impl AsRef<Path>) -> Self {
        Self {
            inner,
            path: path.as_ref().to_path_buf(),
            records: 0,
        }
    }

    pub fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(16);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        let io = |e| Error::io(e, &self.path);
        self.inner.write_all(&frame).map_err(io)?;
        self.inner.write_all(data).map_err(io)?;
        self.inner
            .write_all(&masked_crc32c(data).to_le_bytes())
            .map_err(io)?;
        self.records += 1;
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flush and return the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.inner.flush().map_err(|e| Error::io(e, &self.path))?;
        Ok(self.inner)
    }
}

impl TfRecordReader<BufReader<File>> {
    /// Skip the next record without reading its data (its length CRC is still checked).
    /// Returns false at the end of the file.
    pub fn skip_record(&mut self) -> Result<bool> {
        let mut header = [0u8; 12];
        if !self.read_exact_or_eof(&mut header, true, "header")? {
            return Ok(false);
        }
        let len_bytes: [u8; 8] = [
            header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7],
        ];
        if masked_crc32c(&len_bytes)
            != u32::from_le_bytes([header[8], header[9], header[10], header[11]])
        {
            return Err(Error::invalid(
                self.loc(),
                format!("TFRecord length CRC mismatch in record {}", self.record),
            ));
        }
        let skip = u64::from_le_bytes(len_bytes).saturating_add(4);
        let skip = i64::try_from(skip)
            .map_err(|_| Error::invalid(self.loc(), "TFRecord record too large"))?;
        self.inner
            .seek_relative(skip)
            .map_err(|e| Error::io(e, &self.path))?;
        self.record += 1;
        Ok(true)
    }
}

/// The number of records in the TFRecord file `path`, read from the record headers alone (each length CRC is
/// checked, and each record's data must lie inside the file): what `dataset_info.json`'s `shardLengths` must say.
/// Errors name the file and the record (as the episode, like [`TfRecordReader`]).
pub fn count_records(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::io(e, path))?;
    let size = file.metadata().map_err(|e| Error::io(e, path))?.len();
    let mut reader = TfRecordReader::new(BufReader::with_capacity(1 << 16, file), path);
    let mut at = 0u64;
    loop {
        let record = reader.record;
        let loc = || Location::file(path).episode(record);
        if at == size {
            return Ok(record);
        }
        let mut header = [0u8; 12];
        reader.read_exact_or_eof(&mut header, false, "header")?;
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let len_crc = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if masked_crc32c(&len_bytes) != len_crc {
            return Err(Error::invalid(
                loc(),
                format!("TFRecord length CRC mismatch in record {record}"),
            ));
        }
        let len = u64::from_le_bytes(len_bytes);
        let end = at
            .checked_add(12)
            .and_then(|x| x.checked_add(len))
            .and_then(|x| x.checked_add(4));
        match end {
            Some(end) if end <= size => {
                reader
                    .inner
                    .seek_relative((len + 4) as i64)
                    .map_err(|e| Error::io(e, path))?;
                at = end;
                reader.record += 1;
            }
            _ => {
                return Err(Error::invalid(
                    loc(),
                    format!(
                        "truncated TFRecord: record {record} declares {len} bytes of data, the file ends {} bytes after its header",
                        size - at - 12
                    ),
                ))
            }
        }
    }
}
