//! Metrics of augmented videos that need no downloaded weights (`vadapt eval`).
//!
//! * **edge consistency**: Pearson correlation of the output's Sobel-x edges with the condition video's edges (the
//!   augmentation must keep the motion and layout it was given);
//! * **PSNR / SSIM** against a paired ground truth where one exists (the sim and real renderings of the same
//!   motion); SSIM is Wang et al. 2004 with an 11x11 Gaussian window, σ = 1.5, on each RGB channel, averaged;
//! * **flicker**: mean absolute frame-to-frame change, reported next to the reference's own (a seam or noise shows
//!   as output flicker well above the reference's);
//! * **colour statistics**: per-channel mean and std, and the histogram distance to the reference (style adherence);
//! * **Fréchet distance** between Gaussian fits of a fixed, hand-defined frame feature (4x4 grid of colour means,
//!   colour std, edge energy per cell): FID's formula on features that need no network weights.

use image::RgbImage;
use nalgebra::{DMatrix, DVector};
use serde::Serialize;

use crate::vision::edges::edge_in_unit_range;

/// Metrics of one output video against its condition and (optionally) reference videos.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct VideoMetrics {
    pub frames: usize,
    pub edge_correlation: f64,
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
    pub flicker: f64,
    pub reference_flicker: Option<f64>,
    /// Per-channel mean colour of the output, 0..255.
    pub mean_rgb: [f64; 3],
    /// L1 distance between 8-bin-per-channel colour histograms of output and reference (0 = same, 2 = disjoint).
    pub histogram_distance: Option<f64>,
}

/// Pearson correlation of two equally long slices (0 when either is constant).
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n == 0.0 {
        return 0.0;
    }
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Correlation of the Sobel-x edges of `output` with those of `condition` (frames of equal size), over the video.
pub fn edge_correlation(output: &[RgbImage], condition: &[RgbImage]) -> f64 {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (o, c) in output.iter().zip(condition) {
        a.extend(edge_in_unit_range(o).data);
        b.extend(edge_in_unit_range(c).data);
    }
    pearson(&a, &b)
}

/// PSNR in dB over all frames and channels (peak 255); infinite for identical videos.
pub fn psnr(a: &[RgbImage], b: &[RgbImage]) -> f64 {
    let (mut se, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.as_raw().iter().zip(y.as_raw()) {
            let d = *p as f64 - *q as f64;
            se += d * d;
            n += 1.0;
        }
    }
    if se == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / (se / n)).log10()
}

/// Separable Gaussian blur of a plane (11 taps, σ 1.5, clamped borders).
fn gauss(plane: &[f64], w: usize, h: usize) -> Vec<f64> {
    let k: Vec<f64> = (-5..=5)
        .map(|i: i32| (-(i * i) as f64 / (2.0 * 1.5 * 1.5)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    let k: Vec<f64> = k.iter().map(|v| v / s).collect();
    let mut tmp = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = (0..11)
                .map(|i| {
                    k[i] * plane[y * w + (x as i64 + i as i64 - 5).clamp(0, w as i64 - 1) as usize]
                })
                .sum();
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (0..11)
                .map(|i| {
                    k[i] * tmp[(y as i64 + i as i64 - 5).clamp(0, h as i64 - 1) as usize * w + x]
                })
                .sum();
        }
    }
    out
}

/// Mean SSIM of two frames (per channel, averaged).
pub fn ssim_frame(a: &RgbImage, b: &RgbImage) -> f64 {
    let (w, h) = (a.width() as usize, a.height() as usize);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let mut total = 0.0;
    for ch in 0..3 {
        let x: Vec<f64> = a
            .as_raw()
            .iter()
            .skip(ch)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let y: Vec<f64> = b
            .as_raw()
            .iter()
            .skip(ch)
            .step_by(3)
            .map(|&v| v as f64)
            .collect();
        let mx = gauss(&x, w, h);
        let my = gauss(&y, w, h);
        let xx = gauss(&x.iter().map(|v| v * v).collect::<Vec<_>>(), w, h);
        let yy = gauss(&y.iter().map(|v| v * v).collect::<Vec<_>>(), w, h);
        let xy = gauss(
            &x.iter().zip(&y).map(|(p, q)| p * q).collect::<Vec<_>>(),
            w,
            h,
        );
        let mut sum = 0.0;
        for i in 0..w * h {
            let (vx, vy, cxy) = (
                xx[i] - mx[i] * mx[i],
                yy[i] - my[i] * my[i],
                xy[i] - mx[i] * my[i],
            );
            sum += ((2.0 * mx[i] * my[i] + c1) * (2.0 * cxy + c2))
                / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2));
        }
        total += sum / (w * h) as f64;
    }
    total / 3.0
}

/// Mean SSIM over frames.
pub fn ssim(a: &[RgbImage], b: &[RgbImage]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| ssim_frame(x, y)).sum::<f64>() / n as f64
}

