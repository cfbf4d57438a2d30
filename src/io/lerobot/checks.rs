//! Cross-checks of one LeRobot episode's metadata: against itself (a video span that runs backwards, or that
//! does not hold the episode's rows), against its mp4 (a span past the video's end) and against the tasks table
//! (a `task_index` past it). Each runs when the episode is read, so `inspect`, `convert` and `augment` all see
//! it; a batch run skips and records the episode (`--strict` stops), where silently accepting it would write
//! another episode's frames or another task's text. Every error names the file, the episode, the field and both
//! values that disagree.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};

use super::meta::EpisodeMeta;
use crate::error::{Error, Location, Result};
use crate::io::video;

/// A v3.0 episode's span `[from_timestamp, to_timestamp)` of camera `key`'s mp4 must run forwards and hold its
/// `length` rows at `fps`, rounded to a frame (lerobot writes `to = from + length / fps`).
pub fn check_video_span(m: &EpisodeMeta, key: &str, fps: f64) -> Result<()> {
    let Some(v) = m.videos.get(key) else {
        return Ok(());
    };
    let loc = |f: &str| {
        Location::file(&m.table)
            .episode(m.episode_index)
            .field(format!("videos/{key}/{f}"))
    };
    let (from, to) = (v.from_timestamp, v.to_timestamp);
    if !(from.is_finite() && to.is_finite() && from >= 0.0) {
        return Err(Error::invalid(
            loc("from_timestamp"),
            format!("span [{from}, {to}) is not a range of non-negative seconds"),
        ));
    }
    if from >= to {
        return Err(Error::invalid(
            loc("from_timestamp"),
            format!(
                "from_timestamp {from:.4}s is not before to_timestamp {to:.4}s: the span runs backwards"
            ),
        ));
    }
    let rows_s = m.length as f64 / fps;
    let span = to - from;
    // Within a frame: the span rounds to the episode's frame count (a span one frame short would otherwise pass,
    // and its frames be read one frame late, the last from the next episode).
    if (span * fps).round() != m.length as f64 {
        return Err(Error::invalid(
            loc("to_timestamp"),
            format!(
                "span [{from:.4}, {to:.4}) lasts {span:.4}s ({:.1} frames at {fps} fps), but the episode has length \
                 {} rows ({rows_s:.4}s)",
                span * fps,
                m.length
            ),
        ));
    }
    Ok(())
}

/// A v3.0 episode's frames must lie inside the mp4 `path` (its duration from the container).
pub fn check_video_duration(m: &EpisodeMeta, key: &str, fps: f64, path: &Path) -> Result<()> {
    let Some(v) = m.videos.get(key) else {
        return Ok(());
    };
    let dur = video::probe(path)
        .map_err(|e| e.in_episode(m.episode_index))?
        .duration_s;
    let need = v.from_timestamp + m.length as f64 / fps;
    if need > dur + video::DEFAULT_TOLERANCE_S + 0.5 / fps {
        return Err(Error::invalid(
            Location::file(path)
                .episode(m.episode_index)
                .field(format!("videos/{key}/to_timestamp")),
            format!(
                "episode frames reach {need:.4}s (from_timestamp {:.4}s + {} frames at {fps} fps) but the video lasts {dur:.4}s",
                v.from_timestamp, m.length
            ),
        ));
    }
    Ok(())
}

/// Every `task_index` of an episode's rows must be a row of the tasks table `tasks_path`, and where the episodes
/// table lists the episode's tasks (`listed`, v3.0 and v2.1), its text one of them.
pub fn check_task_indices(
    rows: &RecordBatch,
    tasks: &BTreeMap<i64, String>,
    listed: &[String],
    data_path: &Path,
    episode: u64,
    tasks_path: &Path,
) -> Result<()> {
    let Some(col) = rows.column_by_name("task_index") else {
        return Ok(());
    };
    let loc = || {
        Location::file(data_path)
            .episode(episode)
            .field("task_index")
    };
    let col = arrow::compute::cast(col, &DataType::Int64).map_err(|e| Error::table(loc(), e))?;
    let bad = col
        .as_primitive::<Int64Type>()
        .iter()
        .enumerate()
        .find_map(|(row, v)| v.filter(|i| !tasks.contains_key(i)).map(|i| (row, i)));
    let Some((row, index)) = bad else {
        return check_task_texts(&col, tasks, listed, loc, tasks_path);
    };
    let table = tasks_path.display();
    let held = match (tasks.keys().next(), tasks.keys().next_back()) {
        (Some(lo), Some(hi)) => format!("{} tasks, task_index {lo}..={hi}", tasks.len()),
        _ => "no tasks".to_string(),
    };
    let past = tasks.keys().next_back().is_none_or(|hi| index > *hi);
    Err(Error::invalid(
        loc().frame(row as u64),
        if past {
            format!("task_index {index} is past the tasks table: {table} holds {held}")
        } else {
            format!("task_index {index} is not in the tasks table: {table} holds {held}")
        },
    ))
}

/// The text of every task_index the rows use must be among the tasks the episodes table lists for the episode.
fn check_task_texts(
    col: &arrow::array::ArrayRef,
    tasks: &BTreeMap<i64, String>,
    listed: &[String],
    loc: impl Fn() -> Location,
    tasks_path: &Path,
) -> Result<()> {
    if listed.is_empty() {
        return Ok(());
    }
    for (row, index) in col.as_primitive::<Int64Type>().iter().enumerate() {
        let Some(text) = index.and_then(|i| tasks.get(&i)) else {
            continue;
        };
        if !listed.contains(text) {
            return Err(Error::invalid(
                loc().frame(row as u64),
                format!(
                    "task_index {} is {text:?} in {}, but the episodes table lists this episode's tasks as {listed:?}",
                    index.unwrap_or_default(),
                    tasks_path.display()
                ),
            ));
        }
    }
    Ok(())
}
