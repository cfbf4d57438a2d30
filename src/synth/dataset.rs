//! Generated episodes as a dataset: the camera keys and features of the sample data, the [`Episode`] of a
//! [`SampleEpisode`] (LanguageTable columns plus LeRobot's bookkeeping columns), and [`SampleGenerator`], which
//! yields episodes one at a time for the LeRobot and RLDS writers (`vadapt sample-data`).
//!
//! State = effector position; action = the next position minus this one
//! (so `state[t] + action[t] = state[t+1] = effector_target_translation[t]`; the last action is zero).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::{add_style, generate, style_of, SampleEpisode};
use crate::episode::{Episode, EpisodeIndex, Feature, Features, Frames, Provenance};
use crate::error::{Error, Location, Result};
use crate::io::lerobot::writer::default_features;

/// LanguageTable's control rate.
pub const FPS: f64 = 10.0;
/// Camera keys of the two renderings.
pub const SIM_KEY: &str = "observation.images.sim";
pub const REAL_KEY: &str = "observation.images.real";
/// Camera key of the styled rendering (`--styles`; see `synth::styles`).
pub const STYLED_KEY: &str = "observation.images.styled";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    pub episodes: usize,
    pub frames: usize,
    pub seed: u64,
    /// (height, width) of the renderings.
    pub size: (u32, u32),
    /// Add a third camera, [`STYLED_KEY`]: each episode in one of [`Style::ALL`](super::Style::ALL), named in its task.
    pub styled: bool,
    /// Add [`STYLED_KEY`] in the held-out appearances instead ([`Style::HELD_OUT`](super::Style::HELD_OUT), episode
    /// `i` in style `i % 3`, named in its task): evaluation data in looks no demo model saw.
    pub held_out: bool,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            episodes: 4,
            frames: 30,
            seed: 0,
            size: (360, 640),
            styled: false,
            held_out: false,
        }
    }
}

/// Parse `HxW` (e.g. `360x640`).
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let bad = || {
        Error::config(
            Location::none().field("size"),
            format!("{s:?} is not HxW (e.g. 360x640)"),
        )
    };
    let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (h, w): (u32, u32) = (
        h.trim().parse().map_err(|_| bad())?,
        w.trim().parse().map_err(|_| bad())?,
    );
    if h < 8 || w < 8 || h > 4096 || w > 4096 {
        return Err(Error::config(
            Location::none().field("size"),
            format!("{h}x{w}: each side must be 8..=4096"),
        ));
    }
    Ok((h, w))
}

fn pairs(values: &[[f32; 2]]) -> Result<ArrayRef> {
    let flat: Vec<f32> = values.iter().flatten().copied().collect();
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, true)),
        2,
        Arc::new(Float32Array::from(flat)),
        None,
    )
    .map_err(|e| Error::table(Location::none(), e))?;
    Ok(Arc::new(list))
}

/// The features of sample episodes (LeRobot `info.json` style; cameras as video).
pub fn features(size: (u32, u32)) -> Features {
    features_with(size, false)
}

/// [`features`], plus the styled camera when `styled`.
pub fn features_with(size: (u32, u32), styled: bool) -> Features {
    let mut f = Features::new();
    let video = Feature {
        dtype: "video".into(),
        shape: vec![size.0 as usize, size.1 as usize, 3],
        names: Some(serde_json::json!(["height", "width", "channels"])),
        info: None,
    };
    f.insert(SIM_KEY.into(), video.clone());
    if styled {
        f.insert(STYLED_KEY.into(), video.clone());
    }
    f.insert(REAL_KEY.into(), video);
    let xy = Some(serde_json::json!(["x", "y"]));
    for k in [
        "observation.state",
        "observation.effector_target_translation",
        "action",
    ] {
        f.insert(
            k.into(),
            Feature {
                dtype: "float32".into(),
                shape: vec![2],
                names: xy.clone(),
                info: None,
            },
        );
    }
    f.insert(
        "next.reward".into(),
        Feature {
            dtype: "float32".into(),
            shape: vec![1],
            names: None,
            info: None,
        },
    );
    for k in ["is_first", "is_last", "is_terminal"] {
        f.insert(
            k.into(),
            Feature {
                dtype: "bool".into(),
                shape: vec![1],
                names: None,
                info: None,
            },
        );
    }
    f.extend(default_features());
    f
}

