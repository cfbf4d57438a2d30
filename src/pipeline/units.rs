//! The work directory of a run, `OUT/.vadapt/`: the finished units (one sampled (episode, target) video at the
//! model's resolution, lossless) and the manifest that lists them. Sampling is the expensive part; encoding is a
//! pure function of the units, so a resumed or merged run re-writes the dataset from the units and gets the same
//! bytes as an uninterrupted run.
//!
//! Crash safety: a unit file is written under a temporary name and renamed, then its manifest line is appended
//! and synced. A line cut by kill -9 does not parse and is ignored; a unit file without a line is redone.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Location, Result};
use crate::io::fs::write_atomic;

const MAGIC: &[u8; 8] = b"VADUNIT1";

/// One finished unit, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    pub episode: u64,
    pub target: String,
    /// File name under `units/`.
    pub file: String,
    /// CRC-32C of the file.
    pub crc: u32,
}

/// `OUT/.vadapt/`.
pub struct WorkDir {
    pub root: PathBuf,
}

impl WorkDir {
    pub fn new(out: &Path) -> Self {
        Self {
            root: out.join(".vadapt"),
        }
    }
    pub fn units_dir(&self) -> PathBuf {
        self.root.join("units")
    }
    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.jsonl")
    }
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(self.units_dir()).at(self.units_dir())
    }

    pub fn unit_file_name(episode: u64, target: &str) -> String {
        format!("ep{episode:08}_{target}.bin")
    }

    /// Finished units by (episode, target); broken or missing files are left out (they will be redone).
    pub fn finished(&self) -> Result<BTreeMap<(u64, String), UnitRecord>> {
        let mut out = BTreeMap::new();
        let path = self.manifest();
        if !path.exists() {
            return Ok(out);
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        for line in text.lines() {
            let Ok(r) = serde_json::from_str::<UnitRecord>(line) else {
                continue;
            };
            if self.units_dir().join(&r.file).exists() {
                out.insert((r.episode, r.target.clone()), r);
            }
        }
        Ok(out)
    }

    /// Store a unit and record it in the manifest.
    pub fn save(&self, episode: u64, target: &str, frames: &[RgbImage]) -> Result<UnitRecord> {
        let file = Self::unit_file_name(episode, target);
        let bytes = encode_unit(frames);
        let crc = crc32c::crc32c(&bytes);
        write_atomic(&self.units_dir().join(&file), &bytes)?;
        let rec = UnitRecord {
            episode,
            target: target.to_string(),
            file,
            crc,
        };
        self.append(&rec)?;
        Ok(rec)
    }

    /// Append one manifest line and sync it.
    pub fn append(&self, rec: &UnitRecord) -> Result<()> {
        let path = self.manifest();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        // A line cut by a crash must not glue onto the next one.
        let mut line = String::from("\n");
        line.push_str(&serde_json::to_string(rec).expect("unit record serializes"));
        line.push('\n');
        f.write_all(line.as_bytes()).at(&path)?;
        f.sync_data().at(&path)
    }

    pub fn load(&self, rec: &UnitRecord) -> Result<Vec<RgbImage>> {
        let path = self.units_dir().join(&rec.file);
        let bytes = std::fs::read(&path).at(&path)?;
        if crc32c::crc32c(&bytes) != rec.crc {
            return Err(Error::invalid(
                Location::file(&path).episode(rec.episode),
                "unit file does not match its manifest checksum (delete it and run with --resume)",
            ));
        }
        decode_unit(&bytes, &path)
    }
}

fn encode_unit(frames: &[RgbImage]) -> Vec<u8> {
    let (w, h) = frames
        .first()
        .map(|f| (f.width(), f.height()))
        .unwrap_or((0, 0));
    let mut out = Vec::with_capacity(20 + frames.len() * (w * h * 3) as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&w.to_le_bytes());
    for f in frames {
        out.extend_from_slice(f.as_raw());
    }
    out
}

fn decode_unit(bytes: &[u8], path: &Path) -> Result<Vec<RgbImage>> {
    let bad = || Error::invalid(Location::file(path), "not a vadapt unit file");
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(bad());
    }
    let u = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let (n, h, w) = (u(8) as usize, u(12), u(16));
    let per = (h * w * 3) as usize;
    if bytes.len() != 20 + n * per {
        return Err(bad());
    }
    (0..n)
        .map(|i| {
            RgbImage::from_raw(w, h, bytes[20 + i * per..20 + (i + 1) * per].to_vec())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_and_cut_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let wd = WorkDir::new(dir.path());
        wd.create().unwrap();
        let frames: Vec<RgbImage> = (0..3)
            .map(|i| RgbImage::from_fn(4, 2, |x, y| image::Rgb([i, x as u8, y as u8])))
            .collect();
        let rec = wd.save(7, "sim", &frames).unwrap();
        // A torn line from a crash.
        std::fs::OpenOptions::new()
            .append(true)
            .open(wd.manifest())
            .unwrap()
            .write_all(b"{\"episode\": 8, \"tar")
            .unwrap();
        let done = wd.finished().unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(wd.load(&done[&(7, "sim".to_string())]).unwrap(), frames);
        assert_eq!(rec.file, "ep00000007_sim.bin");
    }
}
