//! Rendering one frame of a push episode: `sim` (flat colours, hard edges, like the LanguageTable simulator) and
//! `real` (board texture, a lighting gradient, soft shadows, slight blur, colour cast and sensor noise).

use image::{GrayImage, Luma, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_polygon_mut};
use imageproc::point::Point;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::world::{rng_for, Block, Shape, BLOCK_RADIUS, BOARD, COLOURS, EFFECTOR_RADIUS};

/// The fixed camera and board of one episode.
pub(super) struct Scene {
    size: (u32, u32),
    seed: u64,
    episode: u64,
    /// Per-pixel board colour of the real rendering (texture x lighting), f32 RGB.
    real_board: Vec<[f32; 3]>,
    cast: [f32; 3],
}

impl Scene {
    pub(super) fn new(seed: u64, episode: u64, size: (u32, u32)) -> Self {
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

    pub(super) fn render(
        &self,
        blocks: &[Block],
        effector: [f32; 2],
        t: usize,
        real: bool,
    ) -> RgbImage {
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
