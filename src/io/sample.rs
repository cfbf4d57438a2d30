//! Procedural LanguageTable-like episodes: a board with 4 to 8 coloured blocks (cube, star, moon,
//! pentagon, circle), a round end effector that approaches one block and pushes it towards another,
//! and the instruction saying so. Every episode is rendered twice from the same motion:
//! `sim` (flat colours, hard edges, like the LanguageTable simulator) and `real` (board texture, a
//! lighting gradient, soft shadows, slight blur, colour cast and sensor noise).
//!
//! World units are metres on a 0.64 x 0.36 board (1 mm per pixel at the native 360x640); `x` to the
//! right, `y` down the image. State = effector position; action = the next position minus this one
//! (so `state[t] + action[t] = state[t+1] = effector_target_translation[t]`; the last action is zero).
//! Everything is a function of (seed, episode index): same seed, same bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use image::{GrayImage, Luma, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_polygon_mut};
use imageproc::point::Point;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::episode::{Episode, EpisodeIndex, Feature, Features, Frames, Provenance};
use crate::error::{Error, Location, Result};
use crate::io::styles::Style;

/// Board size in world units (metres).
pub const BOARD: [f32; 2] = [0.64, 0.36];
/// LanguageTable's control rate.
pub const FPS: f64 = 10.0;
/// Camera keys of the two renderings.
pub const SIM_KEY: &str = "observation.images.sim";
pub const REAL_KEY: &str = "observation.images.real";
/// Camera key of the styled rendering (`--styles`; see `io::styles`).
pub const STYLED_KEY: &str = "observation.images.styled";

