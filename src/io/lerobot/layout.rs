//! Path templates of a LeRobot dataset, under the names lerobot gives them (`datasets/utils.py`),
//! and a small formatter for their Python-style `{name}` / `{name:03d}` placeholders.

use std::path::Path;

use crate::error::{Error, Location, Result};
use crate::io::stays_inside_root;

/// v3.0 version string written to `info.json` (`dataset_metadata.py: CODEBASE_VERSION`).
pub const CODEBASE_VERSION: &str = "v3.0";
/// The older layout we still read.
pub const LEGACY_CODEBASE_VERSION: &str = "v2.1";

/// Max number of files per chunk directory.
pub const DEFAULT_CHUNK_SIZE: u64 = 1000;
/// Data parquet files roll over at this size.
pub const DEFAULT_DATA_FILE_SIZE_IN_MB: f64 = 100.0;
/// Video files roll over at this size.
pub const DEFAULT_VIDEO_FILE_SIZE_IN_MB: f64 = 200.0;

pub const INFO_PATH: &str = "meta/info.json";
pub const STATS_PATH: &str = "meta/stats.json";
pub const EPISODES_DIR: &str = "meta/episodes";
pub const DATA_DIR: &str = "data";
pub const VIDEO_DIR: &str = "videos";
pub const CHUNK_FILE_PATTERN: &str = "chunk-{chunk_index:03d}/file-{file_index:03d}";
pub const DEFAULT_TASKS_PATH: &str = "meta/tasks.parquet";
pub const DEFAULT_EPISODES_PATH: &str =
    "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet";
pub const DEFAULT_DATA_PATH: &str = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet";
pub const DEFAULT_VIDEO_PATH: &str =
    "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4";

/// v2.1 (one file per episode).
pub const LEGACY_EPISODES_PATH: &str = "meta/episodes.jsonl";
pub const LEGACY_EPISODES_STATS_PATH: &str = "meta/episodes_stats.jsonl";
pub const LEGACY_TASKS_PATH: &str = "meta/tasks.jsonl";
pub const LEGACY_DATA_PATH: &str =
    "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet";
pub const LEGACY_VIDEO_PATH: &str =
    "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4";

/// A placeholder value.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Int(u64),
    Str(&'a str),
}

/// Fill a lerobot path template: `{name}` and `{name:0Nd}` placeholders (the only forms lerobot uses).
/// `field` names the info.json key the template came from, for errors. The template and the path it gives must
/// stay inside the dataset root (`io::stays_inside_root`).
pub fn format_path(template: &str, args: &[(&str, Arg<'_>)], field: &str) -> Result<String> {
    let bad = |m: String| Error::invalid(Location::file(INFO_PATH).field(field), m);
    if !stays_inside_root(Path::new(template)) {
        return Err(bad(format!(
            "template {template:?} leads outside the dataset root"
        )));
    }
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| bad(format!("unclosed '{{' in {template:?}")))?
            + open;
        let spec = &rest[open + 1..close];
        let (name, fmt) = spec.split_once(':').unwrap_or((spec, ""));
        let value = args
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| bad(format!("unknown placeholder {{{name}}} in {template:?}")))?;
        match (value, fmt) {
            (Arg::Str(s), "") => out.push_str(s),
            (Arg::Int(i), "") => out.push_str(&i.to_string()),
            (Arg::Int(i), f) if f.ends_with('d') => {
                let width: usize = f[..f.len() - 1]
                    .trim_start_matches('0')
                    .parse()
                    .unwrap_or(0);
                out.push_str(&format!("{i:0width$}"));
            }
            _ => {
                return Err(bad(format!(
                    "unsupported format {{{spec}}} in {template:?}"
                )))
            }
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    // A placeholder value (a camera key from info.json) can lead outside as well.
    if !stays_inside_root(Path::new(&out)) {
        return Err(bad(format!(
            "template {template:?} resolves to {out:?}, outside the dataset root"
        )));
    }
    Ok(out)
}

/// `data/chunk-XXX/file-YYY.parquet` for a v3.0 `data_path` template.
pub fn data_file(template: &str, chunk_index: u64, file_index: u64) -> Result<String> {
    format_path(
        template,
        &[
            ("chunk_index", Arg::Int(chunk_index)),
            ("file_index", Arg::Int(file_index)),
        ],
        "data_path",
    )
}

/// `videos/<key>/chunk-XXX/file-YYY.mp4` for a v3.0 `video_path` template.
pub fn video_file(
    template: &str,
    video_key: &str,
    chunk_index: u64,
    file_index: u64,
) -> Result<String> {
    format_path(
        template,
        &[
            ("video_key", Arg::Str(video_key)),
            ("chunk_index", Arg::Int(chunk_index)),
            ("file_index", Arg::Int(file_index)),
        ],
        "video_path",
    )
}

/// `meta/episodes/chunk-XXX/file-YYY.parquet`.
pub fn episodes_file(chunk_index: u64, file_index: u64) -> String {
    format!("meta/episodes/chunk-{chunk_index:03}/file-{file_index:03}.parquet")
}

/// lerobot's `update_chunk_file_indices`: the next file, moving to the next chunk after `chunks_size` files.
pub fn next_chunk_file(chunk_index: u64, file_index: u64, chunks_size: u64) -> (u64, u64) {
    if file_index + 1 >= chunks_size {
        (chunk_index + 1, 0)
    } else {
        (chunk_index, file_index + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_format_like_python() {
        assert_eq!(
            data_file(DEFAULT_DATA_PATH, 0, 12).unwrap(),
            "data/chunk-000/file-012.parquet"
        );
        assert_eq!(
            video_file(DEFAULT_VIDEO_PATH, "observation.images.rgb", 1, 2).unwrap(),
            "videos/observation.images.rgb/chunk-001/file-002.mp4"
        );
        let legacy = format_path(
            LEGACY_VIDEO_PATH,
            &[
                ("episode_chunk", Arg::Int(0)),
                ("video_key", Arg::Str("cam")),
                ("episode_index", Arg::Int(7)),
            ],
            "video_path",
        )
        .unwrap();
        assert_eq!(legacy, "videos/chunk-000/cam/episode_000007.mp4");
        assert_eq!(
            episodes_file(0, 3),
            "meta/episodes/chunk-000/file-003.parquet"
        );
        assert!(format_path("{nope}", &[], "data_path").is_err());
        assert_eq!(next_chunk_file(0, 998, 1000), (0, 999));
        assert_eq!(next_chunk_file(0, 999, 1000), (1, 0));
        assert_eq!(next_chunk_file(0, 0, 1), (1, 0));
    }
}
