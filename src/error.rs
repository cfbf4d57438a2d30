//! The library's one error type. Every variant carries a [`Location`] so a message reads like
//! `episode 12, frame 34, field "action" (data/chunk-000/file-000.parquet): value is NaN`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where something went wrong: the file, and where known the episode, frame and field.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Location {
    pub path: Option<PathBuf>,
    pub episode: Option<u64>,
    pub frame: Option<u64>,
    pub field: Option<String>,
}

impl Location {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self {
            path: Some(path.as_ref().to_path_buf()),
            ..Self::default()
        }
    }
    pub fn episode(mut self, episode: u64) -> Self {
        self.episode = Some(episode);
        self
    }
    pub fn frame(mut self, frame: u64) -> Self {
        self.frame = Some(frame);
        self
    }
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(e) = self.episode {
            parts.push(format!("episode {e}"));
        }
        if let Some(fr) = self.frame {
            parts.push(format!("frame {fr}"));
        }
        if let Some(field) = &self.field {
            parts.push(format!("field {field:?}"));
        }
        let head = parts.join(", ");
        match (&self.path, head.is_empty()) {
            (Some(p), true) => write!(f, "{}", p.display()),
            (Some(p), false) => write!(f, "{head} ({})", p.display()),
            (None, false) => write!(f, "{head}"),
            (None, true) => write!(f, "<unknown location>"),
        }
    }
}

/// The message of each variant carries the text of its cause (an [`std::io::Error`], a candle error), so the
/// error reports no separate `source()`: a reporter that prints the whole chain (`anyhow`'s `{:#}`, as the CLI
/// does) would otherwise print the cause twice ("x.mp4: video file not found: video file not found").
#[derive(Debug)]
pub enum Error {
    /// A file could not be read, written, renamed or created.
    Io {
        loc: Location,
        source: std::io::Error,
    },

    /// Input data is malformed: bad CRC, wrong shape, missing key, truncated record, NaN where not allowed, ...
    InvalidData { loc: Location, message: String },

    /// Valid input that vadapt does not (yet) handle: an unknown codec, a model config value, a feature dtype.
    Unsupported { loc: Location, message: String },

    /// A configuration file or command-line value is wrong. `loc.field` names the key.
    Config { loc: Location, message: String },

    /// Decoding or encoding video through FFmpeg failed.
    Video { loc: Location, message: String },

    /// A model directory is incomplete or inconsistent (missing tensor, wrong shape, config mismatch).
    Model { loc: Location, message: String },

    /// Reading or writing parquet/arrow failed.
    Table { loc: Location, message: String },

    /// A tensor operation failed (shape mismatch inside a model, out of memory, device error).
    Tensor(candle_core::Error),