/// Turn a generated episode into an [`Episode`]: cameras `sim` and `real`, LanguageTable columns, and
/// LeRobot's bookkeeping columns (`first_index`: global index of its first frame).
pub fn to_episode(
    s: &SampleEpisode,
    index: u64,
    first_index: i64,
    task_index: i64,
) -> Result<Episode> {
    let n = s.effector.len();
    let mut action: Vec<[f32; 2]> = s
        .effector
        .windows(2)
        .map(|p| [p[1][0] - p[0][0], p[1][1] - p[0][1]])
        .collect();
    action.push([0.0, 0.0]);
    // The commanded set-point: where the effector is sent next (state + action).
    let target: Vec<[f32; 2]> = s
        .effector
        .iter()
        .zip(&action)
        .map(|(e, a)| [e[0] + a[0], e[1] + a[1]])
        .collect();
    let last: Vec<bool> = (0..n).map(|i| i + 1 == n).collect();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("observation.state", pairs(&s.effector)?),
        ("observation.effector_target_translation", pairs(&target)?),
        ("action", pairs(&action)?),
        // Success on the last step: the block reached its goal.
        (
            "next.reward",
            Arc::new(Float32Array::from(
                last.iter()
                    .map(|&l| if l { 1.0 } else { 0.0 })
                    .collect::<Vec<f32>>(),
            )),
        ),
        (
            "is_first",
            Arc::new(BooleanArray::from(
                (0..n).map(|i| i == 0).collect::<Vec<_>>(),
            )),
        ),
        ("is_last", Arc::new(BooleanArray::from(last.clone()))),
        ("is_terminal", Arc::new(BooleanArray::from(last))),
        (
            "timestamp",
            Arc::new(Float32Array::from(
                (0..n).map(|i| (i as f64 / FPS) as f32).collect::<Vec<_>>(),
            )),
        ),
        (
            "frame_index",
            Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
        ),
        (
            "episode_index",
            Arc::new(Int64Array::from(vec![index as i64; n])),
        ),
        (
            "index",
            Arc::new(Int64Array::from(
                (first_index..first_index + n as i64).collect::<Vec<_>>(),
            )),
        ),
        (
            "task_index",
            Arc::new(Int64Array::from(vec![task_index; n])),
        ),
    ];
    let schema = Schema::new(
        cols.iter()
            .map(|(k, a)| Field::new(*k, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    );
    let columns = RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|c| c.1).collect())
        .map_err(|e| Error::table(Location::none().episode(index), e))?;
    let mut cameras = BTreeMap::new();
    cameras.insert(SIM_KEY.to_string(), Frames::from_images(s.sim.clone()));
    cameras.insert(REAL_KEY.to_string(), Frames::from_images(s.real.clone()));
    if let Some(styled) = &s.styled {
        cameras.insert(STYLED_KEY.to_string(), Frames::from_images(styled.clone()));
    }
    Ok(Episode {
        index: EpisodeIndex(index),
        task: s.task.clone(),
        fps: FPS,
        cameras,
        columns,
        episode_columns: Default::default(),
        provenance: Provenance {
            source: "vadapt sample-data".into(),
            format: "sample".into(),
            source_episode_index: index,
        },
    })
}

/// Generates episodes 0..episodes one at a time, keeping the task table for `task_index`.
#[derive(Debug)]
pub struct SampleGenerator {
    pub options: SampleOptions,
    next: u64,
    rows: i64,
    tasks: Vec<String>,
}

impl SampleGenerator {
    pub fn new(options: SampleOptions) -> Self {
        Self {
            options,
            next: 0,
            rows: 0,
            tasks: Vec::new(),
        }
    }
    /// Tasks in order of first appearance (`task_index` order).
    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }
}

impl Iterator for SampleGenerator {
    type Item = Result<Episode>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next as usize >= self.options.episodes {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let o = self.options;
        Some(generate(o.seed, index, o.frames, o.size).and_then(|mut s| {
            if o.held_out {
                let held_out = &super::Style::HELD_OUT;
                add_style(&mut s, held_out[index as usize % held_out.len()]);
            } else if o.styled {
                add_style(&mut s, style_of(o.seed, index));
            }
            let task_index = match self.tasks.iter().position(|t| *t == s.task) {
                Some(i) => i,
                None => {
                    self.tasks.push(s.task.clone());
                    self.tasks.len() - 1
                }
            } as i64;
            let ep = to_episode(&s, index, self.rows, task_index)?;
            self.rows += ep.len() as i64;
            Ok(ep)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::Style;

    /// Held-out evaluation data: every episode gets the styled camera in a held-out style (cycling), named in its
    /// task, while its motion, columns and `sim` / `real` renderings are exactly those of the unstyled episode.
    #[test]
    fn held_out_styles_cycle_and_leave_the_rest_unchanged() {
        let plain = SampleOptions {
            episodes: 4,
            frames: 3,
            seed: 5,
            size: (24, 40),
            ..Default::default()
        };
        let held = SampleOptions {
            held_out: true,
            ..plain
        };
        let pairs = SampleGenerator::new(plain).zip(SampleGenerator::new(held));
        for (i, (a, b)) in pairs.enumerate() {
            let (a, b) = (a.unwrap(), b.unwrap());
            let style = Style::HELD_OUT[i % Style::HELD_OUT.len()];
            assert!(!Style::ALL.contains(&style));
            assert_eq!(b.task, style.prompt(&a.task), "episode {i}");
            for key in [SIM_KEY, REAL_KEY] {
                assert_eq!(
                    a.cameras[key].decode().unwrap(),
                    b.cameras[key].decode().unwrap(),
                    "episode {i} {key}"
                );
            }
            let sim = a.cameras[SIM_KEY].decode().unwrap();
            let styled = b.cameras[STYLED_KEY].decode().unwrap();
            let want: Vec<_> = sim.iter().map(|f| style.apply(f)).collect();
            assert_eq!(styled, want, "episode {i}");
            assert!(!a.cameras.contains_key(STYLED_KEY));
            for name in ["observation.state", "action"] {
                assert_eq!(
                    a.columns.column_by_name(name).unwrap().as_ref(),
                    b.columns.column_by_name(name).unwrap().as_ref()
                );
            }
        }
    }
}