/// Mean absolute change between consecutive frames, 0..255.
pub fn flicker(frames: &[RgbImage]) -> f64 {
    if frames.len() < 2 {
        return 0.0;
    }
    let mut total = 0.0;
    for p in frames.windows(2) {
        let d: f64 = p[0]
            .as_raw()
            .iter()
            .zip(p[1].as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum();
        total += d / p[0].as_raw().len() as f64;
    }
    total / (frames.len() - 1) as f64
}

fn histogram(frames: &[RgbImage]) -> Vec<f64> {
    let mut h = vec![0f64; 24];
    let mut n = 0f64;
    for f in frames {
        for p in f.pixels() {
            for k in 0..3 {
                h[k * 8 + (p.0[k] as usize >> 5)] += 1.0;
            }
            n += 1.0;
        }
    }
    h.iter().map(|v| v / n.max(1.0) / 3.0).collect()
}

/// L1 distance of normalised 8-bin-per-channel colour histograms.
pub fn histogram_distance(a: &[RgbImage], b: &[RgbImage]) -> f64 {
    histogram(a)
        .iter()
        .zip(histogram(b))
        .map(|(x, y)| (x - y).abs())
        .sum()
}

fn mean_rgb(frames: &[RgbImage]) -> [f64; 3] {
    let mut m = [0f64; 3];
    let mut n = 0f64;
    for f in frames {
        for p in f.pixels() {
            for k in 0..3 {
                m[k] += p.0[k] as f64;
            }
            n += 1.0;
        }
    }
    m.map(|v| v / n.max(1.0))
}

/// Every metric of one video. `condition` and `reference` must have the output's frame size.
pub fn video_metrics(
    output: &[RgbImage],
    condition: &[RgbImage],
    reference: Option<&[RgbImage]>,
) -> VideoMetrics {
    VideoMetrics {
        frames: output.len(),
        edge_correlation: edge_correlation(output, condition),
        psnr: reference.map(|r| psnr(output, r)),
        ssim: reference.map(|r| ssim(output, r)),
        flicker: flicker(output),
        reference_flicker: reference.map(flicker),
        mean_rgb: mean_rgb(output),
        histogram_distance: reference.map(|r| histogram_distance(output, r)),
    }
}

/// How closely two renderings of the same frames agree (one camera of two runs: GPU and CPU, two builds), frame by
/// frame at the same size.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Agreement {
    pub frames: usize,
    /// PSNR over all frames and channels; `None` when every pixel is equal (infinite PSNR, which JSON cannot hold).
    pub psnr: Option<f64>,
    /// Mean SSIM over the frames.
    pub ssim: f64,
    /// Largest |a - b| of any pixel channel, 0..255.
    pub max_abs_diff: u8,
    /// Pixel channels compared, and how many of them differ at all.
    pub values: u64,
    pub differing_values: u64,
    /// Mean squared difference of the pixel channels (0..255 scale): what PSNR and a total over videos derive from.
    pub mse: f64,
}

/// PSNR in dB of a mean squared error on the 0..255 scale; `None` for 0 (identical).
pub fn psnr_of_mse(mse: f64) -> Option<f64> {
    (mse > 0.0).then(|| 10.0 * (255.0f64 * 255.0 / mse).log10())
}

/// [`Agreement`] of two videos with the same frame count and frame size (the caller checks both).
pub fn agreement(a: &[RgbImage], b: &[RgbImage]) -> Agreement {
    let (mut max_abs_diff, mut values, mut differing_values, mut se) = (0u8, 0u64, 0u64, 0f64);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.as_raw().iter().zip(y.as_raw()) {
            let d = p.abs_diff(*q);
            max_abs_diff = max_abs_diff.max(d);
            values += 1;
            differing_values += u64::from(d != 0);
            se += f64::from(d) * f64::from(d);
        }
    }
    let mse = se / values.max(1) as f64;
    Agreement {
        frames: a.len().min(b.len()),
        psnr: psnr_of_mse(mse),
        ssim: ssim(a, b),
        max_abs_diff,
        values,
        differing_values,
        mse,
    }
}

/// The fixed frame feature of the Fréchet distance: for each cell of a 4x4 grid, the mean of R, G, B and the mean
/// absolute Sobel-x edge (64 values), plus the frame's per-channel std (3): 67 numbers in roughly unit scale.
pub fn frame_feature(frame: &RgbImage) -> Vec<f64> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let edges = edge_in_unit_range(frame).data;
    let mut cells = vec![0f64; 64];
    let mut counts = vec![0f64; 16];
    let mut sum = [0f64; 3];
    let mut sq = [0f64; 3];
    for y in 0..h {
        for x in 0..w {
            let c = (y * 4 / h.max(1)) * 4 + x * 4 / w.max(1);
            let p = frame.get_pixel(x as u32, y as u32).0;
            for k in 0..3 {
                let v = p[k] as f64 / 255.0;
                cells[c * 4 + k] += v;
                sum[k] += v;
                sq[k] += v * v;
            }
            cells[c * 4 + 3] += edges[y * w + x].abs() as f64 * 4.0;
            counts[c] += 1.0;
        }
    }
    for c in 0..16 {
        for k in 0..4 {
            cells[c * 4 + k] /= counts[c].max(1.0);
        }
    }
    let n = (w * h).max(1) as f64;
    for k in 0..3 {
        let m = sum[k] / n;
        cells.push((sq[k] / n - m * m).max(0.0).sqrt());
    }
    cells
}

