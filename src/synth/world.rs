//! The board of a push episode and what moves on it: blocks of five shapes and five colours, the round end
//! effector, and the motion of one push (approach along a curve, then push in a straight line).
//!
//! World units are metres on a 0.64 x 0.36 board (1 mm per pixel at the native 360x640); `x` to the
//! right, `y` down the image.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Location, Result};

/// Board size in world units (metres).
pub const BOARD: [f32; 2] = [0.64, 0.36];

pub(super) const BLOCK_RADIUS: f32 = 0.022;
pub(super) const EFFECTOR_RADIUS: f32 = 0.014;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Cube,
    Star,
    Moon,
    Pentagon,
    Circle,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Cube,
        Shape::Star,
        Shape::Moon,
        Shape::Pentagon,
        Shape::Circle,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Shape::Cube => "cube",
            Shape::Star => "star",
            Shape::Moon => "moon",
            Shape::Pentagon => "pentagon",
            Shape::Circle => "circle",
        }
    }
}

/// (name, sim colour, real colour: duller, as printed plastic under a warm lamp).
pub(super) const COLOURS: [(&str, [u8; 3], [u8; 3]); 5] = [
    ("red", [220, 40, 40], [176, 52, 48]),
    ("blue", [40, 80, 220], [48, 78, 160]),
    ("green", [40, 170, 60], [62, 140, 70]),
    ("yellow", [235, 200, 30], [200, 170, 60]),
    ("purple", [140, 60, 190], [118, 70, 150]),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub shape: Shape,
    pub colour: usize,
    /// Centre at every frame.
    pub path: Vec<[f32; 2]>,
}

impl Block {
    pub fn colour_name(&self) -> &'static str {
        COLOURS[self.colour].0
    }
    pub fn name(&self) -> String {
        format!("{} {}", self.colour_name(), self.shape.name())
    }
}

/// The motion of one episode: the blocks (each with its path), which block is pushed towards which, the
/// effector's path and the instruction saying so.
#[derive(Debug, Clone)]
pub(super) struct PushMotion {
    pub task: String,
    pub blocks: Vec<Block>,
    pub pushed: usize,
    pub target: usize,
    pub effector: Vec<[f32; 2]>,
}

pub(super) fn rng_for(seed: u64, episode: u64, stream: u64) -> ChaCha8Rng {
    // Distinct, well-mixed streams per (seed, episode, purpose).
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(episode.wrapping_mul(16).wrapping_add(stream));
    r
}

fn smoothstep(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Plan the push of episode `index` over `frames` (>= 2) frames.
pub(super) fn plan_push(seed: u64, index: u64, frames: usize) -> Result<PushMotion> {
    if frames < 2 {
        return Err(Error::config(
            Location::none().field("frames"),
            "an episode needs at least 2 frames",
        ));
    }
    let mut rng = rng_for(seed, index, 0);
    let n_blocks = rng.random_range(4..=8);
    // Place blocks with rejection sampling: no overlaps, away from the edges.
    let margin = 0.05;
    let mut centres: Vec<[f32; 2]> = Vec::new();
    let mut kinds: Vec<(Shape, usize)> = Vec::new();
    let mut tries = 0;
    while centres.len() < n_blocks && tries < 10_000 {
        tries += 1;
        let c = [
            rng.random_range(margin..BOARD[0] - margin),
            rng.random_range(margin..BOARD[1] - margin),
        ];
        if centres.iter().all(|&o| dist(o, c) > 4.0 * BLOCK_RADIUS) {
            let kind = (
                Shape::ALL[rng.random_range(0..Shape::ALL.len())],
                rng.random_range(0..COLOURS.len()),
            );
            if kinds.contains(&kind) {
                continue; // names must be unique for the instruction to be unambiguous
            }
            centres.push(c);
            kinds.push(kind);
        }
    }
    let n_blocks = centres.len();
    // Pushed block and target: the target far enough away that there is something to push.
    let pushed = rng.random_range(0..n_blocks);
    let mut target = (pushed + 1 + rng.random_range(0..n_blocks - 1)) % n_blocks;
    if dist(centres[pushed], centres[target]) < 6.0 * BLOCK_RADIUS {
        target = (0..n_blocks)
            .filter(|&i| i != pushed)
            .max_by(|&a, &b| {
                dist(centres[pushed], centres[a]).total_cmp(&dist(centres[pushed], centres[b]))
            })
            .unwrap_or(target);
    }
    let (b0, goal) = (centres[pushed], centres[target]);
    let d = {
        let l = dist(b0, goal).max(1e-6);
        [(goal[0] - b0[0]) / l, (goal[1] - b0[1]) / l]
    };
    let contact = BLOCK_RADIUS + EFFECTOR_RADIUS;
    // Push until the pushed block stops one block-width short of the target.
    let push_len = (dist(b0, goal) - 2.5 * BLOCK_RADIUS).max(0.0);
    let behind = [b0[0] - d[0] * contact, b0[1] - d[1] * contact];
    let start = [
        rng.random_range(margin..BOARD[0] - margin),
        rng.random_range(margin..BOARD[1] - margin),
    ];
    // Approach along a quadratic Bezier that bends sideways, then push in a straight line.
    let side = if rng.random::<bool>() { 1.0 } else { -1.0 };
    let mid = [
        (start[0] + behind[0]) / 2.0 - d[1] * 0.06 * side,
        (start[1] + behind[1]) / 2.0 + d[0] * 0.06 * side,
    ];
    let approach = (frames as f32 * 0.4).round().max(1.0) as usize;
    let mut effector = Vec::with_capacity(frames);
    let mut block_path = Vec::with_capacity(frames);
    for t in 0..frames {
        if t < approach {
            let s = smoothstep(t as f32 / approach as f32);
            let p = |k: usize| {
                (1.0 - s).powi(2) * start[k] + 2.0 * (1.0 - s) * s * mid[k] + s * s * behind[k]
            };
            effector.push([p(0), p(1)]);
            block_path.push(b0);
        } else {
            let s = smoothstep((t - approach) as f32 / (frames - 1 - approach).max(1) as f32);
            let e = [
                behind[0] + d[0] * push_len * s,
                behind[1] + d[1] * push_len * s,
            ];
            effector.push(e);
            // The block moves only when pushed: it stays in contact ahead of the effector.
            block_path.push([e[0] + d[0] * contact, e[1] + d[1] * contact]);
        }
    }
    let blocks: Vec<Block> = kinds
        .iter()
        .zip(&centres)
        .enumerate()
        .map(|(i, (&(shape, colour), &c))| Block {
            shape,
            colour,
            path: if i == pushed {
                block_path.clone()
            } else {
                vec![c; frames]
            },
        })
        .collect();
    let task = format!(
        "push the {} to the {}",
        blocks[pushed].name(),
        blocks[target].name()
    );
    Ok(PushMotion {
        task,
        blocks,
        pushed,
        target,
        effector,
    })
}
