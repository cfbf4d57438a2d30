//! Procedural LanguageTable-like episodes (`vadapt sample-data`): a board with 4 to 8 coloured blocks (cube, star,
//! moon, pentagon, circle), a round end effector that approaches one block and pushes it towards another,
//! and the instruction saying so. Every episode is rendered twice from the same motion:
//! `sim` (flat colours, hard edges, like the LanguageTable simulator) and `real` (board texture, a
//! lighting gradient, soft shadows, slight blur, colour cast and sensor noise), and optionally a third time in a
//! named style ([`styles`]).
//!
//! * [`world`]: the board, the blocks and the motion of one push;
//! * `render`: the two renderings of a frame;
//! * [`styles`]: procedural visual styles of the sim rendering;
//! * [`dataset`]: features, [`Episode`](crate::episode::Episode)s and the episode generator that the LeRobot and
//!   RLDS writers consume.
//!
//! Everything is a function of (seed, episode index): same seed, same bytes.

pub mod dataset;
mod render;
pub mod styles;
pub mod world;

use image::RgbImage;
use rayon::prelude::*;

pub use dataset::{
    features, features_with, parse_size, to_episode, SampleGenerator, SampleOptions, FPS, REAL_KEY,
    SIM_KEY, STYLED_KEY,
};
pub use styles::Style;
pub use world::{Block, Shape, BOARD};

use crate::error::Result;
use render::Scene;

/// One generated episode: the motion and both renderings.
#[derive(Debug, Clone)]
pub struct SampleEpisode {
    pub task: String,
    pub blocks: Vec<Block>,
    /// Index into `blocks` of the pushed block and of the block it is pushed towards.
    pub pushed: usize,
    pub target: usize,
    /// Effector centre at every frame (the state).
    pub effector: Vec<[f32; 2]>,
    pub sim: Vec<RgbImage>,
    pub real: Vec<RgbImage>,
    /// The sim rendering in a named style (its name is then part of `task`), when asked for.
    pub styled: Option<Vec<RgbImage>>,
}

/// Generate the motion of episode `index` (`frames` >= 2) and render it at `size`.
pub fn generate(seed: u64, index: u64, frames: usize, size: (u32, u32)) -> Result<SampleEpisode> {
    let world::PushMotion {
        task,
        blocks,
        pushed,
        target,
        effector,
    } = world::plan_push(seed, index, frames)?;

    let scene = Scene::new(seed, index, size);
    let sim: Vec<RgbImage> = (0..frames)
        .into_par_iter()
        .map(|t| scene.render(&blocks, effector[t], t, false))
        .collect();
    let real: Vec<RgbImage> = (0..frames)
        .into_par_iter()
        .map(|t| scene.render(&blocks, effector[t], t, true))
        .collect();
    Ok(SampleEpisode {
        task,
        blocks,
        pushed,
        target,
        effector,
        sim,
        real,
        styled: None,
    })
}

/// The style of episode `index` in a styled corpus: uniform over [`Style::ALL`], fixed by (seed, index).
pub fn style_of(seed: u64, index: u64) -> Style {
    let k = crate::rng::derive_seed(seed, index, "style", 0) % Style::ALL.len() as u64;
    Style::ALL[k as usize]
}

/// Add the styled rendering to a generated episode and name the style in its task.
pub fn add_style(s: &mut SampleEpisode, style: Style) {
    s.styled = Some(s.sim.par_iter().map(|f| style.apply(f)).collect());
    s.task = style.prompt(&s.task);
}