/// Fréchet distance between Gaussian fits of two feature sets (rows):
/// `|μ1 − μ2|² + Tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½)` (Heusel et al. 2017), via symmetric eigendecompositions.
pub fn frechet_distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let fit = |rows: &[Vec<f64>]| {
        let d = rows[0].len();
        let n = rows.len() as f64;
        let mean = DVector::from_fn(d, |i, _| rows.iter().map(|r| r[i]).sum::<f64>() / n);
        let mut cov = DMatrix::zeros(d, d);
        for r in rows {
            let x = DVector::from_column_slice(r) - &mean;
            cov += &x * x.transpose();
        }
        (mean, cov / (n - 1.0).max(1.0))
    };
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (m1, s1) = fit(a);
    let (m2, s2) = fit(b);
    let sqrt_psd = |m: &DMatrix<f64>| {
        let e = m.clone().symmetric_eigen();
        let vals = e.eigenvalues.map(|v| v.max(0.0).sqrt());
        &e.eigenvectors * DMatrix::from_diagonal(&vals) * e.eigenvectors.transpose()
    };
    let r1 = sqrt_psd(&s1);
    let inner = &r1 * &s2 * &r1;
    let inner = (&inner + inner.transpose()) * 0.5;
    let tr_cross: f64 = inner
        .symmetric_eigen()
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    (m1 - m2).norm_squared() + s1.trace() + s2.trace() - 2.0 * tr_cross
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn video(shift: u32, colour: [u8; 3]) -> Vec<RgbImage> {
        (0..4)
            .map(|t| {
                RgbImage::from_fn(40, 24, |x, y| {
                    if (x as i32 - 10 - (t * 3 + shift) as i32).abs() < 4 && (8..16).contains(&y) {
                        Rgb(colour)
                    } else {
                        Rgb([200, 200, 190])
                    }
                })
            })
            .collect()
    }

    #[test]
    fn metrics_rank_what_they_should() {
        let truth = video(0, [220, 40, 40]);
        let same = video(0, [220, 40, 40]);
        let moved = video(9, [220, 40, 40]);
        let recoloured = video(0, [40, 40, 220]);
        assert_eq!(psnr(&truth, &same), f64::INFINITY);
        assert!((ssim(&truth, &same) - 1.0).abs() < 1e-9);
        assert!(
            psnr(&truth, &recoloured) > psnr(&truth, &moved),
            "colour change keeps the structure"
        );
        assert!(ssim(&truth, &moved) < ssim(&truth, &recoloured));
        assert!(
            edge_correlation(&recoloured, &truth) > 0.9,
            "same geometry, same edges"
        );
        assert!(edge_correlation(&moved, &truth) < 0.5);
        assert!(flicker(&truth) > 0.0 && flicker(&[truth[0].clone(), truth[0].clone()]) == 0.0);
        assert!(
            histogram_distance(&truth, &same) == 0.0
                && histogram_distance(&truth, &recoloured) > 0.0
        );
    }

    #[test]
    fn agreement_of_equal_videos_is_exact_and_one_changed_value_shows() {
        let a = video(0, [200, 40, 40]);
        let same = agreement(&a, &a.clone());
        assert_eq!(
            (same.psnr, same.max_abs_diff, same.differing_values),
            (None, 0, 0)
        );
        assert!((same.ssim - 1.0).abs() < 1e-12);
        let mut b = a.clone();
        b[2].get_pixel_mut(5, 7).0[1] = b[2].get_pixel(5, 7).0[1].wrapping_add(9);
        let one = agreement(&a, &b);
        assert_eq!(
            (one.max_abs_diff, one.differing_values, one.frames),
            (9, 1, 4)
        );
        // One value off by 9 among 4 * 40 * 24 * 3: MSE 81 / 11520.
        let expect = 10.0 * (255.0f64 * 255.0 / (81.0 / 11520.0)).log10();
        assert!((one.psnr.unwrap() - expect).abs() < 1e-9, "{:?}", one.psnr);
        assert!(one.ssim < 1.0);
    }

    #[test]
    fn frechet_distance_is_zero_for_equal_sets_and_grows_with_a_shift() {
        let a: Vec<Vec<f64>> = (0..50)
            .map(|i| {
                vec![
                    (i as f64 * 0.37).sin(),
                    (i as f64 * 0.91).cos(),
                    i as f64 / 50.0,
                ]
            })
            .collect();
        let b: Vec<Vec<f64>> = a
            .iter()
            .map(|r| r.iter().map(|v| v + 0.5).collect())
            .collect();
        assert!(frechet_distance(&a, &a).abs() < 1e-9);
        let d = frechet_distance(&a, &b);
        assert!(
            (d - 0.75).abs() < 1e-6,
            "a pure shift of 0.5 in 3 dims: {d}"
        );
        assert_eq!(frame_feature(&video(0, [1, 2, 3])[0]).len(), 67);
    }
}
