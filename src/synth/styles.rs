//! Procedural visual styles of the sample data, named in prompts ("push the red star to the blue cube, claymation
//! style"): the training corpus of the demo prior, which learns what a style looks like from text alone and knows
//! nothing of edges. A styled frame is computed from the flat `sim` rendering, whose board is one exact colour, so
//! every pixel is known to be board, object or outline.

use image::{Rgb, RgbImage};

/// The sim board colour (`synth::render`); everything else is an object or the effector.
const SIM_BOARD: [u8; 3] = [205, 200, 185];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Cartoon,
    Claymation,
    WoodenTable,
    Night,
    Sunset,
    Neon,
    Pastel,
    BlackAndWhite,
    Blueprint,
    Snowy,
    // Held out (`Style::HELD_OUT`): no demo model saw these.
    GreenFelt,
    MagentaLight,
    Spotlight,
}

impl Style {
    /// The styles of the styled corpus (`sample-data --styles`), which the demo prior learned. The order and count
    /// fix which style each corpus episode gets (`synth::style_of`), so existing corpora keep their bytes.
    pub const ALL: [Style; 10] = [
        Style::Cartoon,
        Style::Claymation,
        Style::WoodenTable,
        Style::Night,
        Style::Sunset,
        Style::Neon,
        Style::Pastel,
        Style::BlackAndWhite,
        Style::Blueprint,
        Style::Snowy,
    ];

    /// Appearances that no demo model and no corpus saw (`sample-data --held-out-styles`): the out-of-domain looks
    /// of the policy benchmark (scripts/policy_benchmark.sh). A new background (green felt), a new light colour
    /// (magenta) and new lighting (one spotlight, dark elsewhere), the kinds of change Isaac Lab's Cosmos
    /// augmentation study tested.
    pub const HELD_OUT: [Style; 3] = [Style::GreenFelt, Style::MagentaLight, Style::Spotlight];

    /// The words a prompt uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Style::Cartoon => "cartoon",
            Style::Claymation => "claymation",
            Style::WoodenTable => "wooden table",
            Style::Night => "night",
            Style::Sunset => "sunset",
            Style::Neon => "neon",
            Style::Pastel => "pastel",
            Style::BlackAndWhite => "black and white",
            Style::Blueprint => "blueprint",
            Style::Snowy => "snowy",
            Style::GreenFelt => "green felt",
            Style::MagentaLight => "magenta light",
            Style::Spotlight => "spotlight",
        }
    }

    pub fn from_name(name: &str) -> Option<Style> {
        Style::ALL
            .into_iter()
            .chain(Style::HELD_OUT)
            .find(|s| s.name() == name)
    }

    /// `task` with this style named, the way the styled corpus and the demo pipelines phrase it.
    pub fn prompt(self, task: &str) -> String {
        format!("{task}, {} style", self.name())
    }

    /// Render `sim` (one frame of the sim rendering) in this style.
    pub fn apply(self, sim: &RgbImage) -> RgbImage {
        let (w, h) = sim.dimensions();
        let at = |x: i64, y: i64| {
            sim.get_pixel(
                x.clamp(0, w as i64 - 1) as u32,
                y.clamp(0, h as i64 - 1) as u32,
            )
            .0
        };
        let board = |p: [u8; 3]| p == SIM_BOARD;
        // An outline pixel is an object pixel with a differently coloured 4-neighbour.
        let outline = |x: i64, y: i64| {
            let p = at(x, y);
            !board(p)
                && [(1, 0), (-1, 0), (0, 1), (0, -1)]
                    .iter()
                    .any(|(dx, dy)| at(x + dx, y + dy) != p)
        };
        let f = |p: [u8; 3]| p.map(f32::from);
        let saturate = |c: [f32; 3], k: f32| {
            let m = (c[0] + c[1] + c[2]) / 3.0;
            c.map(|v| m + (v - m) * k)
        };
        let scale = (w.min(h) as f32 / 24.0).max(1.0);
        let mut out = RgbImage::from_fn(w, h, |x, y| {
            let (xi, yi) = (x as i64, y as i64);
            let (xf, yf) = (x as f32 / scale, y as f32 / scale);
            let p = sim.get_pixel(x, y).0;
            let c = f(p);
            let is_board = board(p);
            let v: [f32; 3] = match self {
                Style::Cartoon => {
                    if is_board {
                        [255.0, 228.0, 130.0]
                    } else if outline(xi, yi) {
                        [20.0, 20.0, 20.0]
                    } else {
                        saturate(c, 1.5)
                    }
                }
                Style::Claymation => {
                    let blotch = 1.0
                        + 0.07
                            * ((xf * 0.7).sin() * (yf * 0.9 + 1.3).sin()
                                + (xf * 0.23 + yf * 0.31).sin());
                    if is_board {
                        [186.0, 118.0, 86.0].map(|v| v * blotch)
                    } else {
                        c.map(|v| v * 0.8 + 25.0).map(|v| v * blotch)
                    }
                }
                Style::WoodenTable => {
                    if is_board {
                        let grain = 0.82 + 0.18 * (yf * 1.7 + 2.5 * (xf * 0.12).sin()).sin();
                        [150.0, 98.0, 52.0].map(|v| v * grain)
                    } else {
                        c
                    }
                }
                Style::Night => [c[0] * 0.3 + 4.0, c[1] * 0.36 + 8.0, c[2] * 0.62 + 22.0],
                Style::Sunset => {
                    let t = y as f32 / h.max(1) as f32;
                    [
                        c[0] * (1.25 - 0.1 * t),
                        c[1] * (0.85 - 0.15 * t),
                        c[2] * (0.55 + 0.05 * t),
                    ]
                }
                Style::Neon => {
                    if is_board {
                        [12.0, 10.0, 30.0]
                    } else {
                        saturate(c, 1.7).map(|v| v * 1.2)
                    }
                }
                Style::Pastel => c.map(|v| v * 0.45 + 255.0 * 0.55),
                Style::BlackAndWhite => {
                    let g = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
                    [g, g, g]
                }
                Style::Blueprint => {
                    if is_board {
                        let grid =
                            (x as f32 % (6.0 * scale) < 1.0) || (y as f32 % (6.0 * scale) < 1.0);
                        if grid {
                            [48.0, 92.0, 170.0]
                        } else {
                            [28.0, 66.0, 140.0]
                        }
                    } else if outline(xi, yi) {
                        [235.0, 240.0, 255.0]
                    } else {
                        [70.0, 120.0, 200.0]
                    }
                }
                Style::Snowy => {
                    if is_board {
                        let speck =
                            (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)) % 23 == 0;
                        if speck {
                            [196.0, 206.0, 222.0]
                        } else {
                            [236.0, 240.0, 246.0]
                        }
                    } else {
                        c
                    }
                }
                Style::GreenFelt => {
                    if is_board {
                        // Felt: dark green with a fine fibre noise.
                        let fibre = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 17;
                        let v = 0.9 + 0.2 * fibre as f32 / 16.0;
                        [38.0, 98.0, 58.0].map(|c| c * v)
                    } else {
                        c
                    }
                }
                Style::MagentaLight => [c[0] * 1.15 + 10.0, c[1] * 0.6, c[2] * 1.1 + 10.0],
                Style::Spotlight => {
                    // One light at a third of the width, falling off to 20% at the far corners.
                    let (u, v) = (x as f32 / w as f32 - 0.35, y as f32 / h as f32 - 0.4);
                    let lit = 0.2 + 1.0 * (-(u * u * 3.16 + v * v) * 6.0).exp();
                    c.map(|v| v * lit)
                }
            };
            Rgb(v.map(|v| v.round().clamp(0.0, 255.0) as u8))
        });
        if self == Style::Neon {
            // Glow: the objects bleed light onto the dark board.
            let glow = box_blur(&out, (2.0 * scale) as i64);
            for (x, y, px) in out.enumerate_pixels_mut() {
                if board(sim.get_pixel(x, y).0) {
                    let g = glow.get_pixel(x, y).0;
                    px.0 = [0, 1, 2].map(|k| (px.0[k] as f32 + 0.8 * g[k] as f32).min(255.0) as u8);
                }
            }
        }
        if self == Style::Claymation {
            out = box_blur(&out, 1);
        }
        out
    }
}