    /// The run was cancelled (Ctrl-C) or a sibling stage failed first.
    Cancelled(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { loc, source } => write!(f, "{loc}: {source}"),
            Error::InvalidData { loc, message } => write!(f, "{loc}: {message}"),
            Error::Unsupported { loc, message } => write!(f, "{loc}: unsupported: {message}"),
            Error::Config { loc, message } => write!(f, "{loc}: bad config: {message}"),
            Error::Video { loc, message } => write!(f, "{loc}: video: {message}"),
            Error::Model { loc, message } => write!(f, "{loc}: model: {message}"),
            Error::Table { loc, message } => write!(f, "{loc}: parquet: {message}"),
            Error::Tensor(e) => write!(f, "tensor: {e}"),
            Error::Cancelled(why) => write!(f, "cancelled: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Tensor(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(source: std::io::Error, path: impl AsRef<Path>) -> Self {
        Error::Io {
            loc: Location::file(path),
            source,
        }
    }
    pub fn invalid(loc: Location, message: impl Into<String>) -> Self {
        Error::InvalidData {
            loc,
            message: message.into(),
        }
    }
    pub fn unsupported(loc: Location, message: impl Into<String>) -> Self {
        Error::Unsupported {
            loc,
            message: message.into(),
        }
    }
    pub fn config(loc: Location, message: impl Into<String>) -> Self {
        Error::Config {
            loc,
            message: message.into(),
        }
    }
    pub fn video(loc: Location, message: impl Into<String>) -> Self {
        Error::Video {
            loc,
            message: message.into(),
        }
    }
    pub fn model(loc: Location, message: impl Into<String>) -> Self {
        Error::Model {
            loc,
            message: message.into(),
        }
    }
    pub fn table(loc: Location, message: impl ToString) -> Self {
        let message = message.to_string();
        // parquet's own errors begin "Parquet error: ", and this variant's text already says "parquet: ".
        let message = match message.strip_prefix("Parquet error: ") {
            Some(rest) => rest.to_string(),
            None => message,
        };
        Error::Table { loc, message }
    }

    /// The location this error carries, if any.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Error::Io { loc, .. }
            | Error::InvalidData { loc, .. }
            | Error::Unsupported { loc, .. }
            | Error::Config { loc, .. }
            | Error::Video { loc, .. }
            | Error::Model { loc, .. }
            | Error::Table { loc, .. } => Some(loc),
            Error::Tensor(_) | Error::Cancelled(_) => None,
        }
    }

    /// Fill in the episode of a location that does not name one yet (readers that work per file
    /// learn the episode from their caller).
    pub fn in_episode(mut self, episode: u64) -> Self {
        if let Some(loc) = self.location_mut() {
            loc.episode.get_or_insert(episode);
        }
        self
    }

    fn location_mut(&mut self) -> Option<&mut Location> {
        match self {
            Error::Io { loc, .. }
            | Error::InvalidData { loc, .. }
            | Error::Unsupported { loc, .. }
            | Error::Config { loc, .. }
            | Error::Video { loc, .. }
            | Error::Model { loc, .. }
            | Error::Table { loc, .. } => Some(loc),
            Error::Tensor(_) | Error::Cancelled(_) => None,
        }
    }
}

/// Attach a path to `std::io::Result`s: `fs::read(p).at(p)?`.
pub trait IoResultExt<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoResultExt<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(e, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_reads_like_a_sentence() {
        let loc = Location::file("data/chunk-000/file-000.parquet")
            .episode(12)
            .frame(34)
            .field("action");
        assert_eq!(
            loc.to_string(),
            "episode 12, frame 34, field \"action\" (data/chunk-000/file-000.parquet)"
        );
        assert_eq!(Location::file("x.mp4").to_string(), "x.mp4");
        let e = Error::invalid(Location::file("a.tfrecord"), "bad crc").in_episode(3);
        assert_eq!(e.to_string(), "episode 3 (a.tfrecord): bad crc");
    }

    /// Printed with its whole chain (the CLI prints `{:#}`), each error says its cause once (issue 19:
    /// "video file not found: video file not found").
    #[test]
    fn the_chain_says_the_cause_once() {
        let chain = |e: Error| format!("{:#}", anyhow::Error::new(e));
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "video file not found");
        assert_eq!(
            chain(Error::io(missing, "x.mp4").in_episode(2)),
            "episode 2 (x.mp4): video file not found"
        );
        let tensor: Error = candle_core::Error::Msg("shape mismatch".into()).into();
        assert_eq!(chain(tensor), "tensor: shape mismatch");
        let kinds = [
            (Error::invalid(Location::file("a"), "m"), "a: m"),
            (
                Error::unsupported(Location::file("a"), "m"),
                "a: unsupported: m",
            ),
            (Error::config(Location::file("a"), "m"), "a: bad config: m"),
            (Error::video(Location::file("a"), "m"), "a: video: m"),
            (Error::model(Location::file("a"), "m"), "a: model: m"),
            (Error::table(Location::file("a"), "m"), "a: parquet: m"),
            (Error::Cancelled("m".into()), "cancelled: m"),
        ];
        for (e, want) in kinds {
            assert_eq!(chain(e), want);
        }
        let footer = Error::table(
            Location::file("a"),
            "Parquet error: Invalid Parquet file. Corrupt footer",
        );
        assert_eq!(
            chain(footer),
            "a: parquet: Invalid Parquet file. Corrupt footer"
        );
    }
}