const BLOCK_RADIUS: f32 = 0.022;
const EFFECTOR_RADIUS: f32 = 0.014;

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
const COLOURS: [(&str, [u8; 3], [u8; 3]); 5] = [
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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    pub episodes: usize,
    pub frames: usize,
    pub seed: u64,
    /// (height, width) of the renderings.
    pub size: (u32, u32),
    /// Add a third camera, [`STYLED_KEY`]: each episode in one of [`Style::ALL`], named in its task.
    pub styled: bool,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            episodes: 4,
            frames: 30,
            seed: 0,
            size: (360, 640),
            styled: false,
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

fn rng_for(seed: u64, episode: u64, stream: u64) -> ChaCha8Rng {
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

/// Generate the motion of episode `index` (`frames` >= 2) and render it at `size`.
pub fn generate(seed: u64, index: u64, frames: usize, size: (u32, u32)) -> Result<SampleEpisode> {
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

/// The fixed camera and board of one episode.
struct Scene {
    size: (u32, u32),
    seed: u64,
    episode: u64,
    /// Per-pixel board colour of the real rendering (texture x lighting), f32 RGB.
    real_board: Vec<[f32; 3]>,
    cast: [f32; 3],
}

impl Scene {
    fn new(seed: u64, episode: u64, size: (u32, u32)) -> Self {
        let (h, w) = (size.0 as usize, size.1 as usize);
        let mut rng = rng_for(seed, episode, 1);
        // Texture: a few random low-frequency sinusoids (wood/felt-like grain) plus fine grain.
        let waves: Vec<(f32, f32, f32, f32)> = (0..6)
            .map(|i| {
                (
                    rng.random_range(-1.0..1.0f32),
                    rng.random_range(-1.0..1.0f32),
                    (2.0 + 6.0 * i as f32) * rng.random_range(0.8..1.2f32),
                    rng.random_range(0.0..6.3f32),
                )
            })
            .collect();
        let light = [
            rng.random_range(0.1..0.9f32),
            rng.random_range(-0.2..0.4f32),
        ];
        let base = [
            rng.random_range(150.0..185.0f32),
            rng.random_range(140.0..170.0f32),
            rng.random_range(120.0..150.0f32),
        ];
        let cast = [
            rng.random_range(1.0..1.08f32),
            1.0,
            rng.random_range(0.88..0.97f32),
        ];
        let mut real_board = Vec::with_capacity(h * w);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
                let tex: f32 = waves
                    .iter()
                    .map(|&(a, b, f, p)| ((a * u * 1.78 + b * v) * f + p).sin())
                    .sum::<f32>()
                    / 6.0;
                let lit = 1.1 - 0.45 * ((u - light[0]).powi(2) + (v - light[1]).powi(2)).sqrt();
                real_board.push([0, 1, 2].map(|k| (base[k] * (1.0 + 0.08 * tex)) * lit));
            }
        }
        Self {
            size,
            seed,
            episode,
            real_board,
            cast,
        }
    }

    fn to_px(&self, p: [f32; 2]) -> (f32, f32) {
        (
            p[0] / BOARD[0] * self.size.1 as f32,
            p[1] / BOARD[1] * self.size.0 as f32,
        )
    }

    /// Pixel radius of a world radius (the board keeps its aspect at the native size; other sizes scale x and y).
    fn radius_px(&self, r: f32) -> f32 {
        (r / BOARD[0] * self.size.1 as f32).min(r / BOARD[1] * self.size.0 as f32)
    }

    /// A 0/255 mask of one shape centred at `c` (pixels), drawn with imageproc.
    fn shape_mask(&self, mask: &mut GrayImage, shape: Shape, c: (f32, f32), r: f32) {
        let on = Luma([255u8]);
        let poly = |k: usize, radius: &dyn Fn(usize) -> f32, rot: f32| -> Vec<Point<i32>> {
            let mut pts: Vec<Point<i32>> = (0..k)
                .map(|i| {
                    let a = rot + i as f32 * std::f32::consts::TAU / k as f32;
                    Point::new(
                        (c.0 + radius(i) * a.cos()).round() as i32,
                        (c.1 + radius(i) * a.sin()).round() as i32,
                    )
                })
                .collect();
            pts.dedup();
            if pts.len() > 1 && pts.first() == pts.last() {
                pts.pop();
            }
            pts
        };
        let ci = (c.0.round() as i32, c.1.round() as i32);
        let ri = r.round().max(1.0) as i32;
        match shape {
            Shape::Cube => draw_polygon_mut(
                mask,
                &poly(4, &|_| r * 1.2, std::f32::consts::FRAC_PI_4),
                on,
            ),
            Shape::Pentagon => draw_polygon_mut(
                mask,
                &poly(5, &|_| r * 1.1, -std::f32::consts::FRAC_PI_2),
                on,
            ),
            Shape::Star => draw_polygon_mut(
                mask,
                &poly(
                    10,
                    &|i| if i % 2 == 0 { r * 1.25 } else { r * 0.55 },
                    -std::f32::consts::FRAC_PI_2,
                ),
                on,
            ),
            Shape::Circle => draw_filled_circle_mut(mask, ci, ri, on),
            Shape::Moon => {
                draw_filled_circle_mut(mask, ci, ri, on);
                let off = (
                    (c.0 + 0.5 * r).round() as i32,
                    (c.1 - 0.3 * r).round() as i32,
                );
                draw_filled_circle_mut(mask, off, (0.85 * r).round().max(1.0) as i32, Luma([0u8]));
            }
        }
    }

    fn render(&self, blocks: &[Block], effector: [f32; 2], t: usize, real: bool) -> RgbImage {
        let (h, w) = self.size;
        let r_block = self.radius_px(BLOCK_RADIUS);
        let r_eff = self.radius_px(EFFECTOR_RADIUS);
        // One mask per object; the effector is drawn last (on top).
        let mut layers: Vec<(GrayImage, [f32; 3], bool)> = Vec::new();
        for b in blocks {
            let mut m = GrayImage::new(w, h);
            self.shape_mask(&mut m, b.shape, self.to_px(b.path[t]), r_block);
            let (_, sim_c, real_c) = COLOURS[b.colour];
            layers.push((m, if real { real_c } else { sim_c }.map(f32::from), false));
        }
        let mut m = GrayImage::new(w, h);
        let ce = self.to_px(effector);
        draw_filled_circle_mut(
            &mut m,
            (ce.0.round() as i32, ce.1.round() as i32),
            r_eff.round().max(1.0) as i32,
            Luma([255u8]),
        );
        layers.push((
            m,
            if real {
                [95.0, 98.0, 104.0]
            } else {
                [80.0, 80.0, 85.0]
            },
            true,
        ));

        let mut img: Vec<[f32; 3]> = if real {
            self.real_board.clone()
        } else {
            vec![[205.0, 200.0, 185.0]; (h * w) as usize]
        };
        if real {
            // Soft shadows: each object's mask, blurred and shifted down-right, darkens what is below it.
            let shift = (r_block * 0.35).round().max(1.0) as i64;
            let sigma = (r_block * 0.3).max(0.6);
            for (mask, _, _) in &layers {
                let soft = imageproc::filter::gaussian_blur_f32(mask, sigma);
                for y in 0..h as i64 {
                    for x in 0..w as i64 {
                        let (sx, sy) = (x - shift, y - shift);
                        if sx < 0 || sy < 0 {
                            continue;
                        }
                        let a = soft.get_pixel(sx as u32, sy as u32)[0] as f32 / 255.0;
                        if a > 0.0 {
                            let px = &mut img[(y * w as i64 + x) as usize];
                            for v in px.iter_mut() {
                                *v *= 1.0 - 0.45 * a;
                            }
                        }
                    }
                }
            }
        }
        for (mask, colour, is_effector) in &layers {
            for (i, m) in mask.as_raw().iter().enumerate() {
                if *m == 0 {
                    continue;
                }
                let mut c = *colour;
                if real {
                    // Shading across the object: lit from the top left, plus the board's lighting falloff.
                    let (x, y) = ((i as u32 % w) as f32, (i as u32 / w) as f32);
                    let (cx, cy) = if *is_effector { ce } else { (x, y) };
                    let rim = if *is_effector {
                        1.0 + 0.15 * ((cx - x) + (cy - y)) / r_eff.max(1.0)
                    } else {
                        1.0
                    };
                    let lum = self.real_board[i].iter().sum::<f32>() / 480.0;
                    c = c.map(|v| v * rim * (0.75 + 0.3 * lum));
                }
                img[i] = c;
            }
        }
        let mut out = RgbImage::new(w, h);
        if real {
            let mut noise_rng = rng_for(self.seed, self.episode, 2 + 1000 * t as u64);
            let blurred = blur3(&img, w as usize, h as usize);
            for (i, px) in out.pixels_mut().enumerate() {
                let c = blurred[i];
                *px = Rgb([0, 1, 2].map(|k| {
                    (c[k] * self.cast[k]
                        + 3.0 * Distribution::<f32>::sample(&StandardNormal, &mut noise_rng))
                    .round()
                    .clamp(0.0, 255.0) as u8
                }));
            }
        } else {
            for (i, px) in out.pixels_mut().enumerate() {
                *px = Rgb(img[i].map(|v| v.round().clamp(0.0, 255.0) as u8));
            }
        }
        out
    }
}

/// A light [1 2 1]/4 x [1 2 1]/4 blur with replicated borders (the camera's slight defocus).
fn blur3(img: &[[f32; 3]], w: usize, h: usize) -> Vec<[f32; 3]> {
    let at = |x: isize, y: isize| {
        img[(y.clamp(0, h as isize - 1) as usize) * w + x.clamp(0, w as isize - 1) as usize]
    };
    let mut out = vec![[0.0; 3]; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut acc = [0.0f32; 3];
            for (dy, wy) in [(-1, 1.0), (0, 2.0), (1, 1.0)] {
                for (dx, wx) in [(-1, 1.0), (0, 2.0), (1, 1.0)] {
                    let p = at(x + dx, y + dy);
                    for k in 0..3 {
                        acc[k] += p[k] * wx * wy / 16.0;
                    }
                }
            }
            out[y as usize * w + x as usize] = acc;
        }
    }
    out
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
    f.insert(
        "timestamp".into(),
        Feature {
            dtype: "float32".into(),
            shape: vec![1],
            names: None,
            info: None,
        },
    );
    for k in ["frame_index", "episode_index", "index", "task_index"] {
        f.insert(
            k.into(),
            Feature {
                dtype: "int64".into(),
                shape: vec![1],
                names: None,
                info: None,
            },
        );
    }
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
            if o.styled {
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