/// A (2r+1)² box blur with clamped borders.
fn box_blur(img: &RgbImage, r: i64) -> RgbImage {
    let (w, h) = img.dimensions();
    let n = ((2 * r + 1) * (2 * r + 1)) as f32;
    RgbImage::from_fn(w, h, |x, y| {
        let mut acc = [0f32; 3];
        for dy in -r..=r {
            for dx in -r..=r {
                let p = img.get_pixel(
                    (x as i64 + dx).clamp(0, w as i64 - 1) as u32,
                    (y as i64 + dy).clamp(0, h as i64 - 1) as u32,
                );
                for k in 0..3 {
                    acc[k] += p.0[k] as f32;
                }
            }
        }
        Rgb(acc.map(|v| (v / n).round() as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_differ_and_keep_the_layout() {
        let sim = RgbImage::from_fn(40, 24, |x, y| {
            if (x as i32 - 20).abs() < 5 && (y as i32 - 12).abs() < 5 {
                Rgb([220, 40, 40])
            } else {
                Rgb(SIM_BOARD)
            }
        });
        let mean = |img: &RgbImage| {
            let mut m = [0f64; 3];
            for p in img.pixels() {
                for k in 0..3 {
                    m[k] += p.0[k] as f64 / (40.0 * 24.0);
                }
            }
            m
        };
        let all: Vec<Style> = Style::ALL.into_iter().chain(Style::HELD_OUT).collect();
        let means: Vec<[f64; 3]> = all.iter().map(|s| mean(&s.apply(&sim))).collect();
        for i in 0..means.len() {
            for j in i + 1..means.len() {
                let d: f64 = (0..3).map(|k| (means[i][k] - means[j][k]).abs()).sum();
                assert!(
                    d > 8.0,
                    "{} and {} look alike ({d})",
                    all[i].name(),
                    all[j].name()
                );
            }
            assert_eq!(Style::from_name(all[i].name()), Some(all[i]));
        }
        // The object stays where it was: its centre differs from the board in every style.
        for s in all {
            let img = s.apply(&sim);
            assert_ne!(img.get_pixel(20, 12), img.get_pixel(2, 2), "{}", s.name());
        }
    }
}
